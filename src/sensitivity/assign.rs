//! Choosing a unit for every non-linear layer: exact cost-aware optimisation and Pareto fronts.
//!
//! A [`Problem`] lists, per layer, the candidate units with an accuracy criterion value (summed
//! over layers; minimised or maximised, see [`Sense`]), the unit's area and the layer's latency on
//! that unit. Two architecture models ([`Arch`]) turn an assignment into costs:
//!
//! * **shared**: one instance of every distinct unit type the assignment uses, time-multiplexed
//!   over the layers: area = Σ area of the distinct types, latency = Σ over layers of the layer's
//!   latency on its unit;
//! * **dataflow**: one unit per layer: area = Σ over layers of its unit's area, latency = Σ over
//!   layers (the image's end-to-end latency when layers run one after another);
//!   [`Solution::max_layer_latency`] is the slowest layer, which bounds a pipelined throughput.
//!
//! # How the search stays exact
//! Everything is derived from one exact dynamic programme over *groups*, each group a set of
//! layers with a list of options `(area, latency, criterion)`: the partial sums after each group
//! are reduced to the points not dominated in the *active* dimensions (those under a budget or
//! on the front's axis, plus the criterion), and points that exceed a budget even with the
//! cheapest options of the remaining groups are dropped. All costs are
//! non-negative and sums are monotone, so a dominated or over-budget partial point can never
//! complete to something better than the point that dominates it: no optimum is lost.
//! Ties between equal values are broken by the inactive dimensions (area, then latency), which
//! addition also preserves, so each point carries the cheapest assignment with its value.
//!
//! * dataflow: each layer is a group whose options are its candidates.
//! * shared: area is not additive over layers, so the layers are split into the connected
//!   components of the layer–unit-type graph (in practice one per op, since a layer only takes
//!   units of its own op). Components share no unit type, so the shared area is the sum of their
//!   areas and the components are independent groups. Within a component every subset `S` of its
//!   types is enumerated (skipping those that leave a layer with no candidate or exceed the area
//!   budget); for each, a latency dynamic programme over the component's layers restricted to
//!   `S` gives its options at area Σ_{t∈S} area(t). An assignment that uses only `U ⊂ S` is also
//!   found at its true area under `S = U`, which dominates the overcounted copy, so the filtered
//!   options are exact. Cost: Σ over components of 2^types × (latency front over its layers),
//!   e.g. 3 × 7 subsets for 3 methods per op, 3 × 1023 for 10 variants per op, instead of 2^30.
//!   A component with more than [`MAX_GROUP_TYPES`] types is refused with an error.
//!
//! Areas are summed in f64 (integer or quarter-integer areas such as NAND2-equivalents sum
//! exactly); latencies are integer cycles.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use thiserror::Error;

/// Most unit types one component of the shared model may hold (2^16 subsets are enumerated).
pub const MAX_GROUP_TYPES: usize = 16;

/// How units are instantiated in hardware, which decides how an assignment's costs add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// One instance per distinct unit type, time-multiplexed over the layers.
    Shared,
    /// One unit per layer.
    Dataflow,
}

impl Arch {
    /// One line for reports stating how costs are computed.
    pub fn describe(self) -> &'static str {
        match self {
            Arch::Shared => "shared: one instance of each unit type used, time-multiplexed; area = Σ area of the distinct types, latency = Σ layer latencies",
            Arch::Dataflow => "dataflow: one unit per layer; area = Σ over layers, latency = Σ over layers (max layer latency bounds a pipelined throughput)",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Shared => "shared",
            Arch::Dataflow => "dataflow",
        })
    }
}

/// Whether the summed criterion is to be made small or large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sense {
    /// Smaller is better (e.g. SQNR diff).
    Minimise,
    /// Larger is better (e.g. output ASQNR).
    Maximise,
}

/// The axis of a Pareto front (the criterion is the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Criterion against area.
    Area,
    /// Criterion against latency.
    Latency,
}

/// One candidate unit for one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Unit type name, e.g. `softmax_ivit` (one area per name across the problem).
    pub unit: String,
    /// This layer's criterion value on this unit (e.g. its SQNR diff in dB).
    pub criterion: f64,
    /// Area of one instance of the unit (NAND2-equivalents or any non-negative scalar).
    pub area: f64,
    /// Cycles this layer takes on this unit for one image.
    pub latency: u64,
}

