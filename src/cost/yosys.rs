//! The pinned yosys scripts and the parsers of their statistics.
//!
//! The scripts are fixed text: a figure in the cost table is only comparable with another
//! produced by the same script and the same yosys (0.23 here), so the scripts are stored in
//! the table and changing one means regenerating it.
//!
//! **ASIC-like** ([`ASIC_SCRIPT`]): the word-level part of yosys's generic `synth` (proc,
//! flatten, opt, wreduce, alumacc, share), memories kept as `$mem_v2` cells (`memory -nomap`:
//! the row buffers would be SRAM macros, so their bits are reported apart from the logic and
//! never turned into flip-flops), `techmap` to yosys's internal gates, every flip-flop turned
//! into a plain `$_DFF_P_` (`dfflegalize`: enables and synchronous resets become gates, so
//! that `stat -tech cmos` can count them), then ABC maps the logic onto yosys's CMOS gate set
//! (NOT, NAND, NOR, AOI3/4, OAI3/4, MUX, NMUX, XOR, XNOR).
//!
//! It is cheaper than the stock `synth; abc -g cmos`, which does not fit the budget (the
//! default set in under 5 minutes on 2 cores); measured here with yosys 0.23, CPU seconds:
//! - no gate-level `opt` after `techmap`: the stock fixpoint re-runs ~30 times along
//!   ShiftGELU's 31-stage divider (`gelu_ivit_8b_l4`: 290 s instead of 46 s, for 0.35 % fewer
//!   transistors), and even one `opt_expr; opt_clean` there costs 13 of 38 s on
//!   `softmax_fqvit_6b_l4` for 0.3 %: ABC does that cleaning anyway;
//! - ABC runs `strash; dc2; map` instead of its default script, which ran for over 18 minutes
//!   on `softmax_ibert_8b_l4`; against the default script on `softmax_ivit_8b_l1` it gives
//!   1.8 % more transistors, and `dc2` gives 22 % fewer than a bare `strash; map` for 3 s more
//!   on `softmax_fqvit_6b_l4`.
//!
//! **iCE40** ([`ICE40_SCRIPT`]): the steps of `synth_ice40 -dsp` (UltraPlus DSP blocks for
//! wide multiplies, block RAM for the row buffers) written out, with four changes: the
//! gate-level `opt` fixpoints are single passes, `ice40_opt -full` (a fixpoint too: 18 rounds
//! on `softmax_ibert_8b_l4`, 52 s of CPU against 20 s without) is one `opt_expr -full;
//! opt_merge; opt_clean`, ABC maps to LUT4 with `strash; dc2; if; mfs2` instead of its default
//! script, and the final `check` step (whose `autoname` alone took 28 s on `gelu_ivit_8b_l4`)
//! is left out. Stock against this on `gelu_ivit_8b_l4`: 103 s / 42 s of yosys CPU, 25,175 /
//! 25,812 LUT4 (+2.5 %), 12,972 / 13,108 carries, 15,443 / 15,559 flip-flops, 16 / 16 DSPs.
//!
//! **Xilinx 7-series** ([`XILINX_SCRIPT`]): the steps of `synth_xilinx -family xc7 -flatten
//! -noiopad -noclkbuf` (the unit alone: no I/O buffers, no clock buffer; DSP48E1 for wide
//! multiplies, RAMB18E1/RAMB36E1 and LUTRAM for the memories) written out, with three changes:
//! the `opt` fixpoints after memory mapping are single passes, ABC maps with `strash; dc2; if; mfs2`
//! instead of its default script, and comparisons are mapped by `cmp2lut` only, without
//! `cmp2lcu` (as in the iCE40 flow: they go to the carry chain through `alumacc`); the final
//! `check` is left out. Measured on `gelu_ivit_8b_l4`, yosys CPU seconds and cells, stock /
//! with the first two changes / this script: 202 / 93 / 44 s; LUT1..6 + INV 18,355 / 18,312
//! / 17,411; SRL 273 / 277 / 277; CARRY4 2,396 / 2,396 / 3,404; MUXF7+F8 698 / 669 / 3,188;
//! flip-flops 8,603 / 8,607 / 8,607; DSP48E1 16 / 16 / 16. So `cmp2lcu` halves the run time
//! (its comparator trees make the coarse `opt` after it slow) at the price of a different
//! resource mix: 5 % fewer LUTs, 42 % more CARRY4. A yosys estimate, not Vivado, no place
//! and route.
//!
//! Transistors are yosys's `stat -tech cmos` estimate, computed on every cell except the
//! memories: NOT 2, NAND/NOR 4, AOI3/OAI3 6, AOI4/OAI4 8, NMUX 10, MUX/XOR/XNOR 12, DFF 16
//! ([`cmos_transistors`] recomputes it from the cell counts and the parser checks the two
//! agree). NAND2-equivalents are transistors / 4, the four transistors of a two-input NAND.

