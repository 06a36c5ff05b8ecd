//! `softmax_ivit` (Shiftmax) as a rust_hdl block: one row buffer (`softmax_row::RowBuffer`,
//! shared by the three softmaxes: row RAM, mask RAM, lane validity, running maximum) and four
//! phases, register for register the cycle model `cycle::softmax::RowSoftmax<Shift>` (its
//! module comment draws the phases and gives the latency and row-period formulas).
//!
//! Per lane, `ShiftExp` computes exp_shift(m − q) combinationally from the RAM's registered
//! read data: upshift, x·(1 + 1/2 − 1/16) with arithmetic shifts, the clamp at n·x0, fifteen
//! signed comparators against k·x0 giving ⌊x/x0⌋ and the remainder, and a left shift.

use super::prims::{Asr, MulSlice, Pack, SExt, SLe};
use super::softmax_row::RowBuffer;
use rust_hdl::prelude::*;

/// Exponent comparators (k·x0 for k = 1..=NQ).
pub const NQ: usize = 15;

/// exp_shift of one lane (combinational).
#[derive(LogicBlock)]
pub struct ShiftExp<const B: usize, const X: usize, const TB: usize, const Q: usize> {
    /// Row maximum.
    pub m: Signal<In, Bits<B>>,
    /// Input code.
    pub q: Signal<In, Bits<B>>,
    /// Upshift p.
    pub up: Signal<In, Bits<5>>,
    /// x0 = ⌊−1/s⌋.
    pub x0: Signal<In, Bits<X>>,
    /// n·x0.
    pub lim: Signal<In, Bits<X>>,
    /// n.
    pub n: Signal<In, Bits<5>>,
    /// k·x0 for k = 1..=Q, packed (k = 1 in the low bits).
    pub thr: Signal<In, Bits<TB>>,
    /// e^(q − m) in units of 2^−n·|x0|.
    pub e: Signal<Out, Bits<32>>,
    /// The same, zero-extended for the row-sum adder.
    pub e42: Signal<Out, Bits<42>>,
    mx: SExt<B, X>,
    qx: SExt<B, X>,
    ew: SExt<X, 32>,
    ew42: SExt<32, 42>,
    h1: Asr<X, 5>,
    h4: Asr<X, 5>,
    clamp: SLe<X>,
    cmp: [SLe<X>; Q],
    kval: [Constant<Bits<5>>; Q],
    xw: Constant<Bits<8>>,
    one: Constant<Bits<5>>,
    four: Constant<Bits<5>>,
    zero: Constant<Bits<X>>,
    zero5: Constant<Bits<5>>,
    x: Signal<Local, Bits<X>>,
    xe: Signal<Local, Bits<X>>,
    xc: Signal<Local, Bits<X>>,
    r: Signal<Local, Bits<X>>,
    qq: Signal<Local, Bits<5>>,
    base: Signal<Local, Bits<X>>,
}

impl<const B: usize, const X: usize, const TB: usize, const Q: usize> Default for ShiftExp<B, X, TB, Q> {
    fn default() -> Self {
        assert_eq!(X * Q, TB);
        Self {
            m: Default::default(),
            q: Default::default(),
            up: Default::default(),
            x0: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            thr: Default::default(),
            e: Default::default(),
            e42: Default::default(),
            mx: Default::default(),
            qx: Default::default(),
            ew: Default::default(),
            ew42: Default::default(),
            h1: Default::default(),
            h4: Default::default(),
            clamp: Default::default(),
            cmp: array_init::array_init(|_| Default::default()),
            kval: array_init::array_init(|k| Constant::new(((k + 1) as u64).to_bits())),
            xw: Constant::new((X as u64).to_bits()),
            one: Constant::new(1u64.to_bits()),
            four: Constant::new(4u64.to_bits()),
            zero: Constant::new(0u64.to_bits()),
            zero5: Constant::new(0u64.to_bits()),
            x: Default::default(),
            xe: Default::default(),
            xc: Default::default(),
            r: Default::default(),
            qq: Default::default(),
            base: Default::default(),
        }
    }
}