/// One layer and its candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// Layer name, e.g. `blocks.3.attn.softmax`.
    pub name: String,
    /// Candidate units.
    pub options: Vec<Choice>,
}

/// An assignment problem: layers in execution order with their candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// What the criterion is, for reports (e.g. `SQNR diff (dB, 20log10)`).
    pub criterion: String,
    /// Whether the summed criterion is minimised or maximised.
    pub sense: Sense,
    /// Layers in execution order.
    pub layers: Vec<Layer>,
}

/// Upper bounds on the assignment's costs; `None` leaves a cost free.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Largest total area allowed.
    pub area: Option<f64>,
    /// Largest total latency allowed, in cycles.
    pub latency: Option<u64>,
}

impl Budget {
    /// No limits.
    pub fn none() -> Self {
        Budget::default()
    }

    fn describe(&self) -> String {
        match (self.area, self.latency) {
            (None, None) => "no budget".into(),
            (Some(a), None) => format!("area ≤ {a}"),
            (None, Some(l)) => format!("latency ≤ {l} cycles"),
            (Some(a), Some(l)) => format!("area ≤ {a} and latency ≤ {l} cycles"),
        }
    }
}

/// Layer → unit in execution order: the `layers` map of `assignment.json`
/// ([`crate::model::Assignment`], the one file type the inference engine, `mnq rtl` and the
/// optimiser share).
pub use crate::model::manifest::OrderedLayers as Assignment;

/// One assignment with its costs under an architecture model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// Architecture model the costs are computed under.
    pub arch: Arch,
    /// Criterion summed over layers (in the problem's own sense).
    pub criterion: f64,
    /// Total area.
    pub area: f64,
    /// Total latency in cycles (Σ over layers).
    pub latency: u64,
    /// Latency of the slowest layer.
    pub max_layer_latency: u64,
    /// Distinct unit types used, in order of first use.
    pub units: Vec<String>,
    /// Index of the chosen option per layer.
    pub choices: Vec<usize>,
    /// Layer → unit.
    pub assignment: Assignment,
}

