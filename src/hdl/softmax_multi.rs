//! `softmax_multi_<methods>`: one streaming softmax that computes I-BERT's, FQ-ViT's or
//! I-ViT's softmax, chosen per row, register for register the cycle model
//! `cycle::softmax::RowSoftmax<AnyKernel>` (built by `cycle::softmax::multi`).
//!
//! The row is computed in the mode `in_mode` carries with its first beat (0 I-BERT, 1 FQ-ViT,
//! 2 I-ViT; a code outside the generated subset runs the subset's first method); rows of
//! different modes follow each other with no gap. Each method has its own configuration bank
//! (`Bank` and `CfgReg`s: its single-method unit's registers, at `code·64 + address`), so
//! switching needs no reconfiguration.
//!
//! Shared by every mode: the row buffer (`softmax_row::RowBuffer`: row RAM, mask RAM, lane
//! validity, running maximum), the phase machine, the row-sum accumulator (56 bits, FQ-ViT's
//! width), one restoring divider (34 bits: I-BERT's 2^32 in 33 steps, I-ViT's 2^31 − 1 in 31),
//! one multiplier per lane (E·factor; I-ViT takes bits 16..32, I-BERT bits 24..34 of the same
//! product) and the output register. Not shared: each method's exponent (`ShiftExp`,
//! `PolyExp`, `LogExp`, the single-method blocks' own), each with its own comparators against
//! its bank's thresholds, and LIS's code comparisons, which need no multiplier.
//!
//! A subset is the const generics: `NP`, `NF`, `NS` (lanes of I-BERT, FQ-ViT, I-ViT exponents:
//! 0 or L) and `NPB`, `NFB`, `NSB` (their banks: 0 or 1). A method's loops run over its own
//! arrays, so an absent method leaves no logic and no unused signal in the Verilog.

use super::prims::{MulSlice, Pack, Resize, SExt, Slice, ZExt};
use super::softmax_fqvit::LogExp;
use super::softmax_ibert::PolyExp;
use super::softmax_ivit::ShiftExp;
use super::softmax_row::RowBuffer;
use rust_hdl::prelude::*;

/// One configuration register of W bits at a fixed address of its bank (the low W bits of the value).
#[derive(LogicBlock)]
pub struct CfgReg<const W: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Write this bank.
    pub we: Signal<In, Bit>,
    /// Address within the bank.
    pub addr: Signal<In, Bits<6>>,
    /// Value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// The register.
    pub q: Signal<Out, Bits<W>>,
    at: Constant<Bits<6>>,
    r: DFF<Bits<W>>,
}

impl<const W: usize> CfgReg<W> {
    /// A register at address `at`.
    pub fn new(at: u64) -> Self {
        Self {
            clock: Default::default(),
            we: Default::default(),
            addr: Default::default(),
            cfg_data: Default::default(),
            q: Default::default(),
            at: Constant::new(at.to_bits()),
            r: Default::default(),
        }
    }
}

impl<const W: usize> Logic for CfgReg<W> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, r);
        if self.we.val() & (self.addr.val() == self.at.val()) {
            self.r.d.next = self.cfg_data.val().get_bits::<W>(0);
        }
        self.q.next = self.r.q.val();
    }
}

/// One method's common configuration registers, those of `cycle::softmax::Common`: 0 up,
/// 2 lim, 3 n (NW bits), 5 beats per row, 6 valid lanes of the last beat, 32 + k − 1 the
/// thresholds k·x0 (k = 1..=NQ). The kernel's own registers are [`CfgReg`]s beside it.
#[derive(LogicBlock)]
pub struct Bank<const X: usize, const TB: usize, const NQ: usize, const NW: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Write this bank.
    pub we: Signal<In, Bit>,
    /// Address within the bank.
    pub addr: Signal<In, Bits<6>>,
    /// Value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Upshift p.
    pub up: Signal<Out, Bits<5>>,
    /// n·x0.
    pub lim: Signal<Out, Bits<X>>,
    /// n.
    pub n: Signal<Out, Bits<NW>>,
    /// Beats per row.
    pub nbeats: Signal<Out, Bits<11>>,
    /// Valid lanes of the last beat.
    pub lastn: Signal<Out, Bits<5>>,
    /// k·x0 for k = 1..=NQ, packed.
    pub thr: Signal<Out, Bits<TB>>,
    thr_addr: [Constant<Bits<6>>; NQ],
    tpack: Pack<NQ, X, TB>,
    r_up: DFF<Bits<5>>,
    r_lim: DFF<Bits<X>>,
    r_n: DFF<Bits<NW>>,
    r_nbeats: DFF<Bits<11>>,
    r_lastn: DFF<Bits<5>>,
    r_thr: [DFF<Bits<X>>; NQ],
}