impl<const B: usize, const X: usize, const TB: usize, const Q: usize> Logic for ShiftExp<B, X, TB, Q> {
    #[hdl_gen]
    fn update(&mut self) {
        self.mx.a.next = self.m.val();
        self.qx.a.next = self.q.val();
        // x = −((m − q) << p) ≤ 0
        self.x.next = self.zero.val() - ((self.mx.y.val() - self.qx.y.val()) << self.up.val());
        self.h1.a.next = self.x.val();
        self.h1.s.next = self.one.val();
        self.h4.a.next = self.x.val();
        self.h4.s.next = self.four.val();
        self.xe.next = self.x.val() + self.h1.y.val() - self.h4.y.val();
        // xc = max(xe, n·x0)
        self.clamp.a.next = self.xe.val();
        self.clamp.b.next = self.lim.val();
        if self.clamp.y.val() {
            self.xc.next = self.lim.val();
        } else {
            self.xc.next = self.xe.val();
        }
        // qq = ⌊xc/x0⌋: the largest k with xc ≤ k·x0; r = xc − qq·x0.
        self.qq.next = self.zero5.val();
        self.r.next = self.xc.val();
        for k in 0..Q {
            self.cmp[k].a.next = self.xc.val();
            self.cmp[k].b.next = self.thr.val().get_bits::<X>(k * self.xw.val().index());
            if self.cmp[k].y.val() {
                self.qq.next = self.kval[k].val();
                self.r.next = self.xc.val() - self.thr.val().get_bits::<X>(k * self.xw.val().index());
            }
        }
        // E = (r − 2·x0) << (n − qq − 1), or >> 1 when qq = n.
        // base > 0, so sign extension is zero extension.
        self.base.next = self.r.val() - (self.x0.val() << self.one.val());
        self.ew.a.next = self.base.val();
        if self.qq.val() == self.n.val() {
            self.e.next = self.ew.y.val() >> self.one.val();
        } else {
            self.e.next = self.ew.y.val() << (self.n.val() - self.qq.val() - self.one.val());
        }
        self.ew42.a.next = self.e.val();
        self.e42.next = self.ew42.y.val();
    }
}

/// The streaming unit.
#[derive(LogicBlock)]
pub struct SoftmaxIvit<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize>
{
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (back to LOAD, output emptied).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration register address.
    pub cfg_addr: Signal<In, Bits<6>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// High in LOAD.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Mask flags of the beat, bit i for lane i: 1 = masked (left out of the row's maximum and
    /// sum, probability zero).
    pub in_mask: Signal<In, Bits<L>>,
    /// Last beat of a row (the row length is configured; `last` must agree with it).
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES probabilities, 16 bits each (scale 2^−15).
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    row: RowBuffer<B, L, DW, AW>,
    exps: [ShiftExp<B, X, TB, NQ>; L],
    tpack: Pack<NQ, X, TB>,
    prod: [MulSlice<32, 32, 16, 16>; L],
    pack: Pack<L, 16, ODW>,
    thr_addr: [Constant<Bits<6>>; NQ],
    width: Constant<Bits<8>>,
    ph_load: Constant<Bits<2>>,
    ph_sum: Constant<Bits<2>>,
    ph_div: Constant<Bits<2>>,
    ph_out: Constant<Bits<2>>,
    one11: Constant<Bits<11>>,
    zero11: Constant<Bits<11>>,
    zero42: Constant<Bits<42>>,
    limit: Constant<Bits<42>>,
    last_cnt: Constant<Bits<5>>,
    one5: Constant<Bits<5>>,
    zero16: Constant<Bits<16>>,
    zero5: Constant<Bits<5>>,
    zero32: Constant<Bits<32>>,
    one32: Constant<Bits<32>>,
    up: DFF<Bits<5>>,
    x0: DFF<Bits<X>>,
    lim: DFF<Bits<X>>,
    n: DFF<Bits<5>>,
    nbeats: DFF<Bits<11>>,
    lastn: DFF<Bits<5>>,
    thr: [DFF<Bits<X>>; NQ],
    phase: DFF<Bits<2>>,
    wptr: DFF<Bits<11>>,
    rptr: DFF<Bits<11>>,
    raddr: DFF<Bits<AW>>,
    rvalid: DFF<Bit>,
    rdi: DFF<Bits<11>>,
    sum: DFF<Bits<42>>,
    rem: DFF<Bits<32>>,
    quo: DFF<Bits<32>>,
    div: DFF<Bits<32>>,
    cnt: DFF<Bits<5>>,
    factor: DFF<Bits<32>>,
    ov: DFF<Bit>,
    olast: DFF<Bit>,
    odata: [DFF<Bits<16>>; L],
    issue: Signal<Local, Bit>,
    free: Signal<Local, Bit>,
    consume: Signal<Local, Bit>,
    wlast: Signal<Local, Bit>,
    rlast: Signal<Local, Bit>,
    esum: Signal<Local, Bits<42>>,
    nsum: Signal<Local, Bits<42>>,
    r2: Signal<Local, Bits<32>>,
}

