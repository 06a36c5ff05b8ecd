//! `gelu_ibert` as a rust_hdl block: LANES copies of a three-stage i-GELU pipeline behind a
//! valid/ready stream shell with a stall-all pipeline.
//!
//! ```text
//!  in_data ─► S1: t = min(|q|, −b) + b ─► S2: y = sgn(q)·(t² + c) ─► S3: o = q·((y >>> n) + shift) ─► out_data
//!  (per lane)   reg q1, t1                 reg q2, y2                   reg o3
//!  valid/last:  v1/l1 ───────────────────► v2/l2 ────────────────────► v3/l3 ──► out_valid/out_last
//!  advance = !v3 | out_ready  (every stage moves together; in_ready = advance)
//! ```
//! Latency 3 cycles (accepted beat → out_valid), initiation interval 1 beat per cycle,
//! row period ⌈N / LANES⌉ cycles for a row of N elements. Widths for B-bit inputs: T = B + 2
//! (t, b, −b), Y = 2T + 2 (y, c, shift, the erf sum), O = B + Y (outputs).
//! Configuration registers (`cfg_addr`): 0 = −b_int, 1 = b_int, 2 = c_int, 3 = shift_int, 4 = n.

use super::prims::{Asr, Pack, SExt, SMul};
use rust_hdl::prelude::*;

/// One lane: three register stages.
#[derive(LogicBlock)]
pub struct Lane<const B: usize, const T: usize, const Y: usize, const O: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Pipeline advance.
    pub adv: Signal<In, Bit>,
    /// Input code (two's complement).
    pub q: Signal<In, Bits<B>>,
    /// −b_int (positive).
    pub nb: Signal<In, Bits<T>>,
    /// b_int.
    pub b: Signal<In, Bits<T>>,
    /// c_int.
    pub c: Signal<In, Bits<Y>>,
    /// shift_int.
    pub shift: Signal<In, Bits<Y>>,
    /// erf shift n.
    pub n: Signal<In, Bits<5>>,
    /// Output of stage 3.
    pub out: Signal<Out, Bits<O>>,
    half: Constant<Bits<B>>,
    zero_b: Constant<Bits<B>>,
    zero_t: Constant<Bits<T>>,
    zero_y: Constant<Bits<Y>>,
    qx: SExt<B, T>,
    sq: SMul<T, T, Y>,
    asr: Asr<Y, 5>,
    prod: SMul<B, Y, O>,
    absq: Signal<Local, Bits<T>>,
    a: Signal<Local, Bits<T>>,
    z: Signal<Local, Bits<Y>>,
    q1: DFF<Bits<B>>,
    t1: DFF<Bits<T>>,
    q2: DFF<Bits<B>>,
    y2: DFF<Bits<Y>>,
    o3: DFF<Bits<O>>,
}

impl<const B: usize, const T: usize, const Y: usize, const O: usize> Default for Lane<B, T, Y, O> {
    fn default() -> Self {
        Self {
            clock: Default::default(),
            adv: Default::default(),
            q: Default::default(),
            nb: Default::default(),
            b: Default::default(),
            c: Default::default(),
            shift: Default::default(),
            n: Default::default(),
            out: Default::default(),
            // Const generics cannot appear in hdl_gen expressions, and rust_hdl's literals are
            // 32 bits wide: sized localparams keep every expression at its own width.
            half: Constant::new((1u64 << (B - 1)).to_bits()),
            zero_b: Constant::new(0u64.to_bits()),
            zero_t: Constant::new(0u64.to_bits()),
            zero_y: Constant::new(0u64.to_bits()),
            qx: Default::default(),
            sq: Default::default(),
            asr: Default::default(),
            prod: Default::default(),
            absq: Default::default(),
            a: Default::default(),
            z: Default::default(),
            q1: Default::default(),
            t1: Default::default(),
            q2: Default::default(),
            y2: Default::default(),
            o3: Default::default(),
        }
    }
}

impl<const B: usize, const T: usize, const Y: usize, const O: usize> Logic for Lane<B, T, Y, O> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, q1, t1, q2, y2, o3);
        // S1: a = min(|q|, −b) on non-negative values, t = a + b (two's complement, T bits).
        self.qx.a.next = self.q.val();
        if self.q.val() >= self.half.val() {
            self.absq.next = self.zero_t.val() - self.qx.y.val();
        } else {
            self.absq.next = self.qx.y.val();
        }
        if self.absq.val() < self.nb.val() {
            self.a.next = self.absq.val();
        } else {
            self.a.next = self.nb.val();
        }
        // S2: y = sgn(q)·(t² + c).
        self.sq.a.next = self.t1.q.val();
        self.sq.b.next = self.t1.q.val();
        self.z.next = self.sq.p.val() + self.c.val();
        // S3: o = q · ((y >>> n) + shift).
        self.asr.a.next = self.y2.q.val();
        self.asr.s.next = self.n.val();
        self.prod.a.next = self.q2.q.val();
        self.prod.b.next = self.asr.y.val() + self.shift.val();
        if self.adv.val() {
            self.q1.d.next = self.q.val();
            self.t1.d.next = self.a.val() + self.b.val();
            self.q2.d.next = self.q1.q.val();
            if self.q1.q.val() >= self.half.val() {
                self.y2.d.next = self.zero_y.val() - self.z.val();
            } else if self.q1.q.val() == self.zero_b.val() {
                self.y2.d.next = self.zero_y.val();
            } else {
                self.y2.d.next = self.z.val();
            }
            self.o3.d.next = self.prod.p.val();
        }
        self.out.next = self.o3.q.val();
    }
}