use super::CostError;
use std::collections::BTreeMap;
use std::path::Path;

/// ASIC-like synthesis script; `{file}` and `{top}` are replaced.
pub const ASIC_SCRIPT: &str = "\
read_verilog {file}
hierarchy -check -top {top}
proc
flatten
opt_expr
opt_clean
check -assert
opt -nodffe -nosdff
fsm
opt
wreduce
peepopt
opt_clean
alumacc
share
opt
log mnq-section: memories
stat
memory -nomap
opt_clean
opt -fast -full
techmap
dfflegalize -cell $_DFF_P_ 01
abc -g cmos -script +strash;dc2;map
opt_clean
log mnq-section: gates
stat -tech cmos t:$mem_v2 %n
";

/// iCE40 (UltraPlus, DSP blocks on) synthesis script; `{file}` and `{top}` are replaced.
pub const ICE40_SCRIPT: &str = "\
read_verilog -D ICE40_HX -lib -specify +/ice40/cells_sim.v
read_verilog {file}
hierarchy -check -top {top}
proc
flatten
tribuf -logic
deminout
opt_expr
opt_clean
check -assert
opt -nodffe -nosdff
fsm
opt
wreduce
peepopt
opt_clean
share
techmap -map +/cmp2lut.v -D LUT_WIDTH=4
opt_expr
opt_clean
memory_dff
wreduce t:$mul
techmap -map +/mul2dsp.v -map +/ice40/dsp_map.v -D DSP_A_MAXWIDTH=16 -D DSP_B_MAXWIDTH=16 -D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_Y_MINWIDTH=11 -D DSP_NAME=$__MUL16X16
select a:mul2dsp
setattr -unset mul2dsp
opt_expr -fine
wreduce
select -clear
ice40_dsp
chtype -set $mul t:$__soft_mul
alumacc
opt
memory -nomap
opt_clean
memory_libmap -lib +/ice40/brams.txt -lib +/ice40/spram.txt -no-auto-huge
techmap -map +/ice40/brams_map.v -map +/ice40/spram_map.v
ice40_braminit
opt_expr -mux_undef -undriven -fine
opt_clean
memory_map
opt_expr -undriven -fine
opt_clean
ice40_wrapcarry
techmap -map +/techmap.v -map +/ice40/arith_map.v
opt_expr
opt_clean
dfflegalize -cell $_DFF_?_ 0 -cell $_DFFE_?P_ 0 -cell $_DFF_?P?_ 0 -cell $_DFFE_?P?P_ 0 -cell $_SDFF_?P?_ 0 -cell $_SDFFCE_?P?P_ 0 -cell $_DLATCH_?_ x -mince -1
techmap -map +/ice40/ff_map.v
opt_expr -mux_undef
simplemap
opt_expr -mux_undef -undriven -full
opt_merge
opt_clean
techmap -map +/ice40/latches_map.v
abc -dress -lut 4 -script +strash;dc2;if;mfs2
ice40_wrapcarry -unwrap
techmap -map +/ice40/ff_map.v
clean
opt_lut -dlogic SB_CARRY:I0=1:I1=2:CI=3 -dlogic SB_CARRY:CO=3
techmap -map +/ice40/cells_map.v
clean
log mnq-section: ice40
stat
";

