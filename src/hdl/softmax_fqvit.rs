//! `softmax_fqvit` (FQ-ViT Log-Int-Softmax) as a rust_hdl block: the row-buffer
//! microarchitecture of `softmax_ivit` without the divider phase, register for register the
//! cycle model `cycle::softmax::RowSoftmax<Log>`.
//!
//! Per lane, `LogExp` computes I-BERT's exponent E = max(r·(r + b) + c, 0) << (30 − ⌊x/x0⌋)
//! combinationally from the RAM's registered read data, and in the output phase the log2 code
//! of RNE(S/E): sixteen comparisons of (2t_j − 1)·E = (3E << (j − 1)) − E against 2S with
//! t_1 = 2, t_j = 3·2^(j−2) — shifts and subtractions, no divider and no multiplier. The code
//! is 5 bits two's complement: 0..15, or −1 for the zero flag (E = 0 or RNE(S/E) ≥ 1.5·2^15).
//!
//! As for `softmax_ibert`, rust_hdl cannot share the top level between kernels, so it is
//! written out again with this kernel's widths around the shared `softmax_row::RowBuffer`.

use super::prims::{MulSlice, Pack, SExt, SLe, ZExt};
use super::softmax_row::RowBuffer;
use rust_hdl::prelude::*;

/// Exponent comparators (k·x0 for k = 1..=NQ).
pub const NQ: usize = 30;

/// Exponent and log2 code of one lane (combinational).
#[derive(LogicBlock)]
pub struct LogExp<const B: usize, const X: usize, const TB: usize> {
    /// Row maximum.
    pub m: Signal<In, Bits<B>>,
    /// Input code.
    pub q: Signal<In, Bits<B>>,
    /// Upshift p.
    pub up: Signal<In, Bits<5>>,
    /// n·x0.
    pub lim: Signal<In, Bits<X>>,
    /// n (30).
    pub n: Signal<In, Bits<6>>,
    /// k·x0 for k = 1..=NQ, packed.
    pub thr: Signal<In, Bits<TB>>,
    /// b_int.
    pub b: Signal<In, Bits<32>>,
    /// c_int.
    pub c: Signal<In, Bits<32>>,
    /// Twice the row sum (for the output phase).
    pub s2: Signal<In, Bits<64>>,
    /// E, zero-extended for the row-sum adder.
    pub e56: Signal<Out, Bits<56>>,
    /// The log2 code (−1 = zero flag).
    pub code: Signal<Out, Bits<5>>,
    mx: SExt<B, X>,
    qx: SExt<B, X>,
    r32: SExt<X, 32>,
    rt: MulSlice<32, 32, 34, 0>,
    cx: SExt<32, 34>,
    zx: ZExt<33, 56>,
    ex: ZExt<56, 64>,
    clamp: SLe<X>,
    cmp: [SLe<X>; NQ],
    kval: [Constant<Bits<6>>; NQ],
    sh: [Constant<Bits<6>>; 16],
    jval: [Constant<Bits<5>>; 16],
    mask: [Constant<Bits<64>>; 16],
    teven: [Constant<Bit>; 16],
    sixteen: Constant<Bits<5>>,
    xw: Constant<Bits<8>>,
    zero: Constant<Bits<X>>,
    zero6: Constant<Bits<6>>,
    zero56: Constant<Bits<56>>,
    one6: Constant<Bits<6>>,
    zero5: Constant<Bits<5>>,
    minus1: Constant<Bits<5>>,
    x: Signal<Local, Bits<X>>,
    xc: Signal<Local, Bits<X>>,
    r: Signal<Local, Bits<X>>,
    qq: Signal<Local, Bits<6>>,
    z: Signal<Local, Bits<34>>,
    e: Signal<Local, Bits<56>>,
    e64: Signal<Local, Bits<64>>,
    e3: Signal<Local, Bits<64>>,
    p: Signal<Local, Bits<64>>,
    cnt_k: Signal<Local, Bits<5>>,
}