/// Why a problem, a budget or an assignment was refused.
#[derive(Debug, Error)]
pub enum AssignError {
    /// A problem with no layers.
    #[error("the assignment problem has no layers")]
    NoLayers,
    /// A layer listed twice.
    #[error("layer '{layer}' appears twice")]
    DuplicateLayer {
        /// Layer name.
        layer: String,
    },
    /// A layer without candidates.
    #[error("layer '{layer}' has no candidate unit")]
    NoOptions {
        /// Layer name.
        layer: String,
    },
    /// A unit listed twice for one layer.
    #[error("layer '{layer}' lists unit '{unit}' twice")]
    DuplicateUnit {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
    },
    /// A NaN or infinite criterion or area, or a negative area.
    #[error("layer '{layer}', unit '{unit}': {what} is {value}; it must be finite{}", if *what == "area" { " and ≥ 0" } else { "" })]
    BadValue {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
        /// "criterion" or "area".
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// One unit type given two different areas.
    #[error("unit '{unit}' has area {a} at layer '{layer_a}' but {b} at layer '{layer_b}'; a unit type has one area")]
    AreaMismatch {
        /// Unit name.
        unit: String,
        /// First layer.
        layer_a: String,
        /// Its area.
        a: f64,
        /// Second layer.
        layer_b: String,
        /// Its area.
        b: f64,
    },
    /// Latencies whose sum does not fit 64 bits.
    #[error("the layers' latencies sum beyond 2^64 cycles")]
    LatencyOverflow,
    /// A NaN, infinite or negative area budget.
    #[error("area budget {0} must be finite and ≥ 0")]
    BadBudget(f64),
    /// Too many unit types sharing layers for the shared model's subset enumeration.
    #[error("{} unit types share layers ({}); the shared model enumerates 2^types subsets per component and allows at most {max}: offer fewer variants per op", units.len(), units.join(", "))]
    TooManyTypes {
        /// The unit types of the component.
        units: Vec<String>,
        /// The limit.
        max: usize,
    },
    /// No assignment meets the budget.
    #[error("no assignment meets {budget} under the {arch} model: the smallest achievable area is {min_area} (latency {min_area_latency} cycles), the lowest achievable latency is {min_latency} cycles (area {min_latency_area}); raise the budget")]
    Infeasible {
        /// Architecture model.
        arch: Arch,
        /// The budget asked for.
        budget: String,
        /// Smallest achievable area.
        min_area: f64,
        /// Latency of that smallest-area assignment.
        min_area_latency: u64,
        /// Lowest achievable latency.
        min_latency: u64,
        /// Area of that lowest-latency assignment.
        min_latency_area: f64,
    },
    /// An assignment names a layer the problem does not have.
    #[error("the assignment names layer '{layer}', which is not a non-linear layer of the model")]
    UnknownLayer {
        /// Layer name.
        layer: String,
    },
    /// An assignment misses a layer.
    #[error("the assignment gives no unit for layer '{layer}'; every non-linear layer must be assigned")]
    MissingLayer {
        /// Layer name.
        layer: String,
    },
    /// An assignment gives a layer a unit that is not one of its candidates.
    #[error("layer '{layer}' is assigned '{unit}', which is not {expected}")]
    UnknownUnit {
        /// Layer name.
        layer: String,
        /// Unit name.
        unit: String,
        /// What was expected instead.
        expected: String,
    },
    /// A choice index out of range.
    #[error("layer '{layer}' has {n} candidates; choice {index} does not exist")]
    ChoiceOutOfRange {
        /// Layer name.
        layer: String,
        /// Index given.
        index: usize,
        /// Number of candidates.
        n: usize,
    },
}

/// A candidate after validation: type index and the criterion turned into "smaller is better".
#[derive(Debug, Clone, Copy)]
struct Opt {
    ty: usize,
    crit: f64,
    area: f64,
    lat: u64,
}

/// A validated problem.
#[derive(Debug)]
struct Prep {
    /// Unit types in order of first appearance, with their areas.
    types: Vec<(String, f64)>,
    layers: Vec<Vec<Opt>>,
}

fn prepare(p: &Problem) -> Result<Prep, AssignError> {
    if p.layers.is_empty() {
        return Err(AssignError::NoLayers);
    }
    let sign = match p.sense {
        Sense::Minimise => 1.0,
        Sense::Maximise => -1.0,
    };
    let mut names = HashSet::new();
    let mut types: Vec<(String, f64)> = Vec::new();
    let mut type_of: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut layers = Vec::with_capacity(p.layers.len());
    let mut max_total: u64 = 0;
    for l in &p.layers {
        if !names.insert(l.name.as_str()) {
            return Err(AssignError::DuplicateLayer { layer: l.name.clone() });
        }
        if l.options.is_empty() {
            return Err(AssignError::NoOptions { layer: l.name.clone() });
        }
        let mut opts = Vec::with_capacity(l.options.len());
        for (i, c) in l.options.iter().enumerate() {
            if l.options[..i].iter().any(|o| o.unit == c.unit) {
                return Err(AssignError::DuplicateUnit { layer: l.name.clone(), unit: c.unit.clone() });
            }
            let bad = |what, value| AssignError::BadValue { layer: l.name.clone(), unit: c.unit.clone(), what, value };
            if !c.criterion.is_finite() {
                return Err(bad("criterion", c.criterion));
            }
            if !c.area.is_finite() || c.area < 0.0 {
                return Err(bad("area", c.area));
            }
            // + 0.0 folds −0.0 into 0.0 so that sorting and comparing agree.
            let area = c.area + 0.0;
            let ty = match type_of.get(c.unit.as_str()) {
                Some(&(t, first)) => {
                    if types[t].1 != area {
                        return Err(AssignError::AreaMismatch {
                            unit: c.unit.clone(),
                            layer_a: first.to_string(),
                            a: types[t].1,
                            layer_b: l.name.clone(),
                            b: area,
                        });
                    }
                    t
                }
                None => {
                    types.push((c.unit.clone(), area));
                    type_of.insert(c.unit.as_str(), (types.len() - 1, l.name.as_str()));
                    types.len() - 1
                }
            };
            opts.push(Opt { ty, crit: sign * c.criterion + 0.0, area, lat: c.latency });
        }
        let worst = opts.iter().map(|o| o.lat).max().unwrap_or(0);
        max_total = max_total.checked_add(worst).ok_or(AssignError::LatencyOverflow)?;
        layers.push(opts);
    }
    Ok(Prep { types, layers })
}

fn check_budget(b: &Budget) -> Result<(), AssignError> {
    match b.area {
        Some(a) if !a.is_finite() || a < 0.0 => Err(AssignError::BadBudget(a)),
        _ => Ok(()),
    }
}

/// Which cost dimensions take part in dominance (the criterion always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    area: bool,
    lat: bool,
}