/// The streaming unit: configuration registers, LANES lanes, valid/last pipeline.
#[derive(LogicBlock)]
pub struct GeluIbert<const B: usize, const L: usize, const DW: usize, const T: usize, const Y: usize, const O: usize, const ODW: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (empties the pipeline).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration register address.
    pub cfg_addr: Signal<In, Bits<6>>,
    /// Configuration value (two's complement, truncated to the register width).
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// Input beat accepted this cycle when valid.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes, lane 0 in the low bits.
    pub in_data: Signal<In, Bits<DW>>,
    /// Last beat of a row.
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs, lane 0 in the low bits.
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    lanes: [Lane<B, T, Y, O>; L],
    pack: Pack<L, O, ODW>,
    width: Constant<Bits<8>>,
    adv: Signal<Local, Bit>,
    nb: DFF<Bits<T>>,
    b: DFF<Bits<T>>,
    c: DFF<Bits<Y>>,
    shift: DFF<Bits<Y>>,
    n: DFF<Bits<5>>,
    v1: DFF<Bit>,
    v2: DFF<Bit>,
    v3: DFF<Bit>,
    l1: DFF<Bit>,
    l2: DFF<Bit>,
    l3: DFF<Bit>,
}

impl<const B: usize, const L: usize, const DW: usize, const T: usize, const Y: usize, const O: usize, const ODW: usize> Default
    for GeluIbert<B, L, DW, T, Y, O, ODW>
{
    fn default() -> Self {
        assert_eq!(B * L, DW);
        assert_eq!(O * L, ODW);
        Self {
            clock: Default::default(),
            reset: Default::default(),
            cfg_we: Default::default(),
            cfg_addr: Default::default(),
            cfg_data: Default::default(),
            in_valid: Default::default(),
            in_ready: Default::default(),
            in_data: Default::default(),
            in_last: Default::default(),
            out_valid: Default::default(),
            out_ready: Default::default(),
            out_data: Default::default(),
            out_last: Default::default(),
            lanes: array_init::array_init(|_| Default::default()),
            pack: Default::default(),
            width: Constant::new((B as u64).to_bits()),
            adv: Default::default(),
            nb: Default::default(),
            b: Default::default(),
            c: Default::default(),
            shift: Default::default(),
            n: Default::default(),
            v1: Default::default(),
            v2: Default::default(),
            v3: Default::default(),
            l1: Default::default(),
            l2: Default::default(),
            l3: Default::default(),
        }
    }
}

impl<const B: usize, const L: usize, const DW: usize, const T: usize, const Y: usize, const O: usize, const ODW: usize> Logic
    for GeluIbert<B, L, DW, T, Y, O, ODW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, nb, b, c, shift, n, v1, v2, v3, l1, l2, l3);
        self.adv.next = !self.v3.q.val() | self.out_ready.val();
        self.in_ready.next = self.adv.val();
        self.out_valid.next = self.v3.q.val();
        self.out_last.next = self.l3.q.val();
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                0 => self.nb.d.next = self.cfg_data.val().get_bits::<T>(0),
                1 => self.b.d.next = self.cfg_data.val().get_bits::<T>(0),
                2 => self.c.d.next = self.cfg_data.val().get_bits::<Y>(0),
                3 => self.shift.d.next = self.cfg_data.val().get_bits::<Y>(0),
                4 => self.n.d.next = self.cfg_data.val().get_bits::<5>(0),
                _ => {}
            }
        }
        if self.reset.val() {
            self.v1.d.next = false;
            self.v2.d.next = false;
            self.v3.d.next = false;
        } else if self.adv.val() {
            self.v1.d.next = self.in_valid.val();
            self.l1.d.next = self.in_last.val();
            self.v2.d.next = self.v1.q.val();
            self.l2.d.next = self.l1.q.val();
            self.v3.d.next = self.v2.q.val();
            self.l3.d.next = self.l2.q.val();
        }
        for i in 0..L {
            self.lanes[i].clock.next = self.clock.val();
            self.lanes[i].adv.next = self.adv.val();
            self.lanes[i].q.next = self.in_data.val().get_bits::<B>(i * self.width.val().index());
            self.lanes[i].nb.next = self.nb.q.val();
            self.lanes[i].b.next = self.b.q.val();
            self.lanes[i].c.next = self.c.q.val();
            self.lanes[i].shift.next = self.shift.q.val();
            self.lanes[i].n.next = self.n.q.val();
            self.pack.lane[i].next = self.lanes[i].out.val();
        }
        self.out_data.next = self.pack.data.val();
    }
}