impl<const X: usize, const TB: usize, const NQ: usize, const NW: usize> Default for Bank<X, TB, NQ, NW> {
    fn default() -> Self {
        Self {
            clock: Default::default(),
            we: Default::default(),
            addr: Default::default(),
            cfg_data: Default::default(),
            up: Default::default(),
            lim: Default::default(),
            n: Default::default(),
            nbeats: Default::default(),
            lastn: Default::default(),
            thr: Default::default(),
            thr_addr: array_init::array_init(|k| Constant::new((32 + k as u64).to_bits())),
            tpack: Default::default(),
            r_up: Default::default(),
            r_lim: Default::default(),
            r_n: Default::default(),
            r_nbeats: Default::default(),
            r_lastn: Default::default(),
            r_thr: array_init::array_init(|_| Default::default()),
        }
    }
}

impl<const X: usize, const TB: usize, const NQ: usize, const NW: usize> Logic for Bank<X, TB, NQ, NW> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, r_up, r_lim, r_n, r_nbeats, r_lastn);
        for k in 0..NQ {
            self.r_thr[k].clock.next = self.clock.val();
            self.r_thr[k].d.next = self.r_thr[k].q.val();
            if self.we.val() & (self.addr.val() == self.thr_addr[k].val()) {
                self.r_thr[k].d.next = self.cfg_data.val().get_bits::<X>(0);
            }
            self.tpack.lane[k].next = self.r_thr[k].q.val();
        }
        if self.we.val() {
            match self.addr.val().index() {
                0 => self.r_up.d.next = self.cfg_data.val().get_bits::<5>(0),
                2 => self.r_lim.d.next = self.cfg_data.val().get_bits::<X>(0),
                3 => self.r_n.d.next = self.cfg_data.val().get_bits::<NW>(0),
                5 => self.r_nbeats.d.next = self.cfg_data.val().get_bits::<11>(0),
                6 => self.r_lastn.d.next = self.cfg_data.val().get_bits::<5>(0),
                _ => {}
            }
        }
        self.up.next = self.r_up.q.val();
        self.lim.next = self.r_lim.q.val();
        self.n.next = self.r_n.q.val();
        self.nbeats.next = self.r_nbeats.q.val();
        self.lastn.next = self.r_lastn.q.val();
        self.thr.next = self.tpack.data.val();
    }
}

/// I-BERT's and FQ-ViT's common registers (30 thresholds, 6-bit n); I-BERT adds b_int, c_int,
/// m16, e16, top at 7..=11 and FQ-ViT b_int, c_int at 7, 8 (as `softmax_ibert`, `softmax_fqvit`).
pub type PolyBank<const X: usize, const TB: usize> = Bank<X, TB, 30, 6>;
/// I-ViT's common registers (15 thresholds, 5-bit n); x0 at 1 beside them (as `softmax_ivit`).
pub type IvitBank<const X: usize, const TB: usize> = Bank<X, TB, 15, 5>;