/// Anything with an (area, latency, criterion) key.
trait Keyed {
    fn key(&self) -> (f64, u64, f64);
}

/// Lexicographic order: active dimensions, criterion, then the inactive ones as tie-breaks.
fn order(dims: Dims, a: (f64, u64, f64), b: (f64, u64, f64)) -> Ordering {
    let area = a.0.total_cmp(&b.0);
    let lat = a.1.cmp(&b.1);
    let crit = a.2.total_cmp(&b.2);
    match (dims.area, dims.lat) {
        (true, true) => area.then(lat).then(crit),
        (true, false) => area.then(crit).then(lat),
        (false, true) => lat.then(crit).then(area),
        (false, false) => crit.then(area).then(lat),
    }
}

/// Keep the points not weakly dominated in the active dimensions and the criterion; among equal
/// values the one smallest in the inactive dimensions. The result is sorted by [`order`].
fn filter<T: Keyed>(mut v: Vec<T>, dims: Dims) -> Vec<T> {
    v.sort_by(|a, b| order(dims, a.key(), b.key()));
    match (dims.area, dims.lat) {
        (false, false) => {
            v.truncate(1);
            v
        }
        (true, true) => {
            // Sorted by area, so every kept point has area ≤ the current one; the staircase maps
            // latency → the smallest criterion kept at that latency or less (decreasing in latency).
            let mut stair: BTreeMap<u64, f64> = BTreeMap::new();
            let mut out = Vec::new();
            for p in v {
                let (_, lat, crit) = p.key();
                if stair.range(..=lat).next_back().is_some_and(|(_, &c)| c <= crit) {
                    continue;
                }
                let gone: Vec<u64> = stair.range(lat..).take_while(|(_, &c)| c >= crit).map(|(&l, _)| l).collect();
                for l in gone {
                    stair.remove(&l);
                }
                stair.insert(lat, crit);
                out.push(p);
            }
            out
        }
        _ => {
            let mut out: Vec<T> = Vec::new();
            for p in v {
                if out.last().is_none_or(|q| p.key().2 < q.key().2) {
                    out.push(p);
                }
            }
            out
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Key {
    area: f64,
    lat: u64,
    crit: f64,
}

impl Keyed for Key {
    fn key(&self) -> (f64, u64, f64) {
        (self.area, self.lat, self.crit)
    }
}

#[derive(Debug, Clone, Copy)]
struct Node {
    k: Key,
    prev: u32,
    opt: u32,
}

impl Keyed for Node {
    fn key(&self) -> (f64, u64, f64) {
        self.k.key()
    }
}

/// Exact front of the sums of one option per group, within `budget` (whose bounded dimensions
/// must be active). Returns each point's total and the option index chosen in every group.
fn dp(groups: &[Vec<Key>], dims: Dims, budget: &Budget) -> Vec<(Key, Vec<u32>)> {
    debug_assert!(budget.area.is_none() || dims.area);
    debug_assert!(budget.latency.is_none() || dims.lat);
    // The least area and latency the groups after each stage still add: a partial point that
    // cannot fit even with them is dropped early. The area look-ahead allows a relative 1e-12 of
    // slack so that f64 summation order can never drop a point that fits; the exact test is the
    // plain one on the partial sum, which at the last stage is the total.
    let mut rest = vec![(0.0f64, 0u64); groups.len() + 1];
    for (i, g) in groups.iter().enumerate().rev() {
        let a = g.iter().map(|o| o.area).fold(f64::INFINITY, f64::min);
        let l = g.iter().map(|o| o.lat).min().unwrap_or(0);
        rest[i] = (rest[i + 1].0 + a, rest[i + 1].1 + l);
    }
    let area_cap = budget.area.map(|b| b * (1.0 + 1e-12));
    let mut stages: Vec<Vec<Node>> = vec![vec![Node { k: Key { area: 0.0, lat: 0, crit: 0.0 }, prev: 0, opt: 0 }]];
    for (gi, g) in groups.iter().enumerate() {
        let (rest_area, rest_lat) = rest[gi + 1];
        let prev = stages.last().expect("stage 0 exists");
        let mut cand = Vec::with_capacity(prev.len() * g.len());
        for (pi, p) in prev.iter().enumerate() {
            for (oi, o) in g.iter().enumerate() {
                let k = Key { area: p.k.area + o.area, lat: p.k.lat + o.lat, crit: p.k.crit + o.crit };
                if budget.area.is_some_and(|b| k.area > b) || budget.latency.is_some_and(|b| k.lat > b) {
                    continue;
                }
                if area_cap.is_some_and(|b| k.area + rest_area > b) || budget.latency.is_some_and(|b| k.lat + rest_lat > b) {
                    continue;
                }
                cand.push(Node { k, prev: pi as u32, opt: oi as u32 });
            }
        }
        let next = filter(cand, dims);
        if next.is_empty() {
            return Vec::new();
        }
        stages.push(next);
    }
    let last = stages.len() - 1;
    (0..stages[last].len())
        .map(|i| {
            let mut picks = vec![0u32; groups.len()];
            let mut idx = i;
            for s in (1..=last).rev() {
                let n = stages[s][idx];
                picks[s - 1] = n.opt;
                idx = n.prev as usize;
            }
            (stages[last][i].k, picks)
        })
        .collect()
}

/// A group of layers and its options: each a total and the candidate chosen per layer.
struct Group {
    layers: Vec<usize>,
    options: Vec<(Key, Vec<usize>)>,
}

impl Keyed for (Key, Vec<usize>) {
    fn key(&self) -> (f64, u64, f64) {
        self.0.key()
    }
}

/// Connected components of the layer–unit-type graph: (types, layers), both ascending.
fn components(prep: &Prep) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut parent: Vec<usize> = (0..prep.types.len()).collect();
    fn root(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for opts in &prep.layers {
        for o in &opts[1..] {
            let (a, b) = (root(&mut parent, opts[0].ty), root(&mut parent, o.ty));
            parent[b] = a;
        }
    }
    let mut comps: Vec<(usize, Vec<usize>, Vec<usize>)> = Vec::new();
    for t in 0..prep.types.len() {
        let r = root(&mut parent, t);
        match comps.iter_mut().find(|c| c.0 == r) {
            Some(c) => c.1.push(t),
            None => comps.push((r, vec![t], Vec::new())),
        }
    }
    for (l, opts) in prep.layers.iter().enumerate() {
        let r = root(&mut parent, opts[0].ty);
        comps.iter_mut().find(|c| c.0 == r).expect("every type has a component").2.push(l);
    }
    comps.into_iter().map(|(_, t, l)| (t, l)).collect()
}

/// The groups of the architecture model (see the module documentation).
fn groups(prep: &Prep, arch: Arch, dims: Dims, budget: &Budget) -> Result<Vec<Group>, AssignError> {
    match arch {
        Arch::Dataflow => Ok(prep
            .layers
            .iter()
            .enumerate()
            .map(|(l, opts)| Group {
                layers: vec![l],
                options: opts.iter().enumerate().map(|(i, o)| (Key { area: o.area, lat: o.lat, crit: o.crit }, vec![i])).collect(),
            })
            .collect()),
        Arch::Shared => {
            let inner_dims = Dims { area: false, lat: dims.lat };
            let inner_budget = Budget { area: None, latency: budget.latency };
            let mut out = Vec::new();
            for (types, layers) in components(prep) {
                if types.len() > MAX_GROUP_TYPES {
                    return Err(AssignError::TooManyTypes {
                        units: types.iter().map(|&t| prep.types[t].0.clone()).collect(),
                        max: MAX_GROUP_TYPES,
                    });
                }
                let bit = |ty: usize| 1u32 << types.iter().position(|&t| t == ty).expect("type in its component");
                let layer_masks: Vec<u32> = layers.iter().map(|&l| prep.layers[l].iter().fold(0, |m, o| m | bit(o.ty))).collect();
                let mut options: Vec<(Key, Vec<usize>)> = Vec::new();
                let mut kept = 0;
                for mask in 1u32..(1 << types.len()) {
                    if layer_masks.iter().any(|&m| m & mask == 0) {
                        continue;
                    }
                    let area: f64 = types.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, &t)| prep.types[t].1).sum();
                    if budget.area.is_some_and(|b| area > b) {
                        continue;
                    }
                    // Candidates of each layer within the subset, with their original indices.
                    let allowed: Vec<Vec<usize>> = layers
                        .iter()
                        .map(|&l| (0..prep.layers[l].len()).filter(|&i| bit(prep.layers[l][i].ty) & mask != 0).collect())
                        .collect();
                    let inner: Vec<Vec<Key>> = layers
                        .iter()
                        .zip(&allowed)
                        .map(|(&l, idx)| {
                            idx.iter()
                                .map(|&i| {
                                    let o = prep.layers[l][i];
                                    Key { area: 0.0, lat: o.lat, crit: o.crit }
                                })
                                .collect()
                        })
                        .collect();
                    for (k, picks) in dp(&inner, inner_dims, &inner_budget) {
                        let choice = picks.iter().zip(&allowed).map(|(&p, idx)| idx[p as usize]).collect();
                        options.push((Key { area, ..k }, choice));
                    }
                    // Keep the running list small; filtering is idempotent so this loses nothing.
                    if options.len() > 2 * kept + 4096 {
                        options = filter(options, dims);
                        kept = options.len();
                    }
                }
                out.push(Group { layers, options: filter(options, dims) });
            }
            Ok(out)
        }
    }
}

/// Exact front over all layers: each point's DP total and its choice per layer.
fn front(prep: &Prep, arch: Arch, dims: Dims, budget: &Budget) -> Result<Vec<(Key, Vec<usize>)>, AssignError> {
    let groups = groups(prep, arch, dims, budget)?;
    if groups.iter().any(|g| g.options.is_empty()) {
        return Ok(Vec::new());
    }
    let keys: Vec<Vec<Key>> = groups.iter().map(|g| g.options.iter().map(|o| o.0).collect()).collect();
    Ok(dp(&keys, dims, budget)
        .into_iter()
        .map(|(k, picks)| {
            let mut choice = vec![0usize; prep.layers.len()];
            for (g, &p) in groups.iter().zip(&picks) {
                for (&l, &c) in g.layers.iter().zip(&g.options[p as usize].1) {
                    choice[l] = c;
                }
            }
            (k, choice)
        })
        .collect())
}

/// Costs of `choices` computed directly (criterion summed in layer order; shared area summed over
/// the distinct types in order of first appearance in the problem).
fn eval_prep(prep: &Prep, p: &Problem, arch: Arch, choices: &[usize]) -> Solution {
    let opts: Vec<&Choice> = p.layers.iter().zip(choices).map(|(l, &c)| &l.options[c]).collect();
    let criterion = opts.iter().fold(0.0, |s, o| s + o.criterion);
    let latency = opts.iter().map(|o| o.latency).sum();
    let max_layer_latency = opts.iter().map(|o| o.latency).max().unwrap_or(0);
    let mut units: Vec<String> = Vec::new();
    for o in &opts {
        if !units.contains(&o.unit) {
            units.push(o.unit.clone());
        }
    }
    let area = match arch {
        Arch::Dataflow => opts.iter().fold(0.0, |s, o| s + o.area),
        Arch::Shared => prep.types.iter().filter(|(n, _)| units.contains(n)).fold(0.0, |s, (_, a)| s + a),
    };
    let assignment = Assignment(p.layers.iter().zip(&opts).map(|(l, o)| (l.name.clone(), o.unit.clone())).collect());
    Solution { arch, criterion, area, latency, max_layer_latency, units, choices: choices.to_vec(), assignment }
}

impl Problem {
    /// Costs and criterion of one assignment given as a candidate index per layer.
    pub fn evaluate(&self, arch: Arch, choices: &[usize]) -> Result<Solution, AssignError> {
        let prep = prepare(self)?;
        if choices.len() != self.layers.len() {
            let layer = self.layers[choices.len().min(self.layers.len() - 1)].name.clone();
            return Err(AssignError::MissingLayer { layer });
        }
        for (l, &c) in self.layers.iter().zip(choices) {
            if c >= l.options.len() {
                return Err(AssignError::ChoiceOutOfRange { layer: l.name.clone(), index: c, n: l.options.len() });
            }
        }
        Ok(eval_prep(&prep, self, arch, choices))
    }

    /// Candidate indices of an assignment by name: every layer present, no other, each unit one
    /// of its layer's candidates.
    pub fn choices_of(&self, a: &Assignment) -> Result<Vec<usize>, AssignError> {
        for (l, _) in &a.0 {
            if !self.layers.iter().any(|x| &x.name == l) {
                return Err(AssignError::UnknownLayer { layer: l.clone() });
            }
        }
        self.layers
            .iter()
            .map(|l| {
                let u = a.get(&l.name).ok_or_else(|| AssignError::MissingLayer { layer: l.name.clone() })?;
                l.options.iter().position(|o| o.unit == u).ok_or_else(|| AssignError::UnknownUnit {
                    layer: l.name.clone(),
                    unit: u.to_string(),
                    expected: format!(
                        "one of its candidates ({})",
                        l.options.iter().map(|o| o.unit.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                })
            })
            .collect()
    }

    /// Costs and criterion of an assignment given by name.
    pub fn evaluate_assignment(&self, arch: Arch, a: &Assignment) -> Result<Solution, AssignError> {
        let c = self.choices_of(a)?;
        self.evaluate(arch, &c)
    }
}

fn infeasible(prep: &Prep, arch: Arch, budget: &Budget) -> Result<AssignError, AssignError> {
    let free = Budget::none();
    let by_area = front(prep, arch, Dims { area: true, lat: false }, &free)?;
    let by_lat = front(prep, arch, Dims { area: false, lat: true }, &free)?;
    // Both fronts are sorted by their active dimension, so the first point is the cheapest.
    let (a, l) = (by_area[0].0, by_lat[0].0);
    Ok(AssignError::Infeasible {
        arch,
        budget: budget.describe(),
        min_area: a.area,
        min_area_latency: a.lat,
        min_latency: l.lat,
        min_latency_area: l.area,
    })
}

/// The assignment with the best summed criterion within `budget`. Exact (see the module
/// documentation). Equal criteria go to the smaller area, then the smaller latency; under a
/// latency budget alone, to the smaller latency, then the smaller area (tracking area as well
/// there would need a three-dimensional front, 100× slower on large instances, for the sake of
/// exact ties).
pub fn optimise(problem: &Problem, arch: Arch, budget: &Budget) -> Result<Solution, AssignError> {
    let prep = prepare(problem)?;
    check_budget(budget)?;
    let dims = Dims { area: budget.area.is_some(), lat: budget.latency.is_some() };
    let pts = front(&prep, arch, dims, budget)?;
    let best = pts
        .iter()
        .min_by(|a, b| order(Dims { area: false, lat: false }, a.0.key(), b.0.key()))
        .ok_or_else(|| infeasible(&prep, arch, budget).unwrap_or_else(|e| e))?;
    Ok(eval_prep(&prep, problem, arch, &best.1))
}

/// The Pareto front of the summed criterion against `axis` among the assignments within `budget`,
/// cheapest first: every point is non-dominated and every non-dominated (cost, criterion) value is
/// present once, with the assignment of that value that is cheapest on the other cost.
pub fn pareto(problem: &Problem, arch: Arch, axis: Axis, budget: &Budget) -> Result<Vec<Solution>, AssignError> {
    let prep = prepare(problem)?;
    check_budget(budget)?;
    let dims = Dims { area: axis == Axis::Area || budget.area.is_some(), lat: axis == Axis::Latency || budget.latency.is_some() };
    let pts = front(&prep, arch, dims, budget)?;
    if pts.is_empty() {
        return Err(infeasible(&prep, arch, budget)?);
    }
    let proj = Dims { area: axis == Axis::Area, lat: axis == Axis::Latency };
    Ok(filter(pts, proj).iter().map(|(_, c)| eval_prep(&prep, problem, arch, c)).collect())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV of solutions (e.g. a Pareto front): one row each, costs then the unit of every layer.
pub fn solutions_csv(problem: &Problem, sols: &[Solution]) -> String {
    let mut s = String::from("point,arch,criterion,area,latency_cycles,max_layer_latency_cycles,unit_types");
    for l in &problem.layers {
        s.push(',');
        s.push_str(&csv_field(&l.name));
    }
    s.push('\n');
    for (i, sol) in sols.iter().enumerate() {
        let _ = write!(
            s,
            "{i},{},{},{},{},{},{}",
            sol.arch,
            sol.criterion,
            sol.area,
            sol.latency,
            sol.max_layer_latency,
            csv_field(&sol.units.join(" "))
        );
        for (_, u) in &sol.assignment.0 {
            s.push(',');
            s.push_str(&csv_field(u));
        }
        s.push('\n');
    }
    s
}

/// Markdown table of solutions: costs and how many layers each unit serves.
pub fn solutions_markdown(problem: &Problem, sols: &[Solution]) -> String {
    let dir = match problem.sense {
        Sense::Minimise => "lower is better",
        Sense::Maximise => "higher is better",
    };
    let mut s = format!(
        "Criterion: Σ {} over layers ({dir}). Architecture: {}.\n\n| point | criterion | area | latency (cycles) | max layer latency (cycles) | layers per unit |\n|---:|---:|---:|---:|---:|---|\n",
        problem.criterion,
        sols.first().map_or("—", |s| s.arch.describe())
    );
    for (i, sol) in sols.iter().enumerate() {
        let counts: Vec<String> = sol.assignment.counts().iter().map(|(u, n)| format!("{u} ×{n}")).collect();
        let _ = writeln!(
            s,
            "| {i} | {:.3} | {} | {} | {} | {} |",
            sol.criterion,
            sol.area,
            sol.latency,
            sol.max_layer_latency,
            counts.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(unit: &str, criterion: f64, area: f64, latency: u64) -> Choice {
        Choice { unit: unit.into(), criterion, area, latency }
    }

    fn two_layer() -> Problem {
        Problem {
            criterion: "x".into(),
            sense: Sense::Minimise,
            layers: vec![
                Layer { name: "a".into(), options: vec![c("p", 1.0, 10.0, 5), c("q", 0.0, 20.0, 9)] },
                Layer { name: "b".into(), options: vec![c("p", 2.0, 10.0, 5), c("q", 0.5, 20.0, 9)] },
            ],
        }
    }

    #[test]
    fn shared_counts_each_type_once() {
        let p = two_layer();
        let s = p.evaluate(Arch::Shared, &[1, 1]).unwrap();
        assert_eq!((s.area, s.latency, s.criterion), (20.0, 18, 0.5));
        let d = p.evaluate(Arch::Dataflow, &[1, 1]).unwrap();
        assert_eq!(d.area, 40.0);
        assert_eq!(p.evaluate(Arch::Shared, &[0, 1]).unwrap().area, 30.0);
    }

    #[test]
    fn budgets_trade_accuracy_for_cost() {
        let p = two_layer();
        assert_eq!(optimise(&p, Arch::Shared, &Budget::none()).unwrap().choices, vec![1, 1]);
        assert_eq!(optimise(&p, Arch::Shared, &Budget { area: Some(15.0), latency: None }).unwrap().choices, vec![0, 0]);
        assert_eq!(optimise(&p, Arch::Dataflow, &Budget { area: Some(30.0), latency: None }).unwrap().choices, vec![0, 1]);
        assert_eq!(optimise(&p, Arch::Shared, &Budget { area: None, latency: Some(14) }).unwrap().choices, vec![0, 1]);
        let e = optimise(&p, Arch::Shared, &Budget { area: Some(5.0), latency: None }).unwrap_err();
        assert!(e.to_string().contains("smallest achievable area is 10"), "{e}");
        assert!(e.to_string().contains("lowest achievable latency is 10 cycles"), "{e}");
    }

    #[test]
    fn filter_three_dims_keeps_exactly_the_non_dominated() {
        let pts = vec![
            Key { area: 1.0, lat: 5, crit: 3.0 },
            Key { area: 1.0, lat: 5, crit: 3.0 },
            Key { area: 2.0, lat: 4, crit: 3.0 },
            Key { area: 2.0, lat: 6, crit: 2.0 },
            Key { area: 3.0, lat: 6, crit: 2.0 },
            Key { area: 3.0, lat: 3, crit: 9.0 },
        ];
        let f = filter(pts, Dims { area: true, lat: true });
        let got: Vec<_> = f.iter().map(|k| k.key()).collect();
        assert_eq!(got, vec![(1.0, 5, 3.0), (2.0, 4, 3.0), (2.0, 6, 2.0), (3.0, 3, 9.0)]);
    }

    #[test]
    fn bad_problems_are_refused() {
        let mut p = two_layer();
        p.layers[1].options[0].area = 11.0;
        assert!(matches!(prepare(&p), Err(AssignError::AreaMismatch { .. })));
        let mut p = two_layer();
        p.layers[0].options[0].criterion = f64::NAN;
        assert!(prepare(&p).unwrap_err().to_string().contains("criterion is NaN"));
        let mut p = two_layer();
        p.layers[1].name = "a".into();
        assert!(matches!(prepare(&p), Err(AssignError::DuplicateLayer { .. })));
        let mut p = two_layer();
        p.layers[1].options.clear();
        assert!(matches!(prepare(&p), Err(AssignError::NoOptions { .. })));
        assert!(matches!(
            optimise(&two_layer(), Arch::Shared, &Budget { area: Some(f64::NAN), latency: None }),
            Err(AssignError::BadBudget(_))
        ));
    }
}