impl<const B: usize, const X: usize, const TB: usize> Default for LogExp<B, X, TB> {
    fn default() -> Self {
        assert_eq!(X * NQ, TB);
        Self {
            m: Default::default(),
            q: Default::default(),
            up: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            thr: Default::default(),
            b: Default::default(),
            c: Default::default(),
            s2: Default::default(),
            e56: Default::default(),
            code: Default::default(),
            mx: Default::default(),
            qx: Default::default(),
            r32: Default::default(),
            rt: Default::default(),
            cx: Default::default(),
            zx: Default::default(),
            ex: Default::default(),
            clamp: Default::default(),
            cmp: array_init::array_init(|_| Default::default()),
            kval: array_init::array_init(|k| Constant::new(((k + 1) as u64).to_bits())),
            sh: array_init::array_init(|j| Constant::new((j as u64).to_bits())),
            jval: array_init::array_init(|j| Constant::new(((j + 1) as u64).to_bits())),
            // (2t_j − 1)·E = (3E << (j−1)) − E, except t_1 = 2: 3E; t_j is even except t_2 = 3.
            mask: array_init::array_init(|j| Constant::new(if j == 0 { 0u64 } else { u64::MAX }.to_bits())),
            teven: array_init::array_init(|j| Constant::new(j != 1)),
            sixteen: Constant::new(16u64.to_bits()),
            xw: Constant::new((X as u64).to_bits()),
            zero: Constant::new(0u64.to_bits()),
            zero6: Constant::new(0u64.to_bits()),
            zero56: Constant::new(0u64.to_bits()),
            one6: Constant::new(1u64.to_bits()),
            zero5: Constant::new(0u64.to_bits()),
            minus1: Constant::new(31u64.to_bits()),
            x: Default::default(),
            xc: Default::default(),
            r: Default::default(),
            qq: Default::default(),
            z: Default::default(),
            e: Default::default(),
            e64: Default::default(),
            e3: Default::default(),
            p: Default::default(),
            cnt_k: Default::default(),
        }
    }
}

impl<const B: usize, const X: usize, const TB: usize> Logic for LogExp<B, X, TB> {
    #[hdl_gen]
    fn update(&mut self) {
        self.mx.a.next = self.m.val();
        self.qx.a.next = self.q.val();
        // x = −((m − q) << p) ≤ 0, clamped at 30·x0.
        self.x.next = self.zero.val() - ((self.mx.y.val() - self.qx.y.val()) << self.up.val());
        self.clamp.a.next = self.x.val();
        self.clamp.b.next = self.lim.val();
        if self.clamp.y.val() {
            self.xc.next = self.lim.val();
        } else {
            self.xc.next = self.x.val();
        }
        // qq = ⌊xc/x0⌋: the largest k with xc ≤ k·x0; r = xc − qq·x0.
        self.qq.next = self.zero6.val();
        self.r.next = self.xc.val();
        for k in 0..NQ {
            self.cmp[k].a.next = self.xc.val();
            self.cmp[k].b.next = self.thr.val().get_bits::<X>(k * self.xw.val().index());
            if self.cmp[k].y.val() {
                self.qq.next = self.kval[k].val();
                self.r.next = self.xc.val() - self.thr.val().get_bits::<X>(k * self.xw.val().index());
            }
        }
        // E = max(r·(r + b) + c, 0) << (n − qq)
        self.r32.a.next = self.r.val();
        self.rt.a.next = self.r32.y.val();
        self.rt.b.next = self.r32.y.val() + self.b.val();
        self.cx.a.next = self.c.val();
        self.z.next = self.rt.y.val() + self.cx.y.val();
        self.zx.a.next = self.z.val().get_bits::<33>(0);
        if self.z.val().get_bit(33) {
            self.e.next = self.zero56.val();
        } else {
            self.e.next = self.zx.y.val() << (self.n.val() - self.qq.val());
        }
        self.e56.next = self.e.val();
        self.ex.a.next = self.e.val();
        self.e64.next = self.ex.y.val();
        // Code: the number of j with (2t_j − 1)·E < 2S, or equal with t_j even.
        self.e3.next = self.e64.val() + (self.e64.val() << self.one6.val());
        self.cnt_k.next = self.zero5.val();
        for j in 0..16 {
            self.p.next = (self.e3.val() << self.sh[j].val()) - (self.e64.val() & self.mask[j].val());
            if (self.p.val() < self.s2.val()) | ((self.p.val() == self.s2.val()) & self.teven[j].val()) {
                self.cnt_k.next = self.jval[j].val();
            }
        }
        // k = 16: RNE(S/E) ≥ 1.5·2^15, below the smallest code: the zero flag, like E = 0.
        if (self.e.val() == self.zero56.val()) | (self.cnt_k.val() == self.sixteen.val()) {
            self.code.next = self.minus1.val();
        } else {
            self.code.next = self.cnt_k.val();
        }
    }
}