/// The streaming unit (see the module comment for the generics of a subset).
#[derive(LogicBlock)]
pub struct SoftmaxMulti<
    const B: usize,
    const L: usize,
    const DW: usize,
    const X: usize,
    const TBP: usize,
    const TBS: usize,
    const AW: usize,
    const OB: usize,
    const ODW: usize,
    const NP: usize,
    const NF: usize,
    const NS: usize,
    const NPB: usize,
    const NFB: usize,
    const NSB: usize,
    const MA: usize,
    const MO: usize,
    const MS: usize,
    const PO: usize,
> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (back to LOAD, output emptied).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration register address: bits 7:6 the method's code, 5:0 its unit's address.
    pub cfg_addr: Signal<In, Bits<8>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// High in LOAD.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Mask flags of the beat, bit i for lane i (1 = masked).
    pub in_mask: Signal<In, Bits<L>>,
    /// Mode of the row, read with its first beat: 0 I-BERT, 1 FQ-ViT, 2 I-ViT.
    pub in_mode: Signal<In, Bits<2>>,
    /// Last beat of a row (the row length is configured per bank; `last` must agree with it).
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs of OB bits: I-ViT's 16-bit probabilities, I-BERT's 9-bit ones
    /// (zero-extended), LIS's 5-bit codes (sign-extended: −1 is the zero flag).
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    row: RowBuffer<B, L, DW, AW>,
    pbank: [PolyBank<X, TBP>; NPB],
    fbank: [PolyBank<X, TBP>; NFB],
    sbank: [IvitBank<X, TBS>; NSB],
    p_b: [CfgReg<32>; NPB],
    p_c: [CfgReg<32>; NPB],
    p_m16: [CfgReg<32>; NPB],
    p_e16: [CfgReg<6>; NPB],
    p_top: [CfgReg<10>; NPB],
    f_b: [CfgReg<32>; NFB],
    f_c: [CfgReg<32>; NFB],
    s_x0: [CfgReg<X>; NSB],
    pexp: [PolyExp<B, X, TBP>; NP],
    lexp: [LogExp<B, X, TBP>; NF],
    sexp: [ShiftExp<B, X, TBS, 15>; NS],
    pz: [ZExt<42, 56>; NP],
    sz: [ZExt<42, 56>; NS],
    pout: [Resize<9, OB>; NP],
    fout: [SExt<5, OB>; NF],
    prod: [MulSlice<MA, 34, MO, MS>; L],
    /// I-BERT's bits 24..34 of the product, at PO = 24 − MS in the slice.
    pslice: [Slice<MO, 10, PO>; NP],
    pack: Pack<L, OB, ODW>,
    code_p: [Constant<Bits<2>>; NPB],
    code_f: [Constant<Bits<2>>; NFB],
    code_s: [Constant<Bits<2>>; NSB],
    code0: Constant<Bits<2>>,
    last_p: [Constant<Bits<6>>; NPB],
    last_s: [Constant<Bits<6>>; NSB],
    limit_s: [Constant<Bits<56>>; NSB],
    minus1: [Constant<Bits<OB>>; NFB],
    width: Constant<Bits<8>>,
    ph_load: Constant<Bits<2>>,
    ph_sum: Constant<Bits<2>>,
    ph_div: Constant<Bits<2>>,
    ph_out: Constant<Bits<2>>,
    one11: Constant<Bits<11>>,
    zero11: Constant<Bits<11>>,
    zero56: Constant<Bits<56>>,
    zero6: Constant<Bits<6>>,
    one6: Constant<Bits<6>>,
    one5: Constant<Bits<5>>,
    zero_ob: Constant<Bits<OB>>,
    zero_ma: Constant<Bits<MA>>,
    zero34: Constant<Bits<34>>,
    one34: Constant<Bits<34>>,
    phase: DFF<Bits<2>>,
    mode: DFF<Bits<2>>,
    wptr: DFF<Bits<11>>,
    rptr: DFF<Bits<11>>,
    raddr: DFF<Bits<AW>>,
    rvalid: DFF<Bit>,
    rdi: DFF<Bits<11>>,
    sum: DFF<Bits<56>>,
    rem: DFF<Bits<34>>,
    quo: DFF<Bits<34>>,
    div: DFF<Bits<34>>,
    cnt: DFF<Bits<6>>,
    factor: DFF<Bits<34>>,
    s2: [DFF<Bits<64>>; NFB],
    sx: [ZExt<56, 64>; NFB],
    ov: DFF<Bit>,
    olast: DFF<Bit>,
    odata: [DFF<Bits<OB>>; L],
    lmode: Signal<Local, Bits<2>>,
    nbeats: Signal<Local, Bits<11>>,
    lastn: Signal<Local, Bits<5>>,
    dlast: Signal<Local, Bits<6>>,
    dbit: Signal<Local, Bit>,
    sel: [Signal<Local, Bits<56>>; L],
    pv: [Signal<Local, Bits<9>>; NP],
    issue: Signal<Local, Bit>,
    free: Signal<Local, Bit>,
    consume: Signal<Local, Bit>,
    wlast: Signal<Local, Bit>,
    rlast: Signal<Local, Bit>,
    esum: Signal<Local, Bits<56>>,
    nsum: Signal<Local, Bits<56>>,
    r2: Signal<Local, Bits<34>>,
}

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const X: usize,
        const TBP: usize,
        const TBS: usize,
        const AW: usize,
        const OB: usize,
        const ODW: usize,
        const NP: usize,
        const NF: usize,
        const NS: usize,
        const NPB: usize,
        const NFB: usize,
        const NSB: usize,
        const MA: usize,
        const MO: usize,
        const MS: usize,
        const PO: usize,
    > Default for SoftmaxMulti<B, L, DW, X, TBP, TBS, AW, OB, ODW, NP, NF, NS, NPB, NFB, NSB, MA, MO, MS, PO>
{
    fn default() -> Self {
        assert_eq!(B * L, DW);
        assert_eq!(OB * L, ODW);
        assert_eq!(1usize << AW, 1024 / L);
        assert!(NPB + NFB + NSB >= 2 && NPB.max(NFB).max(NSB) <= 1, "a multi-method softmax has at least two methods, each once");
        assert!(NP == NPB * L && NF == NFB * L && NS == NSB * L);
        assert!(NPB + NSB >= 1, "the divider and multiplier serve I-BERT or I-ViT");
        assert!(NSB == 0 || MS == 16, "I-ViT reads the product's bits 16..32 from the slice's bottom");
        assert!(NPB == 0 || PO + MS == 24, "I-BERT reads the product's bits 24..34");
        // The subset's first method in the order of the codes takes an unknown mode.
        let code0 = if NPB == 1 { 0u64 } else { 1 };
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
            in_mode: Default::default(),
            in_last: Default::default(),
            out_valid: Default::default(),
            out_ready: Default::default(),
            out_data: Default::default(),
            out_last: Default::default(),
            row: Default::default(),
            pbank: array_init::array_init(|_| Default::default()),
            fbank: array_init::array_init(|_| Default::default()),
            sbank: array_init::array_init(|_| Default::default()),
            p_b: array_init::array_init(|_| CfgReg::new(7)),
            p_c: array_init::array_init(|_| CfgReg::new(8)),
            p_m16: array_init::array_init(|_| CfgReg::new(9)),
            p_e16: array_init::array_init(|_| CfgReg::new(10)),
            p_top: array_init::array_init(|_| CfgReg::new(11)),
            f_b: array_init::array_init(|_| CfgReg::new(7)),
            f_c: array_init::array_init(|_| CfgReg::new(8)),
            s_x0: array_init::array_init(|_| CfgReg::new(1)),
            pexp: array_init::array_init(|_| Default::default()),
            lexp: array_init::array_init(|_| Default::default()),
            sexp: array_init::array_init(|_| Default::default()),
            pz: array_init::array_init(|_| Default::default()),
            sz: array_init::array_init(|_| Default::default()),
            pout: array_init::array_init(|_| Default::default()),
            fout: array_init::array_init(|_| Default::default()),
            prod: array_init::array_init(|_| Default::default()),
            pslice: array_init::array_init(|_| Default::default()),
            pack: Default::default(),
            code_p: array_init::array_init(|_| Constant::new(0u64.to_bits())),
            code_f: array_init::array_init(|_| Constant::new(1u64.to_bits())),
            code_s: array_init::array_init(|_| Constant::new(2u64.to_bits())),
            code0: Constant::new(code0.to_bits()),
            last_p: array_init::array_init(|_| Constant::new(32u64.to_bits())),
            last_s: array_init::array_init(|_| Constant::new(30u64.to_bits())),
            limit_s: array_init::array_init(|_| Constant::new(((1u64 << 31) - 1).to_bits())),
            minus1: array_init::array_init(|_| Constant::new(((1u64 << OB) - 1).to_bits())),
            width: Constant::new((B as u64).to_bits()),
            ph_load: Constant::new(0u64.to_bits()),
            ph_sum: Constant::new(1u64.to_bits()),
            ph_div: Constant::new(2u64.to_bits()),
            ph_out: Constant::new(3u64.to_bits()),
            one11: Constant::new(1u64.to_bits()),
            zero11: Constant::new(0u64.to_bits()),
            zero56: Constant::new(0u64.to_bits()),
            zero6: Constant::new(0u64.to_bits()),
            one6: Constant::new(1u64.to_bits()),
            one5: Constant::new(1u64.to_bits()),
            zero_ob: Constant::new(0u64.to_bits()),
            zero_ma: Constant::new(0u64.to_bits()),
            zero34: Constant::new(0u64.to_bits()),
            one34: Constant::new(1u64.to_bits()),
            phase: Default::default(),
            mode: Default::default(),
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
            s2: array_init::array_init(|_| Default::default()),
            sx: array_init::array_init(|_| Default::default()),
            ov: Default::default(),
            olast: Default::default(),
            odata: array_init::array_init(|_| Default::default()),
            lmode: Default::default(),
            nbeats: Default::default(),
            lastn: Default::default(),
            dlast: Default::default(),
            dbit: Default::default(),
            sel: array_init::array_init(|_| Default::default()),
            pv: array_init::array_init(|_| Default::default()),
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

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const X: usize,
        const TBP: usize,
        const TBS: usize,
        const AW: usize,
        const OB: usize,
        const ODW: usize,
        const NP: usize,
        const NF: usize,
        const NS: usize,
        const NPB: usize,
        const NFB: usize,
        const NSB: usize,
        const MA: usize,
        const MO: usize,
        const MS: usize,
        const PO: usize,
    > Logic for SoftmaxMulti<B, L, DW, X, TBP, TBS, AW, OB, ODW, NP, NF, NS, NPB, NFB, NSB, MA, MO, MS, PO>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, phase, mode, wptr, rptr, raddr, rvalid, rdi, sum, rem, quo, div, cnt, factor, ov, olast);
        for i in 0..L {
            self.odata[i].clock.next = self.clock.val();
            self.odata[i].d.next = self.odata[i].q.val();
        }
        // Configuration: bits 7:6 of the address pick the bank.
        for j in 0..NPB {
            self.pbank[j].clock.next = self.clock.val();
            self.pbank[j].we.next = self.cfg_we.val() & (self.cfg_addr.val().get_bits::<2>(6) == self.code_p[j].val());
            self.pbank[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.pbank[j].cfg_data.next = self.cfg_data.val();
            self.p_b[j].clock.next = self.clock.val();
            self.p_b[j].we.next = self.pbank[j].we.val();
            self.p_b[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.p_b[j].cfg_data.next = self.cfg_data.val();
            self.p_c[j].clock.next = self.clock.val();
            self.p_c[j].we.next = self.pbank[j].we.val();
            self.p_c[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.p_c[j].cfg_data.next = self.cfg_data.val();
            self.p_m16[j].clock.next = self.clock.val();
            self.p_m16[j].we.next = self.pbank[j].we.val();
            self.p_m16[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.p_m16[j].cfg_data.next = self.cfg_data.val();
            self.p_e16[j].clock.next = self.clock.val();
            self.p_e16[j].we.next = self.pbank[j].we.val();
            self.p_e16[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.p_e16[j].cfg_data.next = self.cfg_data.val();
            self.p_top[j].clock.next = self.clock.val();
            self.p_top[j].we.next = self.pbank[j].we.val();
            self.p_top[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.p_top[j].cfg_data.next = self.cfg_data.val();
        }
        for j in 0..NFB {
            self.fbank[j].clock.next = self.clock.val();
            self.fbank[j].we.next = self.cfg_we.val() & (self.cfg_addr.val().get_bits::<2>(6) == self.code_f[j].val());
            self.fbank[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.fbank[j].cfg_data.next = self.cfg_data.val();
            self.f_b[j].clock.next = self.clock.val();
            self.f_b[j].we.next = self.fbank[j].we.val();
            self.f_b[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.f_b[j].cfg_data.next = self.cfg_data.val();
            self.f_c[j].clock.next = self.clock.val();
            self.f_c[j].we.next = self.fbank[j].we.val();
            self.f_c[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.f_c[j].cfg_data.next = self.cfg_data.val();
            self.s2[j].clock.next = self.clock.val();
            self.s2[j].d.next = self.s2[j].q.val();
        }
        for j in 0..NSB {
            self.sbank[j].clock.next = self.clock.val();
            self.sbank[j].we.next = self.cfg_we.val() & (self.cfg_addr.val().get_bits::<2>(6) == self.code_s[j].val());
            self.sbank[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.sbank[j].cfg_data.next = self.cfg_data.val();
            self.s_x0[j].clock.next = self.clock.val();
            self.s_x0[j].we.next = self.sbank[j].we.val();
            self.s_x0[j].addr.next = self.cfg_addr.val().get_bits::<6>(0);
            self.s_x0[j].cfg_data.next = self.cfg_data.val();
        }
        // The row's mode: from in_mode on its first beat, then the mode register. Outside LOAD
        // wptr is never 0, so the LOAD-side and the read-side selections agree.
        if self.wptr.q.val() == self.zero11.val() {
            self.lmode.next = self.code0.val();
            for j in 0..NPB {
                if self.in_mode.val() == self.code_p[j].val() {
                    self.lmode.next = self.code_p[j].val();
                }
            }
            for j in 0..NFB {
                if self.in_mode.val() == self.code_f[j].val() {
                    self.lmode.next = self.code_f[j].val();
                }
            }
            for j in 0..NSB {
                if self.in_mode.val() == self.code_s[j].val() {
                    self.lmode.next = self.code_s[j].val();
                }
            }
        } else {
            self.lmode.next = self.mode.q.val();
        }
        // The mode's row length, divider length and numerator bit (I-BERT: 2^32, one set bit
        // entering on the first step; I-ViT: 2^31 − 1, a set bit on every step).
        self.nbeats.next = self.zero11.val();
        self.lastn.next = self.one5.val();
        self.dlast.next = self.zero6.val();
        self.dbit.next = false;
        for j in 0..NPB {
            if self.lmode.val() == self.code_p[j].val() {
                self.nbeats.next = self.pbank[j].nbeats.val();
                self.lastn.next = self.pbank[j].lastn.val();
                self.dlast.next = self.last_p[j].val();
                self.dbit.next = self.cnt.q.val() == self.zero6.val();
            }
        }
        for j in 0..NFB {
            if self.lmode.val() == self.code_f[j].val() {
                self.nbeats.next = self.fbank[j].nbeats.val();
                self.lastn.next = self.fbank[j].lastn.val();
            }
        }
        for j in 0..NSB {
            if self.lmode.val() == self.code_s[j].val() {
                self.nbeats.next = self.sbank[j].nbeats.val();
                self.lastn.next = self.sbank[j].lastn.val();
                self.dlast.next = self.last_s[j].val();
                self.dbit.next = true;
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
        if self.rptr.q.val() < self.nbeats.val() {
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
        self.wlast.next = (self.wptr.q.val() + self.one11.val()) == self.nbeats.val();
        self.rlast.next = (self.rdi.q.val() + self.one11.val()) == self.nbeats.val();
        self.row.first.next = self.wptr.q.val() == self.zero11.val();
        self.row.wlast.next = self.wlast.val();
        self.row.rlast.next = self.rlast.val();
        self.row.lastn.next = self.lastn.val();
        // Lanes: every present method's exponent from the read data and the row maximum; the
        // mode picks which one the sum and the multiplier see.
        for i in 0..L {
            self.sel[i].next = self.zero56.val();
            self.prod[i].a.next = self.zero_ma.val();
            self.prod[i].b.next = self.factor.q.val();
            self.pack.lane[i].next = self.odata[i].q.val();
        }
        for j in 0..NPB {
            for i in 0..L {
                self.pexp[i].m.next = self.row.m.val();
                self.pexp[i].q.next = self.row.rdata.val().get_bits::<B>(i * self.width.val().index());
                self.pexp[i].up.next = self.pbank[j].up.val();
                self.pexp[i].lim.next = self.pbank[j].lim.val();
                self.pexp[i].n.next = self.pbank[j].n.val();
                self.pexp[i].thr.next = self.pbank[j].thr.val();
                self.pexp[i].b.next = self.p_b[j].q.val();
                self.pexp[i].c.next = self.p_c[j].q.val();
                self.pexp[i].m16.next = self.p_m16[j].q.val();
                self.pexp[i].e16.next = self.p_e16[j].q.val();
                self.pz[i].a.next = self.pexp[i].e42.val();
                // min(E16·factor >> 24, top), 9 bits.
                self.pslice[i].a.next = self.prod[i].y.val();
                if self.pslice[i].y.val() > self.p_top[j].q.val() {
                    self.pv[i].next = self.p_top[j].q.val().get_bits::<9>(0);
                } else {
                    self.pv[i].next = self.pslice[i].y.val().get_bits::<9>(0);
                }
                self.pout[i].a.next = self.pv[i].val();
                if self.mode.q.val() == self.code_p[j].val() {
                    self.sel[i].next = self.pz[i].y.val();
                    self.prod[i].a.next = self.pexp[i].e42.val().get_bits::<MA>(0);
                }
            }
        }
        for j in 0..NFB {
            for i in 0..L {
                self.lexp[i].m.next = self.row.m.val();
                self.lexp[i].q.next = self.row.rdata.val().get_bits::<B>(i * self.width.val().index());
                self.lexp[i].up.next = self.fbank[j].up.val();
                self.lexp[i].lim.next = self.fbank[j].lim.val();
                self.lexp[i].n.next = self.fbank[j].n.val();
                self.lexp[i].thr.next = self.fbank[j].thr.val();
                self.lexp[i].b.next = self.f_b[j].q.val();
                self.lexp[i].c.next = self.f_c[j].q.val();
                self.lexp[i].s2.next = self.s2[j].q.val();
                self.fout[i].a.next = self.lexp[i].code.val();
                if self.mode.q.val() == self.code_f[j].val() {
                    self.sel[i].next = self.lexp[i].e56.val();
                }
            }
        }
        for j in 0..NSB {
            for i in 0..L {
                self.sexp[i].m.next = self.row.m.val();
                self.sexp[i].q.next = self.row.rdata.val().get_bits::<B>(i * self.width.val().index());
                self.sexp[i].up.next = self.sbank[j].up.val();
                self.sexp[i].x0.next = self.s_x0[j].q.val();
                self.sexp[i].lim.next = self.sbank[j].lim.val();
                self.sexp[i].n.next = self.sbank[j].n.val();
                self.sexp[i].thr.next = self.sbank[j].thr.val();
                self.sz[i].a.next = self.sexp[i].e42.val();
                if self.mode.q.val() == self.code_s[j].val() {
                    self.sel[i].next = self.sz[i].y.val();
                    self.prod[i].a.next = self.sexp[i].e.val().get_bits::<MA>(0);
                }
            }
        }
        self.out_data.next = self.pack.data.val();
        // Sum of the live (valid, unmasked) lanes' exponents of the word read last cycle.
        self.esum.next = self.zero56.val();
        for i in 0..L {
            if self.row.rlive[i].val() {
                self.esum.next = self.esum.val() + self.sel[i].val();
            }
        }
        self.nsum.next = self.sum.q.val() + self.esum.val();
        for j in 0..NFB {
            self.sx[j].a.next = self.nsum.val();
        }
        if self.dbit.val() {
            self.r2.next = (self.rem.q.val() << self.one5.val()) + self.one34.val();
        } else {
            self.r2.next = self.rem.q.val() << self.one5.val();
        }
        if self.reset.val() {
            self.phase.d.next = self.ph_load.val();
            self.wptr.d.next = self.zero11.val();
            self.ov.d.next = false;
            self.rvalid.d.next = false;
        } else if self.phase.q.val() == self.ph_load.val() {
            if self.in_valid.val() {
                self.row.write.next = true;
                self.mode.d.next = self.lmode.val();
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
                    self.phase.d.next = self.ph_div.val();
                    self.div.d.next = self.nsum.val().get_bits::<34>(0);
                    self.rem.d.next = self.zero34.val();
                    self.quo.d.next = self.zero34.val();
                    self.cnt.d.next = self.zero6.val();
                    for j in 0..NSB {
                        // I-ViT's divisor is the sum clamped at 2^31 − 1.
                        if (self.mode.q.val() == self.code_s[j].val()) & (self.nsum.val() >= self.limit_s[j].val()) {
                            self.div.d.next = self.limit_s[j].val().get_bits::<34>(0);
                        }
                    }
                    for j in 0..NFB {
                        // No divider for LIS: the output stage compares against 2S directly.
                        if self.mode.q.val() == self.code_f[j].val() {
                            self.phase.d.next = self.ph_out.val();
                            self.s2[j].d.next = self.sx[j].y.val() << self.one5.val();
                            self.rptr.d.next = self.zero11.val();
                            self.rvalid.d.next = false;
                        }
                    }
                }
            }
        } else if self.phase.q.val() == self.ph_div.val() {
            // Restoring division: one quotient bit per cycle.
            if self.r2.val() >= self.div.q.val() {
                self.rem.d.next = self.r2.val() - self.div.q.val();
                self.quo.d.next = (self.quo.q.val() << self.one5.val()) + self.one34.val();
            } else {
                self.rem.d.next = self.r2.val();
                self.quo.d.next = self.quo.q.val() << self.one5.val();
            }
            self.cnt.d.next = self.cnt.q.val() + self.one6.val();
            if self.cnt.q.val() == self.dlast.val() {
                if self.r2.val() >= self.div.q.val() {
                    self.factor.d.next = (self.quo.q.val() << self.one5.val()) + self.one34.val();
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
                // Masked and padding lanes give 0; LIS gives a masked lane the zero flag −1.
                for i in 0..L {
                    self.odata[i].d.next = self.zero_ob.val();
                }
                for j in 0..NPB {
                    for i in 0..L {
                        if (self.mode.q.val() == self.code_p[j].val()) & self.row.rlive[i].val() {
                            self.odata[i].d.next = self.pout[i].y.val();
                        }
                    }
                }
                for j in 0..NSB {
                    for i in 0..L {
                        if (self.mode.q.val() == self.code_s[j].val()) & self.row.rlive[i].val() {
                            self.odata[i].d.next = self.prod[i].y.val().get_bits::<OB>(0);
                        }
                    }
                }
                for j in 0..NFB {
                    for i in 0..L {
                        if self.mode.q.val() == self.code_f[j].val() {
                            if self.row.rlive[i].val() {
                                self.odata[i].d.next = self.fout[i].y.val();
                            } else if self.row.rlane[i].val() {
                                self.odata[i].d.next = self.minus1[j].val();
                            }
                        }
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