/// Xilinx 7-series synthesis script (`synth_xilinx -family xc7 -flatten -noiopad -noclkbuf`
/// written out); `{file}` and `{top}` are replaced.
pub const XILINX_SCRIPT: &str = "\
read_verilog -lib -specify +/xilinx/cells_sim.v
read_verilog -lib +/xilinx/cells_xtra.v
read_verilog {file}
hierarchy -check -top {top}
proc
flatten
tribuf -logic
deminout
opt_expr
opt_clean
check -assert
opt -nodffe -nosdff
fsm
opt
wreduce
peepopt
opt_clean
pmux2shiftx
clean
memory_dff
techmap -map +/mul2dsp.v -map +/xilinx/xc7_dsp_map.v -D DSP_A_MAXWIDTH=25 -D DSP_B_MAXWIDTH=18 -D DSP_A_MAXWIDTH_PARTIAL=18 -D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_Y_MINWIDTH=9 -D DSP_SIGNEDONLY=1 -D DSP_NAME=$__MUL25X18
select a:mul2dsp
setattr -unset mul2dsp
opt_expr -fine
wreduce
select -clear
xilinx_dsp -family xc7
chtype -set $mul t:$__soft_mul
techmap -map +/cmp2lut.v -D LUT_WIDTH=6
alumacc
share
opt
memory -nomap
opt_clean
memory_libmap -logic-cost-rom 0.015625 -lib +/xilinx/lutrams_xc5v.txt -lib +/xilinx/brams_xc4v.txt -D HAS_SIZE_36 -D HAS_CASCADE -D HAS_CONFLICT_BUG -D HAS_MIXWIDTH_SDP -no-auto-huge
techmap -map +/xilinx/lutrams_xc5v_map.v
techmap -map +/xilinx/brams_xc6v_map.v
opt_expr -full
opt_clean
memory_map
opt_expr -full
opt_merge
opt_clean
xilinx_srl -variable -minlen 3
techmap -map +/techmap.v -D LUT_SIZE=6 -map +/xilinx/arith_map.v
opt_expr
opt_clean
techmap -map +/techmap.v -map +/xilinx/cells_map.v
clean
dfflegalize -cell $_DFFE_?P?P_ 01 -cell $_SDFFE_?P?P_ 01 -cell $_DLATCH_?P?_ 01
opt_expr -mux_undef -noclkinv
abc -luts 2:2,3,6:5,10,20 -script +strash;dc2;if;mfs2
clean
techmap -map +/xilinx/ff_map.v
xilinx_srl -fixed -minlen 3
techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6
xilinx_dffopt
opt_lut_ins -tech xilinx
clean
log mnq-section: xilinx
stat
";

/// iCE40 HX synthesis for place and route (`--fmax`): HX parts have no DSP blocks, and the
/// UltraPlus has too few I/O pins for any unit's ports; `{json}` is the netlist written.
pub const ICE40_PNR_SCRIPT: &str = "\
read_verilog {file}
synth_ice40 -top {top} -run :check
log mnq-section: ice40
stat
write_json {json}
";

/// Fill a script template.
pub fn script(template: &str, file: &Path, top: &str, json: Option<&Path>) -> String {
    template
        .replace("{file}", &file.display().to_string())
        .replace("{top}", top)
        .replace("{json}", &json.map(|j| j.display().to_string()).unwrap_or_default())
}

/// One `stat` block of a yosys log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stat {
    /// Cell counts by type.
    pub cells: BTreeMap<String, u64>,
    /// "Number of cells".
    pub total_cells: u64,
    /// "Number of memories" (RTLIL memories not yet collected into cells).
    pub memories: u64,
    /// "Number of memory bits".
    pub memory_bits: u64,
    /// "Estimated number of transistors" and whether yosys knew every cell (no `+`).
    pub transistors: Option<(u64, bool)>,
}

