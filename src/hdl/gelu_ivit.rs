//! `gelu_ivit` (element-wise ShiftGELU, the adapted preset's max(x, 0) form) as a rust_hdl
//! block: per lane one comparator exponent, a 31-stage pipelined restoring divider and the
//! output multiplies, in a stall-all pipeline (block diagram and latency in `cycle::gelu_ivit`).

use super::prims::{MulSlice, Pack, SExt, SMul, ZExt};
use super::softmax_ivit::ShiftExp;
use rust_hdl::prelude::*;

/// Exponent comparators.
pub const NQ: usize = 23;
/// Divider stages.
pub const DIV: usize = 31;

/// One lane: S1 (exponent), D1..D31 (divider), O (output).
#[derive(LogicBlock)]
pub struct Lane<const B: usize, const B1: usize, const X: usize, const TB: usize, const O: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Pipeline advance.
    pub adv: Signal<In, Bit>,
    /// Input code.
    pub q: Signal<In, Bits<B>>,
    /// Upshift.
    pub up: Signal<In, Bits<5>>,
    /// x0.
    pub x0: Signal<In, Bits<X>>,
    /// n·x0.
    pub lim: Signal<In, Bits<X>>,
    /// n.
    pub n: Signal<In, Bits<5>>,
    /// exp_shift(0) = −x0·2^n.
    pub k0: Signal<In, Bits<32>>,
    /// k·x0, packed.
    pub thr: Signal<In, Bits<TB>>,
    /// Output of stage O.
    pub out: Signal<Out, Bits<O>>,
    qx: SExt<B, B1>,
    ex: ShiftExp<B1, X, TB, NQ>,
    ez: ZExt<32, 33>,
    fz: ZExt<32, 33>,
    sig: MulSlice<33, 33, 8, 24>,
    sz: ZExt<8, 9>,
    prod: SMul<B, 9, O>,
    half: Constant<Bits<B>>,
    zero_b: Constant<Bits<B>>,
    zero_b1: Constant<Bits<B1>>,
    zero32: Constant<Bits<32>>,
    one32: Constant<Bits<32>>,
    one5: Constant<Bits<5>>,
    absq: Signal<Local, Bits<B1>>,
    e0: Signal<Local, Bits<32>>,
    em0: Signal<Local, Bits<32>>,
    r2: [Signal<Local, Bits<32>>; DIV],
    qs: [DFF<Bits<B>>; 32],
    es: [DFF<Bits<32>>; 32],
    ss: [DFF<Bits<32>>; 32],
    rem: [DFF<Bits<32>>; 32],
    quo: [DFF<Bits<32>>; 32],
    o: DFF<Bits<O>>,
}

impl<const B: usize, const B1: usize, const X: usize, const TB: usize, const O: usize> Default for Lane<B, B1, X, TB, O> {
    fn default() -> Self {
        assert_eq!(B + 1, B1);
        Self {
            clock: Default::default(),
            adv: Default::default(),
            q: Default::default(),
            up: Default::default(),
            x0: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            k0: Default::default(),
            thr: Default::default(),
            out: Default::default(),
            qx: Default::default(),
            ex: Default::default(),
            ez: Default::default(),
            fz: Default::default(),
            sig: Default::default(),
            sz: Default::default(),
            prod: Default::default(),
            half: Constant::new((1u64 << (B - 1)).to_bits()),
            zero_b: Constant::new(0u64.to_bits()),
            zero_b1: Constant::new(0u64.to_bits()),
            zero32: Constant::new(0u64.to_bits()),
            one32: Constant::new(1u64.to_bits()),
            one5: Constant::new(1u64.to_bits()),
            absq: Default::default(),
            e0: Default::default(),
            em0: Default::default(),
            r2: array_init::array_init(|_| Default::default()),
            qs: array_init::array_init(|_| Default::default()),
            es: array_init::array_init(|_| Default::default()),
            ss: array_init::array_init(|_| Default::default()),
            rem: array_init::array_init(|_| Default::default()),
            quo: array_init::array_init(|_| Default::default()),
            o: Default::default(),
        }
    }
}