/// The streaming unit.
#[derive(LogicBlock)]
pub struct SoftmaxFqvit<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize>
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
    /// LANES log2 codes, 5 bits two's complement each (k means 2^−k; −1 is zero).
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    row: RowBuffer<B, L, DW, AW>,
    exps: [LogExp<B, X, TB>; L],
    tpack: Pack<NQ, X, TB>,
    pack: Pack<L, 5, ODW>,
    thr_addr: [Constant<Bits<6>>; NQ],
    width: Constant<Bits<8>>,
    ph_load: Constant<Bits<2>>,
    ph_sum: Constant<Bits<2>>,
    ph_out: Constant<Bits<2>>,
    one11: Constant<Bits<11>>,
    zero11: Constant<Bits<11>>,
    zero56: Constant<Bits<56>>,

    one5: Constant<Bits<5>>,
    zero5: Constant<Bits<5>>,
    minus1: Constant<Bits<5>>,
    up: DFF<Bits<5>>,
    lim: DFF<Bits<X>>,
    n: DFF<Bits<6>>,
    b: DFF<Bits<32>>,
    c: DFF<Bits<32>>,

    nbeats: DFF<Bits<11>>,
    lastn: DFF<Bits<5>>,
    thr: [DFF<Bits<X>>; NQ],
    phase: DFF<Bits<2>>,
    wptr: DFF<Bits<11>>,
    rptr: DFF<Bits<11>>,
    raddr: DFF<Bits<AW>>,
    rvalid: DFF<Bit>,
    rdi: DFF<Bits<11>>,
    sum: DFF<Bits<56>>,
    s2: DFF<Bits<64>>,
    ov: DFF<Bit>,
    olast: DFF<Bit>,
    odata: [DFF<Bits<5>>; L],
    issue: Signal<Local, Bit>,
    free: Signal<Local, Bit>,
    consume: Signal<Local, Bit>,
    wlast: Signal<Local, Bit>,
    rlast: Signal<Local, Bit>,
    esum: Signal<Local, Bits<56>>,
    nsum: Signal<Local, Bits<56>>,
    sx: ZExt<56, 64>,
}

impl<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize> Default
    for SoftmaxFqvit<B, L, DW, X, TB, AW, ODW>
{
    fn default() -> Self {
        assert_eq!(B * L, DW);
        assert_eq!(5 * L, ODW);
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
            pack: Default::default(),
            thr_addr: array_init::array_init(|k| Constant::new((32 + k as u64).to_bits())),
            width: Constant::new((B as u64).to_bits()),
            ph_load: Constant::new(0u64.to_bits()),
            ph_sum: Constant::new(1u64.to_bits()),
            ph_out: Constant::new(3u64.to_bits()),
            one11: Constant::new(1u64.to_bits()),
            zero11: Constant::new(0u64.to_bits()),
            zero56: Constant::new(0u64.to_bits()),

            one5: Constant::new(1u64.to_bits()),
            zero5: Constant::new(0u64.to_bits()),
            minus1: Constant::new(31u64.to_bits()),
            up: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            b: Default::default(),
            c: Default::default(),

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
            s2: Default::default(),
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
            sx: Default::default(),
        }
    }
}

impl<const B: usize, const L: usize, const DW: usize, const X: usize, const TB: usize, const AW: usize, const ODW: usize> Logic
    for SoftmaxFqvit<B, L, DW, X, TB, AW, ODW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, up, lim, n, b, c, nbeats, lastn, phase, wptr, rptr, raddr, rvalid, rdi, sum, s2, ov, olast);
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
                2 => self.lim.d.next = self.cfg_data.val().get_bits::<X>(0),
                3 => self.n.d.next = self.cfg_data.val().get_bits::<6>(0),
                5 => self.nbeats.d.next = self.cfg_data.val().get_bits::<11>(0),
                6 => self.lastn.d.next = self.cfg_data.val().get_bits::<5>(0),
                7 => self.b.d.next = self.cfg_data.val(),
                8 => self.c.d.next = self.cfg_data.val(),

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
            self.exps[i].lim.next = self.lim.q.val();
            self.exps[i].n.next = self.n.q.val();
            self.exps[i].b.next = self.b.q.val();
            self.exps[i].c.next = self.c.q.val();
            self.exps[i].s2.next = self.s2.q.val();
            self.exps[i].thr.next = self.tpack.data.val();
            self.pack.lane[i].next = self.odata[i].q.val();
        }
        self.out_data.next = self.pack.data.val();
        // Sum of the live (valid, unmasked) lanes' exponents of the word read last cycle.
        self.esum.next = self.zero56.val();
        for i in 0..L {
            if self.row.rlive[i].val() {
                self.esum.next = self.esum.val() + self.exps[i].e56.val();
            }
        }
        self.nsum.next = self.sum.q.val() + self.esum.val();
        self.sx.a.next = self.nsum.val();
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
                    self.sum.d.next = self.zero56.val();
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
                    // No divider: the output stage compares against 2S directly.
                    self.phase.d.next = self.ph_out.val();
                    self.s2.d.next = self.sx.y.val() << self.one5.val();
                    self.rptr.d.next = self.zero11.val();
                    self.rvalid.d.next = false;
                }
            }
        } else {
            if self.issue.val() {
                self.rptr.d.next = self.rptr.q.val() + self.one11.val();
                self.rdi.d.next = self.rptr.q.val();
            }
            self.rvalid.d.next = self.issue.val() | (self.rvalid.q.val() & !self.free.val());
            if self.rvalid.q.val() & self.free.val() {
                for i in 0..L {
                    // A masked lane has probability zero: the zero flag, as for E = 0; padding gives 0.
                    if self.row.rlive[i].val() {
                        self.odata[i].d.next = self.exps[i].code.val();
                    } else if self.row.rlane[i].val() {
                        self.odata[i].d.next = self.minus1.val();
                    } else {
                        self.odata[i].d.next = self.zero5.val();
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