/// The `stat` block that follows the line `mnq-section: <section>` in a yosys log.
pub fn parse_stat(log: &str, section: &str, log_path: &Path) -> Result<Stat, CostError> {
    let marker = format!("mnq-section: {section}");
    let bad = |why: String| CostError::Parse { log: log_path.to_path_buf(), why };
    let start =
        log.lines().position(|l| l.trim() == marker).ok_or_else(|| bad(format!("no '{marker}' line: the script did not get there")))?;
    let mut st = Stat::default();
    let mut seen_cells = false;
    let mut in_block = false;
    for line in log.lines().skip(start + 1) {
        let t = line.trim();
        if t.starts_with("mnq-section:") || t.starts_with("End of script") {
            break;
        }
        if t.starts_with("=== ") {
            if in_block {
                // A second module: the scripts flatten, so there must be only one.
                return Err(bad(format!("more than one module in the '{section}' statistics (not flattened?)")));
            }
            in_block = true;
            continue;
        }
        if !in_block {
            continue;
        }
        let num = |s: &str| s.trim().trim_end_matches('+').parse::<u64>().map_err(|_| bad(format!("unreadable number in '{t}'")));
        if let Some(rest) = t.strip_prefix("Number of cells:") {
            st.total_cells = num(rest)?;
            seen_cells = true;
        } else if let Some(rest) = t.strip_prefix("Number of memories:") {
            st.memories = num(rest)?;
        } else if let Some(rest) = t.strip_prefix("Number of memory bits:") {
            st.memory_bits = num(rest)?;
        } else if let Some(rest) = t.strip_prefix("Estimated number of transistors:") {
            st.transistors = Some((num(rest)?, !rest.trim().ends_with('+')));
        } else if seen_cells && st.transistors.is_none() && !t.is_empty() && !t.starts_with("Number of") && !t.starts_with("Chip area") {
            // Cell lines: "<type> <count>", indented under "Number of cells".
            let mut it = t.split_whitespace();
            if let (Some(name), Some(n), None) = (it.next(), it.next(), it.next()) {
                st.cells.insert(name.to_string(), num(n)?);
            }
        }
    }
    if !seen_cells {
        return Err(bad(format!("no cell count after '{marker}'")));
    }
    let listed: u64 = st.cells.values().sum();
    if listed != st.total_cells {
        return Err(bad(format!("cell types add up to {listed}, not the {} cells reported", st.total_cells)));
    }
    Ok(st)
}

/// Transistors of yosys's CMOS gate set (the weights of `stat -tech cmos`); `None` if a cell
/// type has no known count.
pub fn cmos_transistors(cells: &BTreeMap<String, u64>) -> Option<u64> {
    cells
        .iter()
        .map(|(c, n)| {
            let t = match c.as_str() {
                "$_NOT_" => 2,
                "$_NAND_" | "$_NOR_" => 4,
                "$_AOI3_" | "$_OAI3_" => 6,
                "$_AOI4_" | "$_OAI4_" => 8,
                "$_NMUX_" => 10,
                "$_MUX_" | "$_XOR_" | "$_XNOR_" => 12,
                "$_DFF_P_" | "$_DFF_N_" => 16,
                _ => return None,
            };
            Some(t * n)
        })
        .sum()
}

/// Resource classes of an FPGA `stat` block: a class name and the cell types it counts,
/// each a type name (`LUT4`) or a prefix ending in `*` (`SB_DFF*`) with its weight in the
/// class's unit (the LUT6 sites a LUTRAM cell takes, for example). The first match counts.
pub type Classes = &'static [(&'static str, &'static [(&'static str, u64)])];

/// Sum the cells of an FPGA `stat` block by class; a cell type in no class is an error, so
/// that a change of mapping never drops resources from the table silently.
pub fn classify(st: &Stat, classes: Classes, log_path: &Path) -> Result<BTreeMap<&'static str, u64>, CostError> {
    let mut out: BTreeMap<&'static str, u64> = classes.iter().map(|(c, _)| (*c, 0)).collect();
    for (cell, n) in &st.cells {
        let hit = classes.iter().find_map(|(class, types)| {
            types.iter().find(|(t, _)| t.strip_suffix('*').map_or(cell == t, |p| cell.starts_with(p))).map(|(_, w)| (*class, *w))
        });
        let (class, w) = hit.ok_or_else(|| CostError::Parse {
            log: log_path.to_path_buf(),
            why: format!(
                "cell type {cell} ({n}) is none of the counted resources: the mapping changed; extend the classes in src/cost/yosys.rs"
            ),
        })?;
        *out.get_mut(class).expect("every class has an entry") += w * n;
    }
    Ok(out)
}

/// iCE40 resources: cells of `SB_LUT4`, `SB_CARRY`, `SB_DFF*`, `SB_RAM40_4K` (4 kbit), `SB_MAC16`.
pub const ICE40_CLASSES: Classes = &[
    ("lut4", &[("SB_LUT4", 1)]),
    ("carry", &[("SB_CARRY", 1)]),
    ("dff", &[("SB_DFF*", 1)]),
    ("bram", &[("SB_RAM40*", 1)]),
    ("dsp", &[("SB_MAC16", 1)]),
];