impl<const B: usize, const B1: usize, const X: usize, const TB: usize, const O: usize> Logic for Lane<B, B1, X, TB, O> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, o);
        for i in 0..32 {
            self.qs[i].clock.next = self.clock.val();
            self.qs[i].d.next = self.qs[i].q.val();
            self.es[i].clock.next = self.clock.val();
            self.es[i].d.next = self.es[i].q.val();
            self.ss[i].clock.next = self.clock.val();
            self.ss[i].d.next = self.ss[i].q.val();
            self.rem[i].clock.next = self.clock.val();
            self.rem[i].d.next = self.rem[i].q.val();
            self.quo[i].clock.next = self.clock.val();
            self.quo[i].d.next = self.quo[i].q.val();
        }
        // S1: v = exp_shift(−|q| << p) (ShiftExp of m = |q|, q = 0); one of E, Em is K0.
        self.qx.a.next = self.q.val();
        if self.q.val() >= self.half.val() {
            self.absq.next = self.zero_b1.val() - self.qx.y.val();
        } else {
            self.absq.next = self.qx.y.val();
        }
        self.ex.m.next = self.absq.val();
        self.ex.q.next = self.zero_b1.val();
        self.ex.up.next = self.up.val();
        self.ex.x0.next = self.x0.val();
        self.ex.lim.next = self.lim.val();
        self.ex.n.next = self.n.val();
        self.ex.thr.next = self.thr.val();
        if (self.q.val() < self.half.val()) & (self.q.val() != self.zero_b.val()) {
            self.e0.next = self.k0.val();
            self.em0.next = self.ex.e.val();
        } else {
            self.e0.next = self.ex.e.val();
            self.em0.next = self.k0.val();
        }
        // D1..D31: restoring division of 2^31 − 1 (all ones) by S.
        for i in 0..DIV {
            self.r2[i].next = (self.rem[i].q.val() << self.one5.val()) + self.one32.val();
        }
        // O: out = q · ((E · factor) >> 24).
        self.ez.a.next = self.es[31].q.val();
        self.fz.a.next = self.quo[31].q.val();
        self.sig.a.next = self.ez.y.val();
        self.sig.b.next = self.fz.y.val();
        self.sz.a.next = self.sig.y.val();
        self.prod.a.next = self.qs[31].q.val();
        self.prod.b.next = self.sz.y.val();
        if self.adv.val() {
            self.qs[0].d.next = self.q.val();
            self.es[0].d.next = self.e0.val();
            self.ss[0].d.next = self.e0.val() + self.em0.val();
            self.rem[0].d.next = self.zero32.val();
            self.quo[0].d.next = self.zero32.val();
            for i in 0..DIV {
                self.qs[i + 1].d.next = self.qs[i].q.val();
                self.es[i + 1].d.next = self.es[i].q.val();
                self.ss[i + 1].d.next = self.ss[i].q.val();
                if self.r2[i].val() >= self.ss[i].q.val() {
                    self.rem[i + 1].d.next = self.r2[i].val() - self.ss[i].q.val();
                    self.quo[i + 1].d.next = (self.quo[i].q.val() << self.one5.val()) + self.one32.val();
                } else {
                    self.rem[i + 1].d.next = self.r2[i].val();
                    self.quo[i + 1].d.next = self.quo[i].q.val() << self.one5.val();
                }
            }
            self.o.d.next = self.prod.p.val();
        }
        self.out.next = self.o.q.val();
    }
}

/// The streaming unit.
#[derive(LogicBlock)]
pub struct GeluIvit<
    const B: usize,
    const B1: usize,
    const L: usize,
    const DW: usize,
    const X: usize,
    const TB: usize,
    const O: usize,
    const ODW: usize,
> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (empties the pipeline).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration register address.
    pub cfg_addr: Signal<In, Bits<6>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// Input beat accepted this cycle when valid.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Last beat of a row.
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs q·σ (scale s·2^−7).
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    lanes: [Lane<B, B1, X, TB, O>; L],
    tpack: Pack<NQ, X, TB>,
    pack: Pack<L, O, ODW>,
    thr_addr: [Constant<Bits<6>>; NQ],
    width: Constant<Bits<8>>,
    adv: Signal<Local, Bit>,
    up: DFF<Bits<5>>,
    x0: DFF<Bits<X>>,
    lim: DFF<Bits<X>>,
    n: DFF<Bits<5>>,
    k0: DFF<Bits<32>>,
    thr: [DFF<Bits<X>>; NQ],
    v: [DFF<Bit>; 33],
    l: [DFF<Bit>; 33],
}

impl<
        const B: usize,
        const B1: usize,
        const L: usize,
        const DW: usize,
        const X: usize,
        const TB: usize,
        const O: usize,
        const ODW: usize,
    > Default for GeluIvit<B, B1, L, DW, X, TB, O, ODW>
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
            tpack: Default::default(),
            pack: Default::default(),
            thr_addr: array_init::array_init(|k| Constant::new((32 + k as u64).to_bits())),
            width: Constant::new((B as u64).to_bits()),
            adv: Default::default(),
            up: Default::default(),
            x0: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            k0: Default::default(),
            thr: array_init::array_init(|_| Default::default()),
            v: array_init::array_init(|_| Default::default()),
            l: array_init::array_init(|_| Default::default()),
        }
    }
}

impl<
        const B: usize,
        const B1: usize,
        const L: usize,
        const DW: usize,
        const X: usize,
        const TB: usize,
        const O: usize,
        const ODW: usize,
    > Logic for GeluIvit<B, B1, L, DW, X, TB, O, ODW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, up, x0, lim, n, k0);
        for k in 0..NQ {
            self.thr[k].clock.next = self.clock.val();
            self.thr[k].d.next = self.thr[k].q.val();
            if self.cfg_we.val() & (self.cfg_addr.val() == self.thr_addr[k].val()) {
                self.thr[k].d.next = self.cfg_data.val().get_bits::<X>(0);
            }
            self.tpack.lane[k].next = self.thr[k].q.val();
        }
        for i in 0..33 {
            self.v[i].clock.next = self.clock.val();
            self.v[i].d.next = self.v[i].q.val();
            self.l[i].clock.next = self.clock.val();
            self.l[i].d.next = self.l[i].q.val();
        }
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                0 => self.up.d.next = self.cfg_data.val().get_bits::<5>(0),
                1 => self.x0.d.next = self.cfg_data.val().get_bits::<X>(0),
                2 => self.lim.d.next = self.cfg_data.val().get_bits::<X>(0),
                3 => self.n.d.next = self.cfg_data.val().get_bits::<5>(0),
                4 => self.k0.d.next = self.cfg_data.val(),
                _ => {}
            }
        }
        self.adv.next = !self.v[32].q.val() | self.out_ready.val();
        self.in_ready.next = self.adv.val();
        self.out_valid.next = self.v[32].q.val();
        self.out_last.next = self.l[32].q.val();
        if self.reset.val() {
            for i in 0..33 {
                self.v[i].d.next = false;
            }
        } else if self.adv.val() {
            self.v[0].d.next = self.in_valid.val();
            self.l[0].d.next = self.in_last.val();
            for i in 0..32 {
                self.v[i + 1].d.next = self.v[i].q.val();
                self.l[i + 1].d.next = self.l[i].q.val();
            }
        }
        for i in 0..L {
            self.lanes[i].clock.next = self.clock.val();
            self.lanes[i].adv.next = self.adv.val();
            self.lanes[i].q.next = self.in_data.val().get_bits::<B>(i * self.width.val().index());
            self.lanes[i].up.next = self.up.q.val();
            self.lanes[i].x0.next = self.x0.q.val();
            self.lanes[i].lim.next = self.lim.q.val();
            self.lanes[i].n.next = self.n.q.val();
            self.lanes[i].k0.next = self.k0.q.val();
            self.lanes[i].thr.next = self.tpack.data.val();
            self.pack.lane[i].next = self.lanes[i].out.val();
        }
        self.out_data.next = self.pack.data.val();
    }
}
