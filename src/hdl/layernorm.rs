//! The row-buffer LayerNorm shared by `layernorm_ivit` and `layernorm_ibert` as rust_hdl blocks:
//! the core (row RAM, per-channel bias RAMs, one shared restoring divider for the mean and the
//! factor, the variance and output lanes) and the two square-root engines, register for register
//! the cycle model `cycle::layernorm` (its module comment draws the phases and gives the latency
//! and row-period formulas). Each unit's top (`layernorm_ivit.rs`, `layernorm_ibert.rs`) joins
//! the core to its engine: rust_hdl cannot make a block generic over a sub-block's ports, so the
//! engine sits beside the core, not inside it.
//!
//! Widths for B-bit inputs: y = q − mean Y = B+1 bits, y² YY = 2B+2, the variance W = 2B+10
//! (W1 = W+1 for the divider's partial remainder), the row sum SW = B+11, outputs O = B+32.

use super::prims::{Asr, MulSlice, Pack, Resize, SExt, SMul, ZExt};
use rust_hdl::prelude::*;
use rust_hdl::widgets::prelude::RAM;

/// I-ViT's Newton square root: S steps `k = max((k + ⌊V/k⌋) >> 1, 1)`, each a W-cycle
/// restoring division; the start is the configured value or `2^⌈bitlen(V)/2⌉` (a priority
/// encoder) when that is 0. Registers 10 (steps, 5 bits) and 11 (start, 32 bits).
#[derive(LogicBlock)]
pub struct NewtonSqrt<const W: usize, const W1: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (stops, clears done).
    pub reset: Signal<In, Bit>,
    /// Start: load the variance and begin.
    pub go: Signal<In, Bit>,
    /// The variance V.
    pub vin: Signal<In, Bits<W>>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration register address.
    pub cfg_addr: Signal<In, Bits<12>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// The root is ready (until the next start).
    pub done: Signal<Out, Bit>,
    /// std = k.
    pub root: Signal<Out, Bits<W>>,
    startw: Resize<32, W>,
    kres: Resize<W1, W>,
    kx: ZExt<W, W1>,
    qx: ZExt<W, W1>,
    blc: [Constant<Bits<6>>; W],
    topbit: Constant<Bits<W>>,
    wlast: Constant<Bits<6>>,
    one_w: Constant<Bits<W>>,
    zero_w: Constant<Bits<W>>,
    one_w1: Constant<Bits<W1>>,
    zero_w1: Constant<Bits<W1>>,
    one6: Constant<Bits<6>>,
    zero6: Constant<Bits<6>>,
    one5: Constant<Bits<5>>,
    zero5: Constant<Bits<5>>,
    steps: DFF<Bits<5>>,
    start: DFF<Bits<32>>,
    varl: DFF<Bits<W>>,
    k: DFF<Bits<W>>,
    sh: DFF<Bits<W>>,
    rem: DFF<Bits<W1>>,
    quo: DFF<Bits<W>>,
    cnt: DFF<Bits<6>>,
    step: DFF<Bits<5>>,
    busy: DFF<Bit>,
    dn: DFF<Bit>,
    bl: Signal<Local, Bits<6>>,
    k0: Signal<Local, Bits<W>>,
    rr: Signal<Local, Bits<W1>>,
    remn: Signal<Local, Bits<W1>>,
    qn: Signal<Local, Bits<W>>,
    ksum: Signal<Local, Bits<W1>>,
    knew: Signal<Local, Bits<W>>,
}