impl<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize> Default
    for SoftmaxIvit<B, L, DW, X, TB, AW, ODW>
{
    fn default() -> Self {
        assert_eq!(B * L, DW);
        assert_eq!(16 * L, ODW);
        assert_eq!(1usize << AW, 1024 / L);
        Self {
            clock: Default::default(),
            reset: Default::default(),
            cfg_we: Default::default(),
            cfg_addr: Default::default(),
            cfg_data: Default::default(),
            in_valid: Default::default(),
            in_ready: Default::default(),
            in_data: Default::default(),
            in_mask: Default::default(),
            in_last: Default::default(),
            out_valid: Default::default(),
            out_ready: Default::default(),
            out_data: Default::default(),
            out_last: Default::default(),
            row: Default::default(),
            exps: array_init::array_init(|_| Default::default()),
            tpack: Default::default(),
            prod: array_init::array_init(|_| Default::default()),
            pack: Default::default(),
            thr_addr: array_init::array_init(|k| Constant::new((32 + k as u64).to_bits())),
            width: Constant::new((B as u64).to_bits()),
            ph_load: Constant::new(0u64.to_bits()),
            ph_sum: Constant::new(1u64.to_bits()),
            ph_div: Constant::new(2u64.to_bits()),
            ph_out: Constant::new(3u64.to_bits()),
            one11: Constant::new(1u64.to_bits()),
            zero11: Constant::new(0u64.to_bits()),
            zero42: Constant::new(0u64.to_bits()),
            limit: Constant::new(((1u64 << 31) - 1).to_bits()),
            last_cnt: Constant::new(30u64.to_bits()),
            one5: Constant::new(1u64.to_bits()),
            zero16: Constant::new(0u64.to_bits()),
            zero5: Constant::new(0u64.to_bits()),
            zero32: Constant::new(0u64.to_bits()),
            one32: Constant::new(1u64.to_bits()),
            up: Default::default(),
            x0: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            nbeats: Default::default(),
            lastn: Default::default(),
            thr: array_init::array_init(|_| Default::default()),
            phase: Default::default(),
            wptr: Default::default(),
            rptr: Default::default(),
            raddr: Default::default(),
            rvalid: Default::default(),
            rdi: Default::default(),
            sum: Default::default(),
            rem: Default::default(),
            quo: Default::default(),
            div: Default::default(),
            cnt: Default::default(),
            factor: Default::default(),
            ov: Default::default(),
            olast: Default::default(),
            odata: array_init::array_init(|_| Default::default()),
            issue: Default::default(),
            free: Default::default(),
            consume: Default::default(),
            wlast: Default::default(),
            rlast: Default::default(),
            esum: Default::default(),
            nsum: Default::default(),
            r2: Default::default(),
        }
    }
}