/// Xilinx 7-series resources. `lut`: LUT1..LUT6 and `INV` (a LUT1 on the device) cells;
/// `lutram`: LUT6 sites of distributed RAM (7-series SLICEM: a RAM32M or RAM64M takes 4, a
/// RAMxX1D 2 per 64 bits, RAM128X1D 4, RAM256X1S 4); `srl`: shift registers, one LUT each;
/// `ramb18` / `ramb36`: block RAMs; `muxf`: MUXF7/MUXF8 (slice muxes, no LUT).
pub const XILINX_CLASSES: Classes = &[
    ("lut", &[("LUT*", 1), ("INV", 1)]),
    ("carry4", &[("CARRY4", 1)]),
    ("ff", &[("FDRE", 1), ("FDSE", 1), ("FDCE", 1), ("FDPE", 1)]),
    ("dsp", &[("DSP48E1", 1)]),
    ("ramb18", &[("RAMB18E1", 1)]),
    ("ramb36", &[("RAMB36E1", 1)]),
    (
        "lutram",
        &[
            ("RAM32X1S", 1),
            ("RAM64X1S", 1),
            ("RAM32X1D", 2),
            ("RAM64X1D", 2),
            ("RAM128X1S", 2),
            ("RAM128X1D", 4),
            ("RAM256X1S", 4),
            ("RAM32M", 4),
            ("RAM64M", 4),
        ],
    ),
    ("srl", &[("SRL16E", 1), ("SRLC32E", 1)]),
    ("muxf", &[("MUXF7", 1), ("MUXF8", 1)]),
];

/// The version line of the yosys on PATH.
pub fn version() -> Result<String, CostError> {
    super::tool_version("yosys", "-V", "yosys")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
mnq-section: memories

17. Printing statistics.

=== u ===

   Number of wires:                871
   Number of memories:               1
   Number of memory bits:         8192
   Number of processes:              0
   Number of cells:                  3
     $alu                            2
     $mem_v2                         1

18. Executing MEMORY pass.
mnq-section: gates

27. Printing statistics.

=== u (partially selected) ===

   Number of cells:                  4
     $_DFF_P_                        1
     $_NAND_                         2
     $_NOT_                          1

   Estimated number of transistors:         26

End of script. Logfile hash: 0, CPU: user 0.01s
";

    #[test]
    fn sections_are_read() {
        let p = Path::new("x.log");
        let m = parse_stat(LOG, "memories", p).unwrap();
        assert_eq!((m.memories, m.memory_bits, m.total_cells), (1, 8192, 3));
        let g = parse_stat(LOG, "gates", p).unwrap();
        assert_eq!(g.total_cells, 4);
        assert_eq!(g.transistors, Some((26, true)));
        assert_eq!(cmos_transistors(&g.cells), Some(26));
    }

    #[test]
    fn missing_or_inconsistent_sections_are_errors() {
        let p = Path::new("x.log");
        assert!(parse_stat(LOG, "ice40", p).unwrap_err().to_string().contains("did not get there"));
        let cut = LOG.replace("     $_NOT_                          1\n", "");
        assert!(parse_stat(&cut, "gates", p).unwrap_err().to_string().contains("add up to 3"));
    }

    #[test]
    fn fpga_cells_are_classified_and_unknown_ones_refused() {
        let p = Path::new("x.log");
        let mut st = Stat::default();
        for (c, n) in [("LUT2", 3), ("LUT6", 2), ("INV", 1), ("RAM32M", 2), ("SRLC32E", 1), ("FDRE", 4), ("RAMB18E1", 1)] {
            st.cells.insert(c.to_string(), n);
        }
        let c = classify(&st, XILINX_CLASSES, p).unwrap();
        assert_eq!((c["lut"], c["lutram"], c["srl"], c["ff"], c["ramb18"], c["ramb36"]), (6, 8, 1, 4, 1, 0));
        st.cells.insert("LDCE".to_string(), 1);
        let e = classify(&st, XILINX_CLASSES, p).unwrap_err().to_string();
        assert!(e.contains("cell type LDCE (1)") && e.contains("x.log"), "{e}");
        let mut ice = Stat::default();
        ice.cells.insert("SB_DFFESR".to_string(), 5);
        assert_eq!(classify(&ice, ICE40_CLASSES, p).unwrap()["dff"], 5);
    }

    #[test]
    fn unknown_cells_have_no_transistor_count() {
        let mut c = BTreeMap::new();
        c.insert("$_NAND_".to_string(), 3);
        assert_eq!(cmos_transistors(&c), Some(12));
        c.insert("$mem_v2".to_string(), 1);
        assert_eq!(cmos_transistors(&c), None);
    }
}