impl<const W: usize, const W1: usize> Default for NewtonSqrt<W, W1> {
    fn default() -> Self {
        assert_eq!(W + 1, W1);
        Self {
            clock: Default::default(),
            reset: Default::default(),
            go: Default::default(),
            vin: Default::default(),
            cfg_we: Default::default(),
            cfg_addr: Default::default(),
            cfg_data: Default::default(),
            done: Default::default(),
            root: Default::default(),
            startw: Default::default(),
            kres: Default::default(),
            kx: Default::default(),
            qx: Default::default(),
            blc: array_init::array_init(|i| Constant::new(((i + 1) as u64).to_bits())),
            topbit: Constant::new((1u64 << (W - 1)).to_bits()),
            wlast: Constant::new(((W - 1) as u64).to_bits()),
            one_w: Constant::new(1u64.to_bits()),
            zero_w: Constant::new(0u64.to_bits()),
            one_w1: Constant::new(1u64.to_bits()),
            zero_w1: Constant::new(0u64.to_bits()),
            one6: Constant::new(1u64.to_bits()),
            zero6: Constant::new(0u64.to_bits()),
            one5: Constant::new(1u64.to_bits()),
            zero5: Constant::new(0u64.to_bits()),
            steps: Default::default(),
            start: Default::default(),
            varl: Default::default(),
            k: Default::default(),
            sh: Default::default(),
            rem: Default::default(),
            quo: Default::default(),
            cnt: Default::default(),
            step: Default::default(),
            busy: Default::default(),
            dn: Default::default(),
            bl: Default::default(),
            k0: Default::default(),
            rr: Default::default(),
            remn: Default::default(),
            qn: Default::default(),
            ksum: Default::default(),
            knew: Default::default(),
        }
    }
}

impl<const W: usize, const W1: usize> Logic for NewtonSqrt<W, W1> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, steps, start, varl, k, sh, rem, quo, cnt, step, busy, dn);
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                10 => self.steps.d.next = self.cfg_data.val().get_bits::<5>(0),
                11 => self.start.d.next = self.cfg_data.val(),
                _ => {}
            }
        }
        self.done.next = self.dn.q.val();
        self.root.next = self.k.q.val();
        // Start value: 2^⌈bitlen(V)/2⌉ from the highest set bit, or the configured start.
        self.bl.next = self.zero6.val();
        for i in 0..W {
            if self.vin.val().get_bit(i) {
                self.bl.next = self.blc[i].val();
            }
        }
        self.k0.next = self.one_w.val() << ((self.bl.val() + self.one6.val()) >> self.one6.val());
        self.startw.a.next = self.start.q.val();
        // One quotient bit of ⌊V/k⌋: V's bits MSB first from the shift register.
        if self.sh.q.val() >= self.topbit.val() {
            self.rr.next = (self.rem.q.val() << self.one6.val()) + self.one_w1.val();
        } else {
            self.rr.next = self.rem.q.val() << self.one6.val();
        }
        self.kx.a.next = self.k.q.val();
        if self.rr.val() >= self.kx.y.val() {
            self.remn.next = self.rr.val() - self.kx.y.val();
            self.qn.next = (self.quo.q.val() << self.one6.val()) + self.one_w.val();
        } else {
            self.remn.next = self.rr.val();
            self.qn.next = self.quo.q.val() << self.one6.val();
        }
        self.qx.a.next = self.qn.val();
        self.ksum.next = self.kx.y.val() + self.qx.y.val();
        self.kres.a.next = self.ksum.val() >> self.one6.val();
        self.knew.next = self.kres.y.val();
        if self.knew.val() == self.zero_w.val() {
            self.knew.next = self.one_w.val();
        }
        if self.reset.val() {
            self.busy.d.next = false;
            self.dn.d.next = false;
        } else if self.go.val() {
            self.varl.d.next = self.vin.val();
            if self.startw.y.val() == self.zero_w.val() {
                self.k.d.next = self.k0.val();
            } else {
                self.k.d.next = self.startw.y.val();
            }
            self.sh.d.next = self.vin.val();
            self.rem.d.next = self.zero_w1.val();
            self.quo.d.next = self.zero_w.val();
            self.cnt.d.next = self.zero6.val();
            self.step.d.next = self.zero5.val();
            self.busy.d.next = self.steps.q.val() != self.zero5.val();
            self.dn.d.next = self.steps.q.val() == self.zero5.val();
        } else if self.busy.q.val() {
            self.rem.d.next = self.remn.val();
            self.sh.d.next = self.sh.q.val() << self.one6.val();
            if self.cnt.q.val() == self.wlast.val() {
                self.k.d.next = self.knew.val();
                self.sh.d.next = self.varl.q.val();
                self.rem.d.next = self.zero_w1.val();
                self.quo.d.next = self.zero_w.val();
                self.cnt.d.next = self.zero6.val();
                self.step.d.next = self.step.q.val() + self.one5.val();
                if (self.step.q.val() + self.one5.val()) == self.steps.q.val() {
                    self.busy.d.next = false;
                    self.dn.d.next = true;
                }
            } else {
                self.quo.d.next = self.qn.val();
                self.cnt.d.next = self.cnt.q.val() + self.one6.val();
            }
        }
    }
}