impl<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize> Logic
    for SoftmaxIvit<B, L, DW, X, TB, AW, ODW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(
            self, clock, up, x0, lim, n, nbeats, lastn, phase, wptr, rptr, raddr, rvalid, rdi, sum, rem, quo, div, cnt, factor, ov, olast
        );
        for k in 0..NQ {
            self.thr[k].clock.next = self.clock.val();
            self.thr[k].d.next = self.thr[k].q.val();
            if self.cfg_we.val() & (self.cfg_addr.val() == self.thr_addr[k].val()) {
                self.thr[k].d.next = self.cfg_data.val().get_bits::<X>(0);
            }
            self.tpack.lane[k].next = self.thr[k].q.val();
        }
        for i in 0..L {
            self.odata[i].clock.next = self.clock.val();
            self.odata[i].d.next = self.odata[i].q.val();
        }
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                0 => self.up.d.next = self.cfg_data.val().get_bits::<5>(0),
                1 => self.x0.d.next = self.cfg_data.val().get_bits::<X>(0),
                2 => self.lim.d.next = self.cfg_data.val().get_bits::<X>(0),
                3 => self.n.d.next = self.cfg_data.val().get_bits::<5>(0),
                5 => self.nbeats.d.next = self.cfg_data.val().get_bits::<11>(0),
                6 => self.lastn.d.next = self.cfg_data.val().get_bits::<5>(0),
                _ => {}
            }
        }
        self.in_ready.next = self.phase.q.val() == self.ph_load.val();
        self.out_valid.next = self.ov.q.val();
        self.out_last.next = self.olast.q.val();
        self.consume.next = self.ov.q.val() & self.out_ready.val();
        self.free.next = !self.ov.q.val() | self.out_ready.val();
        // A RAM read is issued in SUM while words remain, in OUT also only when the word read
        // last cycle is taken (or none is in flight).
        self.issue.next = false;
        if self.rptr.q.val() < self.nbeats.q.val() {
            if self.phase.q.val() == self.ph_sum.val() {
                self.issue.next = true;
            }
            if (self.phase.q.val() == self.ph_out.val()) & (!self.rvalid.q.val() | self.free.val()) {
                self.issue.next = true;
            }
        }
        self.row.clock.next = self.clock.val();
        if self.issue.val() {
            self.row.raddr.next = self.rptr.q.val().get_bits::<AW>(0);
            self.raddr.d.next = self.rptr.q.val().get_bits::<AW>(0);
        } else {
            self.row.raddr.next = self.raddr.q.val();
        }
        self.row.waddr.next = self.wptr.q.val().get_bits::<AW>(0);
        self.row.in_data.next = self.in_data.val();
        self.row.in_mask.next = self.in_mask.val();
        self.row.write.next = false;
        self.wlast.next = (self.wptr.q.val() + self.one11.val()) == self.nbeats.q.val();
        self.rlast.next = (self.rdi.q.val() + self.one11.val()) == self.nbeats.q.val();
        self.row.first.next = self.wptr.q.val() == self.zero11.val();
        self.row.wlast.next = self.wlast.val();
        self.row.rlast.next = self.rlast.val();
        self.row.lastn.next = self.lastn.q.val();
        // Lanes: the exponent from the read data and the row maximum (kept by the row buffer).
        for i in 0..L {
            self.exps[i].m.next = self.row.m.val();
            self.exps[i].q.next = self.row.rdata.val().get_bits::<B>(i * self.width.val().index());
            self.exps[i].up.next = self.up.q.val();
            self.exps[i].x0.next = self.x0.q.val();
            self.exps[i].lim.next = self.lim.q.val();
            self.exps[i].n.next = self.n.q.val();
            self.exps[i].thr.next = self.tpack.data.val();
            self.prod[i].a.next = self.exps[i].e.val();
            self.prod[i].b.next = self.factor.q.val();
            self.pack.lane[i].next = self.odata[i].q.val();
        }
        self.out_data.next = self.pack.data.val();
        // Sum of the live (valid, unmasked) lanes' exponents of the word read last cycle.
        self.esum.next = self.zero42.val();
        for i in 0..L {
            if self.row.rlive[i].val() {
                self.esum.next = self.esum.val() + self.exps[i].e42.val();
            }
        }
        self.nsum.next = self.sum.q.val() + self.esum.val();
        self.r2.next = (self.rem.q.val() << self.one5.val()) + self.one32.val();
        if self.reset.val() {
            self.phase.d.next = self.ph_load.val();
            self.wptr.d.next = self.zero11.val();
            self.ov.d.next = false;
            self.rvalid.d.next = false;
        } else if self.phase.q.val() == self.ph_load.val() {
            if self.in_valid.val() {
                self.row.write.next = true;
                self.wptr.d.next = self.wptr.q.val() + self.one11.val();
                if self.wlast.val() {
                    self.phase.d.next = self.ph_sum.val();
                    self.rptr.d.next = self.zero11.val();
                    self.rvalid.d.next = false;
                    self.sum.d.next = self.zero42.val();
                }
            }
        } else if self.phase.q.val() == self.ph_sum.val() {
            if self.issue.val() {
                self.rptr.d.next = self.rptr.q.val() + self.one11.val();
                self.rdi.d.next = self.rptr.q.val();
            }
            self.rvalid.d.next = self.issue.val();
            if self.rvalid.q.val() {
                self.sum.d.next = self.nsum.val();
                if self.rlast.val() {
                    self.phase.d.next = self.ph_div.val();
                    if self.nsum.val() >= self.limit.val() {
                        self.div.d.next = self.limit.val().get_bits::<32>(0);
                    } else {
                        self.div.d.next = self.nsum.val().get_bits::<32>(0);
                    }
                    self.rem.d.next = self.zero32.val();
                    self.quo.d.next = self.zero32.val();
                    self.cnt.d.next = self.zero5.val();
                }
            }
        } else if self.phase.q.val() == self.ph_div.val() {
            // Restoring division of 2^31 − 1: one quotient bit per cycle.
            if self.r2.val() >= self.div.q.val() {
                self.rem.d.next = self.r2.val() - self.div.q.val();
                self.quo.d.next = (self.quo.q.val() << self.one5.val()) + self.one32.val();
            } else {
                self.rem.d.next = self.r2.val();
                self.quo.d.next = self.quo.q.val() << self.one5.val();
            }
            self.cnt.d.next = self.cnt.q.val() + self.one5.val();
            if self.cnt.q.val() == self.last_cnt.val() {
                if self.r2.val() >= self.div.q.val() {
                    self.factor.d.next = (self.quo.q.val() << self.one5.val()) + self.one32.val();
                } else {
                    self.factor.d.next = self.quo.q.val() << self.one5.val();
                }
                self.phase.d.next = self.ph_out.val();
                self.rptr.d.next = self.zero11.val();
                self.rvalid.d.next = false;
            }
        } else {
            if self.issue.val() {
                self.rptr.d.next = self.rptr.q.val() + self.one11.val();
                self.rdi.d.next = self.rptr.q.val();
            }
            self.rvalid.d.next = self.issue.val() | (self.rvalid.q.val() & !self.free.val());
            if self.rvalid.q.val() & self.free.val() {
                for i in 0..L {
                    // Masked lanes (probability zero) and padding lanes give 0.
                    if self.row.rlive[i].val() {
                        self.odata[i].d.next = self.prod[i].y.val();
                    } else {
                        self.odata[i].d.next = self.zero16.val();
                    }
                }
                self.ov.d.next = true;
                self.olast.d.next = self.rlast.val();
            } else if self.consume.val() {
                self.ov.d.next = false;
                if self.olast.q.val() {
                    self.phase.d.next = self.ph_load.val();
                    self.wptr.d.next = self.zero11.val();
                }
            }
        }
    }
}
