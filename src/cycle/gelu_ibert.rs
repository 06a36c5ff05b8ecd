//! Cycle model of `hdl::gelu_ibert`: LANES three-stage i-GELU lanes in a stall-all pipeline.
//! Register for register the same as the RTL (see the block diagram in `hdl/gelu_ibert.rs`).

use super::{sext, Clocked, Outs, Pins, MAX_LANES};

/// Widths of the datapath for B-bit inputs: (T, Y, O).
pub fn widths(bits: u32) -> (u32, u32, u32) {
    let t = bits + 2;
    let y = 2 * t + 2;
    (t, y, bits + y)
}

/// The cycle model.
#[derive(Debug, Clone)]
pub struct GeluIbert {
    bits: u32,
    lanes: usize,
    t: u32,
    y: u32,
    nb: i64,
    b: i64,
    c: i64,
    shift: i64,
    n: u32,
    v: [bool; 3],
    l: [bool; 3],
    q1: [i64; MAX_LANES],
    t1: [i64; MAX_LANES],
    q2: [i64; MAX_LANES],
    y2: [i64; MAX_LANES],
    o3: [i64; MAX_LANES],
}

impl GeluIbert {
    /// A unit for `bits`-bit inputs and `lanes` lanes, registers cleared.
    pub fn new(bits: u32, lanes: usize) -> GeluIbert {
        let (t, y, _) = widths(bits);
        GeluIbert {
            bits,
            lanes,
            t,
            y,
            nb: 0,
            b: 0,
            c: 0,
            shift: 0,
            n: 0,
            v: [false; 3],
            l: [false; 3],
            q1: [0; MAX_LANES],
            t1: [0; MAX_LANES],
            q2: [0; MAX_LANES],
            y2: [0; MAX_LANES],
            o3: [0; MAX_LANES],
        }
    }

    fn adv(&self, pins: &Pins) -> bool {
        !self.v[2] || pins.out_ready
    }
}

impl Clocked for GeluIbert {
    fn eval(&self, pins: &Pins) -> Outs {
        let mut o = Outs { in_ready: self.adv(pins), out_valid: self.v[2], out_last: self.l[2], ..Outs::default() };
        o.out_data[..self.lanes].copy_from_slice(&self.o3[..self.lanes]);
        o
    }

    fn tick(&mut self, pins: &Pins) {
        let adv = self.adv(pins);
        if pins.cfg_we {
            let d = u64::from(pins.cfg_data);
            match pins.cfg_addr {
                0 => self.nb = (d & ((1 << self.t) - 1)) as i64,
                1 => self.b = sext(d, self.t),
                2 => self.c = sext(d, self.y),
                3 => self.shift = sext(d, self.y),
                4 => self.n = (d & 31) as u32,
                _ => {}
            }
        }
        if pins.reset {
            self.v = [false; 3];
        } else if adv {
            self.v = [pins.in_valid, self.v[0], self.v[1]];
            self.l = [pins.in_last, self.l[0], self.l[1]];
        }
        if adv {
            for i in 0..self.lanes {
                let q = sext(pins.in_data[i] as u64, self.bits);
                let o = self.q2[i] * ((self.y2[i] >> self.n) + self.shift);
                let z = self.t1[i] * self.t1[i] + self.c;
                let y = if self.q1[i] < 0 {
                    -z
                } else if self.q1[i] == 0 {
                    0
                } else {
                    z
                };
                self.o3[i] = o;
                self.y2[i] = y;
                self.q2[i] = self.q1[i];
                self.t1[i] = q.abs().min(self.nb) + self.b;
                self.q1[i] = q;
            }
        }
    }
}

/// Configuration writes for the per-layer constants, refused when a constant does not fit
/// its register (the scale is too fine for the generated widths).
pub fn config(bits: u32, k: &crate::units::ibert::GeluConsts) -> Result<Vec<(u32, u32)>, String> {
    let (t, y, _) = widths(bits);
    let fits = |v: i64, w: u32| v.unsigned_abs() < 1u64 << (w - 2);
    if !(fits(k.b, t) && fits(k.c, y) && fits(k.shift, y) && k.n < 32) {
        return Err(format!(
            "i-GELU constants b={} c={} shift={} n={} do not fit the {bits}-bit hardware (b needs < 2^{}, c and shift < 2^{}): use a coarser input scale",
            k.b,
            k.c,
            k.shift,
            k.n,
            t - 2,
            y - 2
        ));
    }
    Ok(vec![(0, (-k.b) as u32), (1, k.b as u32), (2, k.c as u32), (3, k.shift as u32), (4, k.n)])
}