/// I-BERT's integer square root ⌊√V⌋, digit by digit: two radicand bits a cycle, H = W/2
/// cycles; H2 = H + 3 bits hold the partial remainder.
#[derive(LogicBlock)]
pub struct DigitSqrt<const W: usize, const H: usize, const H2: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (stops, clears done).
    pub reset: Signal<In, Bit>,
    /// Start: load the variance and begin.
    pub go: Signal<In, Bit>,
    /// The variance V.
    pub vin: Signal<In, Bits<W>>,
    /// The root is ready (until the next start).
    pub done: Signal<Out, Bit>,
    /// ⌊√V⌋, zero-extended.
    pub root: Signal<Out, Bits<W>>,
    two: Resize<W, H2>,
    rootx: ZExt<H, H2>,
    rooto: ZExt<H, W>,
    top2: Constant<Bits<8>>,
    hlast: Constant<Bits<6>>,
    sh2: Constant<Bits<2>>,
    one1: Constant<Bits<2>>,
    one_h: Constant<Bits<H>>,
    zero_h: Constant<Bits<H>>,
    one_h2: Constant<Bits<H2>>,
    zero_h2: Constant<Bits<H2>>,
    one6: Constant<Bits<6>>,
    zero6: Constant<Bits<6>>,
    sh: DFF<Bits<W>>,
    rem: DFF<Bits<H2>>,
    rt: DFF<Bits<H>>,
    cnt: DFF<Bits<6>>,
    busy: DFF<Bit>,
    dn: DFF<Bit>,
    rr: Signal<Local, Bits<H2>>,
    trial: Signal<Local, Bits<H2>>,
}

impl<const W: usize, const H: usize, const H2: usize> Default for DigitSqrt<W, H, H2> {
    fn default() -> Self {
        assert_eq!(2 * H, W);
        assert_eq!(H + 3, H2);
        Self {
            clock: Default::default(),
            reset: Default::default(),
            go: Default::default(),
            vin: Default::default(),
            done: Default::default(),
            root: Default::default(),
            two: Default::default(),
            rootx: Default::default(),
            rooto: Default::default(),
            top2: Constant::new(((W - 2) as u64).to_bits()),
            hlast: Constant::new(((H - 1) as u64).to_bits()),
            sh2: Constant::new(2u64.to_bits()),
            one1: Constant::new(1u64.to_bits()),
            one_h: Constant::new(1u64.to_bits()),
            zero_h: Constant::new(0u64.to_bits()),
            one_h2: Constant::new(1u64.to_bits()),
            zero_h2: Constant::new(0u64.to_bits()),
            one6: Constant::new(1u64.to_bits()),
            zero6: Constant::new(0u64.to_bits()),
            sh: Default::default(),
            rem: Default::default(),
            rt: Default::default(),
            cnt: Default::default(),
            busy: Default::default(),
            dn: Default::default(),
            rr: Default::default(),
            trial: Default::default(),
        }
    }
}

impl<const W: usize, const H: usize, const H2: usize> Logic for DigitSqrt<W, H, H2> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, sh, rem, rt, cnt, busy, dn);
        self.two.a.next = self.sh.q.val() >> self.top2.val();
        self.rr.next = (self.rem.q.val() << self.sh2.val()) + self.two.y.val();
        self.rootx.a.next = self.rt.q.val();
        self.trial.next = (self.rootx.y.val() << self.sh2.val()) + self.one_h2.val();
        self.rooto.a.next = self.rt.q.val();
        self.root.next = self.rooto.y.val();
        self.done.next = self.dn.q.val();
        if self.reset.val() {
            self.busy.d.next = false;
            self.dn.d.next = false;
        } else if self.go.val() {
            self.sh.d.next = self.vin.val();
            self.rem.d.next = self.zero_h2.val();
            self.rt.d.next = self.zero_h.val();
            self.cnt.d.next = self.zero6.val();
            self.busy.d.next = true;
            self.dn.d.next = false;
        } else if self.busy.q.val() {
            if self.rr.val() >= self.trial.val() {
                self.rem.d.next = self.rr.val() - self.trial.val();
                self.rt.d.next = (self.rt.q.val() << self.one1.val()) + self.one_h.val();
            } else {
                self.rem.d.next = self.rr.val();
                self.rt.d.next = self.rt.q.val() << self.one1.val();
            }
            self.sh.d.next = self.sh.q.val() << self.sh2.val();
            self.cnt.d.next = self.cnt.q.val() + self.one6.val();
            if self.cnt.q.val() == self.hlast.val() {
                self.busy.d.next = false;
                self.dn.d.next = true;
            }
        }
    }
}

/// The LayerNorm core: stream ports, configuration, row RAM, bias RAMs, the shared divider and
/// the lanes; the square-root engine is reached through `sq_*`.
#[derive(LogicBlock)]
pub struct LnCore<
    const B: usize,
    const L: usize,
    const DW: usize,
    const Y: usize,
    const YY: usize,
    const W: usize,
    const W1: usize,
    const SW: usize,
    const O: usize,
    const ODW: usize,
    const AW: usize,
> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (back to LOAD, output emptied).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration address: registers below 64, bias_int[c] at 1024 + c.
    pub cfg_addr: Signal<In, Bits<12>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// High in LOAD.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs of O bits.
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    /// Start the square-root engine.
    pub sq_go: Signal<Out, Bit>,
    /// The row's variance.
    pub sq_var: Signal<Out, Bits<W>>,
    /// The engine's result is ready.
    pub sq_done: Signal<In, Bit>,
    /// The engine's result (std).
    pub sq_root: Signal<In, Bits<W>>,
    ram: RAM<Bits<DW>, AW>,
    bias: [RAM<Bits<32>, AW>; L],
    lx: [SExt<B, SW>; L],
    qy: [SExt<B, Y>; L],
    ya: [Asr<Y, 5>; L],
    sq: [SMul<Y, Y, YY>; L],
    sqx: [ZExt<YY, W>; L],
    prod: [MulSlice<Y, 33, O, 1>; L],
    bx: [SExt<32, O>; L],
    pack: Pack<L, O, ODW>,
    magx: ZExt<SW, 32>,
    rootx: ZExt<W, W1>,
    nx: ZExt<11, W1>,
    lane_no: [Constant<Bits<5>>; L],
    lane12: [Constant<Bits<12>>; L],
    lmask12: Constant<Bits<12>>,
    lm1: Constant<Bits<11>>,
    lm1_5: Constant<Bits<5>>,
    one5: Constant<Bits<5>>,
    lbsh: Constant<Bits<4>>,
    lbi: Constant<Bits<4>>,
    bsel: Constant<Bits<2>>,
    width: Constant<Bits<8>>,
    sw_half: Constant<Bits<SW>>,
    mshift: Constant<Bits<6>>,
    mlast: Constant<Bits<6>>,
    flast: Constant<Bits<6>>,
    d_half: Constant<Bits<32>>,
    ph_load: Constant<Bits<3>>,
    ph_mean: Constant<Bits<3>>,
    ph_var: Constant<Bits<3>>,
    ph_sqrt: Constant<Bits<3>>,
    ph_fact: Constant<Bits<3>>,
    ph_out: Constant<Bits<3>>,
    one11: Constant<Bits<11>>,
    zero11: Constant<Bits<11>>,
    one6: Constant<Bits<6>>,
    zero6: Constant<Bits<6>>,
    zero_sw: Constant<Bits<SW>>,
    zero_w: Constant<Bits<W>>,
    one_w1: Constant<Bits<W1>>,
    zero_w1: Constant<Bits<W1>>,
    one33: Constant<Bits<33>>,
    zero33: Constant<Bits<33>>,
    zero_o: Constant<Bits<O>>,
    one_y: Constant<Bits<Y>>,
    zero_y: Constant<Bits<Y>>,
    n: DFF<Bits<11>>,
    nbeats: DFF<Bits<11>>,
    lastn: DFF<Bits<5>>,
    shift: DFF<Bits<5>>,
    num: DFF<Bits<32>>,
    phase: DFF<Bits<3>>,
    wptr: DFF<Bits<11>>,
    sum: DFF<Bits<SW>>,
    rptr: DFF<Bits<11>>,
    raddr: DFF<Bits<AW>>,
    rvalid: DFF<Bit>,
    rdi: DFF<Bits<11>>,
    acc: DFF<Bits<W>>,
    mean: DFF<Bits<Y>>,
    neg: DFF<Bit>,
    dnum: DFF<Bits<32>>,
    dden: DFF<Bits<W1>>,
    drem: DFF<Bits<W1>>,
    dquo: DFF<Bits<33>>,
    dcnt: DFF<Bits<6>>,
    go: DFF<Bit>,
    factor: DFF<Bits<33>>,
    ov: DFF<Bit>,
    olast: DFF<Bit>,
    odata: [DFF<Bits<O>>; L],
    issue: Signal<Local, Bit>,
    free: Signal<Local, Bit>,
    consume: Signal<Local, Bit>,
    wlast: Signal<Local, Bit>,
    rlast: Signal<Local, Bit>,
    lsum: Signal<Local, Bits<SW>>,
    mag: Signal<Local, Bits<SW>>,
    esum: Signal<Local, Bits<W>>,
    rr: Signal<Local, Bits<W1>>,
    remn: Signal<Local, Bits<W1>>,
    qf: Signal<Local, Bits<33>>,
    up: Signal<Local, Bit>,
    magy: Signal<Local, Bits<Y>>,
    lm: Signal<Local, Bits<5>>,
}

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const Y: usize,
        const YY: usize,
        const W: usize,
        const W1: usize,
        const SW: usize,
        const O: usize,
        const ODW: usize,
        const AW: usize,
    > Default for LnCore<B, L, DW, Y, YY, W, W1, SW, O, ODW, AW>
{
    fn default() -> Self {
        assert_eq!(B * L, DW);
        assert_eq!((Y, YY, W, W1, SW, O), (B + 1, 2 * B + 2, 2 * B + 10, 2 * B + 11, B + 11, B + 32));
        assert_eq!(O * L, ODW);
        assert_eq!(1usize << AW, 1024 / L);
        let lb = L.trailing_zeros() as u64;
        let m = crate::cycle::layernorm::mean_len(B as u32) as u64;
        Self {
            clock: Default::default(),
            reset: Default::default(),
            cfg_we: Default::default(),
            cfg_addr: Default::default(),
            cfg_data: Default::default(),
            in_valid: Default::default(),
            in_ready: Default::default(),
            in_data: Default::default(),
            out_valid: Default::default(),
            out_ready: Default::default(),
            out_data: Default::default(),
            out_last: Default::default(),
            sq_go: Default::default(),
            sq_var: Default::default(),
            sq_done: Default::default(),
            sq_root: Default::default(),
            ram: Default::default(),
            bias: array_init::array_init(|_| Default::default()),
            lx: array_init::array_init(|_| Default::default()),
            qy: array_init::array_init(|_| Default::default()),
            ya: array_init::array_init(|_| Default::default()),
            sq: array_init::array_init(|_| Default::default()),
            sqx: array_init::array_init(|_| Default::default()),
            prod: array_init::array_init(|_| Default::default()),
            bx: array_init::array_init(|_| Default::default()),
            pack: Default::default(),
            magx: Default::default(),
            rootx: Default::default(),
            nx: Default::default(),
            lane_no: array_init::array_init(|i| Constant::new((i as u64).to_bits())),
            lane12: array_init::array_init(|i| Constant::new((i as u64).to_bits())),
            lmask12: Constant::new(((L - 1) as u64).to_bits()),
            lm1: Constant::new(((L - 1) as u64).to_bits()),
            lm1_5: Constant::new(((L - 1) as u64).to_bits()),
            one5: Constant::new(1u64.to_bits()),
            lbsh: Constant::new(lb.to_bits()),
            lbi: Constant::new(lb.to_bits()),
            bsel: Constant::new(1u64.to_bits()),
            width: Constant::new((B as u64).to_bits()),
            sw_half: Constant::new((1u64 << (SW - 1)).to_bits()),
            mshift: Constant::new((32 - m).to_bits()),
            mlast: Constant::new((m - 1).to_bits()),
            flast: Constant::new(u64::from(crate::cycle::layernorm::FACT_LEN - 1).to_bits()),
            d_half: Constant::new((1u64 << 31).to_bits()),
            ph_load: Constant::new(0u64.to_bits()),
            ph_mean: Constant::new(1u64.to_bits()),
            ph_var: Constant::new(2u64.to_bits()),
            ph_sqrt: Constant::new(3u64.to_bits()),
            ph_fact: Constant::new(4u64.to_bits()),
            ph_out: Constant::new(5u64.to_bits()),
            one11: Constant::new(1u64.to_bits()),
            zero11: Constant::new(0u64.to_bits()),
            one6: Constant::new(1u64.to_bits()),
            zero6: Constant::new(0u64.to_bits()),
            zero_sw: Constant::new(0u64.to_bits()),
            zero_w: Constant::new(0u64.to_bits()),
            one_w1: Constant::new(1u64.to_bits()),
            zero_w1: Constant::new(0u64.to_bits()),
            one33: Constant::new(1u64.to_bits()),
            zero33: Constant::new(0u64.to_bits()),
            zero_o: Constant::new(0u64.to_bits()),
            one_y: Constant::new(1u64.to_bits()),
            zero_y: Constant::new(0u64.to_bits()),
            n: Default::default(),
            nbeats: Default::default(),
            lastn: Default::default(),
            shift: Default::default(),
            num: Default::default(),
            phase: Default::default(),
            wptr: Default::default(),
            sum: Default::default(),
            rptr: Default::default(),
            raddr: Default::default(),
            rvalid: Default::default(),
            rdi: Default::default(),
            acc: Default::default(),
            mean: Default::default(),
            neg: Default::default(),
            dnum: Default::default(),
            dden: Default::default(),
            drem: Default::default(),
            dquo: Default::default(),
            dcnt: Default::default(),
            go: Default::default(),
            factor: Default::default(),
            ov: Default::default(),
            olast: Default::default(),
            odata: array_init::array_init(|_| Default::default()),
            issue: Default::default(),
            free: Default::default(),
            consume: Default::default(),
            wlast: Default::default(),
            rlast: Default::default(),
            lsum: Default::default(),
            mag: Default::default(),
            esum: Default::default(),
            rr: Default::default(),
            remn: Default::default(),
            qf: Default::default(),
            up: Default::default(),
            magy: Default::default(),
            lm: Default::default(),
        }
    }
}

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const Y: usize,
        const YY: usize,
        const W: usize,
        const W1: usize,
        const SW: usize,
        const O: usize,
        const ODW: usize,
        const AW: usize,
    > Logic for LnCore<B, L, DW, Y, YY, W, W1, SW, O, ODW, AW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(
            self, clock, n, nbeats, lastn, shift, num, phase, wptr, sum, rptr, raddr, rvalid, rdi, acc, mean, neg, dnum, dden, drem, dquo,
            dcnt, go, factor, ov, olast
        );
        for i in 0..L {
            self.odata[i].clock.next = self.clock.val();
            self.odata[i].d.next = self.odata[i].q.val();
        }
        // Configuration: the row length (beats per row and the last beat's lanes derived here),
        // the variance shift, the factor numerator, and the per-channel biases.
        self.lm.next = ((self.cfg_data.val().get_bits::<5>(0) - self.one5.val()) & self.lm1_5.val()) + self.one5.val();
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                7 => {
                    self.n.d.next = self.cfg_data.val().get_bits::<11>(0);
                    self.nbeats.d.next = (self.cfg_data.val().get_bits::<11>(0) + self.lm1.val()) >> self.lbsh.val();
                    self.lastn.d.next = self.lm.val();
                }
                8 => self.shift.d.next = self.cfg_data.val().get_bits::<5>(0),
                9 => self.num.d.next = self.cfg_data.val(),
                _ => {}
            }
        }
        self.in_ready.next = self.phase.q.val() == self.ph_load.val();
        self.out_valid.next = self.ov.q.val();
        self.out_last.next = self.olast.q.val();
        self.sq_go.next = self.go.q.val();
        self.sq_var.next = self.acc.q.val();
        self.consume.next = self.ov.q.val() & self.out_ready.val();
        self.free.next = !self.ov.q.val() | self.out_ready.val();
        self.issue.next = false;
        if self.rptr.q.val() < self.nbeats.q.val() {
            if self.phase.q.val() == self.ph_var.val() {
                self.issue.next = true;
            }
            if (self.phase.q.val() == self.ph_out.val()) & (!self.rvalid.q.val() | self.free.val()) {
                self.issue.next = true;
            }
        }
        // Row RAM and bias RAMs share the read address.
        self.ram.read_clock.next = self.clock.val();
        self.ram.write_clock.next = self.clock.val();
        if self.issue.val() {
            self.ram.read_address.next = self.rptr.q.val().get_bits::<AW>(0);
            self.raddr.d.next = self.rptr.q.val().get_bits::<AW>(0);
        } else {
            self.ram.read_address.next = self.raddr.q.val();
        }
        self.ram.write_address.next = self.wptr.q.val().get_bits::<AW>(0);
        self.ram.write_data.next = self.in_data.val();
        self.ram.write_enable.next = false;
        for i in 0..L {
            self.bias[i].read_clock.next = self.clock.val();
            self.bias[i].write_clock.next = self.clock.val();
            self.bias[i].read_address.next = self.ram.read_address.val();
            self.bias[i].write_address.next = self.cfg_addr.val().get_bits::<AW>(self.lbi.val().index());
            self.bias[i].write_data.next = self.cfg_data.val();
            self.bias[i].write_enable.next = self.cfg_we.val()
                & (self.cfg_addr.val().get_bits::<2>(10) == self.bsel.val())
                & ((self.cfg_addr.val() & self.lmask12.val()) == self.lane12[i].val());
        }
        self.wlast.next = (self.wptr.q.val() + self.one11.val()) == self.nbeats.q.val();
        self.rlast.next = (self.rdi.q.val() + self.one11.val()) == self.nbeats.q.val();
        // Lanes: the row sum from the input beat; y = q − mean, (y >>> shift)², y·factor from the read data.
        if self.wptr.q.val() == self.zero11.val() {
            self.lsum.next = self.zero_sw.val();
        } else {
            self.lsum.next = self.sum.q.val();
        }
        self.esum.next = self.zero_w.val();
        for i in 0..L {
            self.lx[i].a.next = self.in_data.val().get_bits::<B>(i * self.width.val().index());
            if !self.wlast.val() | (self.lane_no[i].val() < self.lastn.q.val()) {
                self.lsum.next = self.lsum.val() + self.lx[i].y.val();
            }
            self.qy[i].a.next = self.ram.read_data.val().get_bits::<B>(i * self.width.val().index());
            self.ya[i].a.next = self.qy[i].y.val() - self.mean.q.val();
            self.ya[i].s.next = self.shift.q.val();
            self.sq[i].a.next = self.ya[i].y.val();
            self.sq[i].b.next = self.ya[i].y.val();
            self.sqx[i].a.next = self.sq[i].p.val();
            if !self.rlast.val() | (self.lane_no[i].val() < self.lastn.q.val()) {
                self.esum.next = self.esum.val() + self.sqx[i].y.val();
            }
            self.prod[i].a.next = self.qy[i].y.val() - self.mean.q.val();
            self.prod[i].b.next = self.factor.q.val();
            self.bx[i].a.next = self.bias[i].read_data.val();
            self.pack.lane[i].next = self.odata[i].q.val();
        }
        self.out_data.next = self.pack.data.val();
        if self.lsum.val() >= self.sw_half.val() {
            self.mag.next = self.zero_sw.val() - self.lsum.val();
        } else {
            self.mag.next = self.lsum.val();
        }
        self.magx.a.next = self.mag.val();
        // The shared restoring divider: one quotient bit a cycle, numerator MSB first.
        if self.dnum.q.val() >= self.d_half.val() {
            self.rr.next = (self.drem.q.val() << self.one6.val()) + self.one_w1.val();
        } else {
            self.rr.next = self.drem.q.val() << self.one6.val();
        }
        if self.rr.val() >= self.dden.q.val() {
            self.remn.next = self.rr.val() - self.dden.q.val();
            self.qf.next = (self.dquo.q.val() << self.one6.val()) + self.one33.val();
        } else {
            self.remn.next = self.rr.val();
            self.qf.next = self.dquo.q.val() << self.one6.val();
        }
        // Round half to even: 2r > N, or 2r = N with an odd quotient.
        self.up.next = ((self.remn.val() << self.one6.val()) > self.dden.q.val())
            | (((self.remn.val() << self.one6.val()) == self.dden.q.val()) & self.qf.val().get_bit(0));
        if self.up.val() {
            self.magy.next = self.qf.val().get_bits::<Y>(0) + self.one_y.val();
        } else {
            self.magy.next = self.qf.val().get_bits::<Y>(0);
        }
        self.rootx.a.next = self.sq_root.val();
        self.nx.a.next = self.n.q.val();
        if self.reset.val() {
            self.phase.d.next = self.ph_load.val();
            self.wptr.d.next = self.zero11.val();
            self.ov.d.next = false;
            self.rvalid.d.next = false;
            self.go.d.next = false;
        } else if self.phase.q.val() == self.ph_load.val() {
            if self.in_valid.val() {
                self.ram.write_enable.next = true;
                self.sum.d.next = self.lsum.val();
                self.wptr.d.next = self.wptr.q.val() + self.one11.val();
                if self.wlast.val() {
                    self.phase.d.next = self.ph_mean.val();
                    self.neg.d.next = self.lsum.val() >= self.sw_half.val();
                    self.dnum.d.next = self.magx.y.val() << self.mshift.val();
                    self.dden.d.next = self.nx.y.val();
                    self.drem.d.next = self.zero_w1.val();
                    self.dquo.d.next = self.zero33.val();
                    self.dcnt.d.next = self.zero6.val();
                }
            }
        } else if self.phase.q.val() == self.ph_mean.val() {
            self.drem.d.next = self.remn.val();
            self.dquo.d.next = self.qf.val();
            self.dnum.d.next = self.dnum.q.val() << self.one6.val();
            self.dcnt.d.next = self.dcnt.q.val() + self.one6.val();
            if self.dcnt.q.val() == self.mlast.val() {
                if self.neg.q.val() {
                    self.mean.d.next = self.zero_y.val() - self.magy.val();
                } else {
                    self.mean.d.next = self.magy.val();
                }
                self.phase.d.next = self.ph_var.val();
                self.rptr.d.next = self.zero11.val();
                self.rvalid.d.next = false;
                self.acc.d.next = self.zero_w.val();
            }
        } else if self.phase.q.val() == self.ph_var.val() {
            if self.issue.val() {
                self.rptr.d.next = self.rptr.q.val() + self.one11.val();
                self.rdi.d.next = self.rptr.q.val();
            }
            self.rvalid.d.next = self.issue.val();
            if self.rvalid.q.val() {
                self.acc.d.next = self.acc.q.val() + self.esum.val();
                if self.rlast.val() {
                    self.phase.d.next = self.ph_sqrt.val();
                    self.go.d.next = true;
                }
            }
        } else if self.phase.q.val() == self.ph_sqrt.val() {
            self.go.d.next = false;
            if !self.go.q.val() & self.sq_done.val() {
                self.phase.d.next = self.ph_fact.val();
                self.dnum.d.next = self.num.q.val();
                self.dden.d.next = self.rootx.y.val();
                self.drem.d.next = self.zero_w1.val();
                self.dquo.d.next = self.zero33.val();
                self.dcnt.d.next = self.zero6.val();
            }
        } else if self.phase.q.val() == self.ph_fact.val() {
            self.drem.d.next = self.remn.val();
            self.dquo.d.next = self.qf.val();
            self.dnum.d.next = self.dnum.q.val() << self.one6.val();
            self.dcnt.d.next = self.dcnt.q.val() + self.one6.val();
            if self.dcnt.q.val() == self.flast.val() {
                // A zero std (I-BERT, zero variance) gives factor 0: the output is the bias.
                if self.dden.q.val() == self.zero_w1.val() {
                    self.factor.d.next = self.zero33.val();
                } else {
                    self.factor.d.next = self.qf.val();
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
                    if !self.rlast.val() | (self.lane_no[i].val() < self.lastn.q.val()) {
                        self.odata[i].d.next = self.prod[i].y.val() + self.bx[i].y.val();
                    } else {
                        self.odata[i].d.next = self.zero_o.val();
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
