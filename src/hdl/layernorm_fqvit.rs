//! `layernorm_fqvit` as a rust_hdl block: FQ-ViT's PTF integer LayerNorm, register for register
//! the cycle model `cycle::layernorm_fqvit` (its module comment draws the phases and states the
//! latency, row period and width bounds). Row RAM and per-channel RAMs (hq, bq, {e, δ}) of
//! LANES banks, LANES squarers for the statistics, the digit square root of `hdl::layernorm`,
//! and one serial element engine with two restoring dividers by D (8 and Q quotient bits).
//!
//! Widths (B-bit inputs): XW = B+4 (xq), SW = B+14 (row sum), QW = 2B+16 (square sum),
//! VW = 2B+26 (variance), DB = B+13 (D), PW = B+46 (P = bq·D − S·hq), Q = 2B+24 (bias
//! quotient), AC = Q+2 (accumulator); gq = N·hq + δ is 44 bits and g 42. The shifted dividends
//! keep only the bits the dividers read: |P|≪n to XS = F+Q+DB+1 bits and ⌊(g≪n)/2^F⌋ to GS = 8+DB+1
//! (the bits above are zero whenever the quotient is used: the configuration's bias bound, and
//! ⌊log2 A⌋ ≤ 7 for m).

use super::layernorm::DigitSqrt;
use super::prims::{Pack, Resize, SExt, SMul, SRneShr, ShlSlice, ZExt};
use rust_hdl::prelude::*;
use rust_hdl::widgets::prelude::RAM;

/// Fractional bits F of the constants.
const F: u64 = crate::cycle::layernorm_fqvit::FRAC as u64;

/// A constant of N bits.
fn c<const N: usize>(v: u64) -> Constant<Bits<N>> {
    Constant::new(v.to_bits())
}

/// The streaming unit: ports of every mnq unit, a 12-bit configuration address.
#[derive(LogicBlock)]
pub struct LayerNormFqvit<
    const B: usize,
    const L: usize,
    const DW: usize,
    const XW: usize,
    const XX: usize,
    const SW: usize,
    const QW: usize,
    const QW1: usize,
    const NQ: usize,
    const SS: usize,
    const VW: usize,
    const DB: usize,
    const H2: usize,
    const DB1: usize,
    const PW: usize,
    const XS: usize,
    const GS: usize,
    const Q: usize,
    const AC: usize,
    const ODW: usize,
    const AW: usize,
> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (back to LOAD, output emptied, engine stopped).
    pub reset: Signal<In, Bit>,
    /// Configuration write enable.
    pub cfg_we: Signal<In, Bit>,
    /// Configuration address: registers below 64, per-channel tables at 1024/2048/3072 + c.
    pub cfg_addr: Signal<In, Bits<12>>,
    /// Configuration value.
    pub cfg_data: Signal<In, Bits<32>>,
    /// Input beat valid.
    pub in_valid: Signal<In, Bit>,
    /// High in LOAD.
    pub in_ready: Signal<Out, Bit>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Last beat of a row (the row length is configured; `last` must agree with it).
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs of 32 bits.
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    ram: RAM<Bits<DW>, AW>,
    hram: [RAM<Bits<32>, AW>; L],
    bram: [RAM<Bits<32>, AW>; L],
    dram: [RAM<Bits<13>, AW>; L],
    sqrt: DigitSqrt<VW, DB, H2>,
    // STAT lanes.
    sq_q: [SExt<B, XW>; L],
    sq_m: [SMul<XW, XW, XX>; L],
    sq_x: [ZExt<XX, QW>; L],
    sq_s: [SExt<XW, SW>; L],
    zpx: SExt<B, XW>,
    // Variance.
    nqx: ZExt<11, 12>,
    ssx: ZExt<QW, QW1>,
    nss: SMul<12, QW1, NQ>,
    sum2: SMul<SW, SW, SS>,
    nssr: Resize<NQ, VW>,
    sum2r: Resize<SS, VW>,
    rootr: Resize<VW, DB>,
    // Element engine.
    e_q: SExt<B, XW>,
    gqm: SMul<12, 32, 44>,
    dlx: SExt<11, 44>,
    gr: Resize<44, 42>,
    gn: ZExt<42, 64>,
    dn: ZExt<DB, 64>,
    dx: ZExt<DB, DB1>,
    pbd: SMul<32, DB1, PW>,
    psh: SMul<SW, 32, PW>,
    px: ZExt<PW, XS>,
    gx: ShlSlice<42, 5, GS, 20>,
    mx: ZExt<8, 9>,
    prod: SMul<9, XW, AC>,
    bbx: ZExt<Q, AC>,
    rne: SRneShr<AC, 5>,
    outr: Resize<AC, 32>,
    zrne: SRneShr<32, 5>,
    pack: Pack<L, 32, ODW>,
    // Constants.
    blc: [Constant<Bits<7>>; 42],
    lane_no: [Constant<Bits<5>>; L],
    lane12: [Constant<Bits<12>>; L],
    lmask12: Constant<Bits<12>>,
    lm1: Constant<Bits<11>>,
    lm1_5: Constant<Bits<5>>,
    lanes5: Constant<Bits<5>>,
    one5: Constant<Bits<5>>,
    lbsh: Constant<Bits<4>>,
    lbi: Constant<Bits<4>>,
    sel_h: Constant<Bits<2>>,
    sel_b: Constant<Bits<2>>,
    sel_d: Constant<Bits<2>>,
    width: Constant<Bits<8>>,
    c64: Constant<Bits<7>>,
    c27: Constant<Bits<7>>,
    c31: Constant<Bits<7>>,
    one7: Constant<Bits<7>>,
    zero7: Constant<Bits<7>>,
    i_fq: Constant<Bits<7>>,
    i_f: Constant<Bits<7>>,
    f_half: Constant<Bits<20>>,
    zero20: Constant<Bits<20>>,
    q_top: Constant<Bits<Q>>,
    q_last: Constant<Bits<6>>,
    c8: Constant<Bits<6>>,
    f5: Constant<Bits<5>>,
    n31: Constant<Bits<5>>,
    zero5: Constant<Bits<5>>,
    pw_half: Constant<Bits<PW>>,
    zero_pw: Constant<Bits<PW>>,
    zero_db: Constant<Bits<DB>>,
    one_db1: Constant<Bits<DB1>>,
    zero42: Constant<Bits<42>>,
    zero44: Constant<Bits<44>>,
    zero_q: Constant<Bits<Q>>,
    one_q: Constant<Bits<Q>>,
    zero_ac: Constant<Bits<AC>>,
    zero8: Constant<Bits<8>>,
    one8: Constant<Bits<8>>,
    m255: Constant<Bits<8>>,
    zero9: Constant<Bits<9>>,
    zero32: Constant<Bits<32>>,
    zero_sw: Constant<Bits<SW>>,
    zero_qw: Constant<Bits<QW>>,
    one6: Constant<Bits<6>>,
    zero6: Constant<Bits<6>>,
    one11: Constant<Bits<11>>,
    zero11: Constant<Bits<11>>,
    ph_load: Constant<Bits<4>>,
    ph_stat: Constant<Bits<4>>,
    ph_sqrt: Constant<Bits<4>>,
    ph_rd: Constant<Bits<4>>,
    ph_p1: Constant<Bits<4>>,
    ph_p2: Constant<Bits<4>>,
    ph_div: Constant<Bits<4>>,
    ph_fin: Constant<Bits<4>>,
    ph_xfer: Constant<Bits<4>>,
    // Registers.
    n: DFF<Bits<11>>,
    nbeats: DFF<Bits<11>>,
    lastn: DFF<Bits<5>>,
    zp: DFF<Bits<B>>,
    phase: DFF<Bits<4>>,
    wptr: DFF<Bits<11>>,
    rptr: DFF<Bits<11>>,
    raddr: DFF<Bits<AW>>,
    rvalid: DFF<Bit>,
    rdi: DFF<Bits<11>>,
    sum: DFF<Bits<SW>>,
    ssq: DFF<Bits<QW>>,
    go: DFF<Bit>,
    dstd: DFF<Bits<DB>>,
    lane: DFF<Bits<5>>,
    xq: DFF<Bits<XW>>,
    gneg: DFF<Bit>,
    gz: DFF<Bit>,
    msat: DFF<Bit>,
    g: DFF<Bits<42>>,
    nsh: DFF<Bits<5>>,
    p: DFF<Bits<PW>>,
    bq: DFF<Bits<32>>,
    mrem: DFF<Bits<DB1>>,
    msh: DFF<Bits<8>>,
    mquo: DFF<Bits<8>>,
    brem: DFF<Bits<DB1>>,
    bsh: DFF<Bits<Q>>,
    bquo: DFF<Bits<Q>>,
    pneg: DFF<Bit>,
    xnz: DFF<Bit>,
    xgt: DFF<Bit>,
    xeq: DFF<Bit>,
    cnt: DFF<Bits<6>>,
    stg: [DFF<Bits<32>>; L],
    ov: DFF<Bit>,
    olast: DFF<Bit>,
    odata: [DFF<Bits<32>>; L],
    // Combinational.
    issue: Signal<Local, Bit>,
    rlast: Signal<Local, Bit>,
    lm: Signal<Local, Bits<5>>,
    vl: Signal<Local, Bits<5>>,
    ssum: Signal<Local, Bits<SW>>,
    sssq: Signal<Local, Bits<QW>>,
    xd: [Signal<Local, Bits<XW>>; L],
    qsel: Signal<Local, Bits<B>>,
    hsel: Signal<Local, Bits<32>>,
    bsel: Signal<Local, Bits<32>>,
    dsel: Signal<Local, Bits<13>>,
    exq: Signal<Local, Bits<XW>>,
    gq: Signal<Local, Bits<44>>,
    gm: Signal<Local, Bits<44>>,
    bg: Signal<Local, Bits<7>>,
    bd: Signal<Local, Bits<7>>,
    ge: Signal<Local, Bit>,
    t: Signal<Local, Bits<7>>,
    tdiff: Signal<Local, Bits<7>>,
    pmag: Signal<Local, Bits<PW>>,
    xs: Signal<Local, Bits<XS>>,
    xr: Signal<Local, Bits<20>>,
    brr: Signal<Local, Bits<DB1>>,
    mrr: Signal<Local, Bits<DB1>>,
    r2: Signal<Local, Bits<DB1>>,
    up: Signal<Local, Bit>,
    bbm: Signal<Local, Bits<Q>>,
    bb: Signal<Local, Bits<AC>>,
    mv: Signal<Local, Bits<8>>,
    sm: Signal<Local, Bits<9>>,
    lastlane: Signal<Local, Bit>,
}

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const XW: usize,
        const XX: usize,
        const SW: usize,
        const QW: usize,
        const QW1: usize,
        const NQ: usize,
        const SS: usize,
        const VW: usize,
        const DB: usize,
        const H2: usize,
        const DB1: usize,
        const PW: usize,
        const XS: usize,
        const GS: usize,
        const Q: usize,
        const AC: usize,
        const ODW: usize,
        const AW: usize,
    > Default for LayerNormFqvit<B, L, DW, XW, XX, SW, QW, QW1, NQ, SS, VW, DB, H2, DB1, PW, XS, GS, Q, AC, ODW, AW>
{
    fn default() -> Self {
        assert_eq!(DW, B * L);
        assert_eq!(XW, B + 4);
        assert_eq!(XX, 2 * XW);
        assert_eq!(SW, B + 14);
        assert_eq!(QW, 2 * B + 16);
        assert_eq!(QW1, QW + 1);
        assert_eq!(NQ, 12 + QW1);
        assert_eq!(SS, 2 * SW);
        assert_eq!(VW, 2 * B + 26);
        assert_eq!(DB, B + 13);
        assert_eq!(H2, DB + 3);
        assert_eq!(DB1, DB + 1);
        assert_eq!(PW, B + 46);
        assert_eq!(XS, F as usize + Q + DB1);
        assert_eq!(GS, 8 + DB1);
        assert_eq!(Q, 2 * B + 24);
        assert_eq!(AC, Q + 2);
        assert_eq!(ODW, 32 * L);
        assert_eq!(1 << AW, 1024 / L);
        let lb = L.trailing_zeros() as u64;
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
            ram: Default::default(),
            hram: array_init::array_init(|_| Default::default()),
            bram: array_init::array_init(|_| Default::default()),
            dram: array_init::array_init(|_| Default::default()),
            sqrt: Default::default(),
            sq_q: array_init::array_init(|_| Default::default()),
            sq_m: array_init::array_init(|_| Default::default()),
            sq_x: array_init::array_init(|_| Default::default()),
            sq_s: array_init::array_init(|_| Default::default()),
            zpx: Default::default(),
            nqx: Default::default(),
            ssx: Default::default(),
            nss: Default::default(),
            sum2: Default::default(),
            nssr: Default::default(),
            sum2r: Default::default(),
            rootr: Default::default(),
            e_q: Default::default(),
            gqm: Default::default(),
            dlx: Default::default(),
            gr: Default::default(),
            gn: Default::default(),
            dn: Default::default(),
            dx: Default::default(),
            pbd: Default::default(),
            psh: Default::default(),
            px: Default::default(),
            gx: Default::default(),
            mx: Default::default(),
            prod: Default::default(),
            bbx: Default::default(),
            rne: Default::default(),
            outr: Default::default(),
            zrne: Default::default(),
            pack: Default::default(),
            blc: array_init::array_init(|i| c((i + 1) as u64)),
            lane_no: array_init::array_init(|i| c(i as u64)),
            lane12: array_init::array_init(|i| c(i as u64)),
            lmask12: c((L - 1) as u64),
            lm1: c((L - 1) as u64),
            lm1_5: c((L - 1) as u64),
            lanes5: c(L as u64),
            one5: c(1),
            lbsh: c(lb),
            lbi: c(lb),
            sel_h: c(1),
            sel_b: c(2),
            sel_d: c(3),
            width: c(B as u64),
            c64: c(64),
            c27: c(7 + F),
            c31: c(31),
            one7: c(1),
            zero7: c(0),
            i_fq: c(F + Q as u64),
            i_f: c(F),
            f_half: c(1 << (F - 1)),
            zero20: c(0),
            q_top: c(1 << (Q - 1)),
            q_last: c((Q - 1) as u64),
            c8: c(8),
            f5: c(F),
            n31: c(31),
            zero5: c(0),
            pw_half: c(1 << (PW - 1)),
            zero_pw: c(0),
            zero_db: c(0),
            one_db1: c(1),
            zero42: c(0),
            zero44: c(0),
            zero_q: c(0),
            one_q: c(1),
            zero_ac: c(0),
            zero8: c(0),
            one8: c(1),
            m255: c(255),
            zero9: c(0),
            zero32: c(0),
            zero_sw: c(0),
            zero_qw: c(0),
            one6: c(1),
            zero6: c(0),
            one11: c(1),
            zero11: c(0),
            ph_load: c(0),
            ph_stat: c(1),
            ph_sqrt: c(2),
            ph_rd: c(3),
            ph_p1: c(4),
            ph_p2: c(5),
            ph_div: c(6),
            ph_fin: c(7),
            ph_xfer: c(8),
            n: Default::default(),
            nbeats: Default::default(),
            lastn: Default::default(),
            zp: Default::default(),
            phase: Default::default(),
            wptr: Default::default(),
            rptr: Default::default(),
            raddr: Default::default(),
            rvalid: Default::default(),
            rdi: Default::default(),
            sum: Default::default(),
            ssq: Default::default(),
            go: Default::default(),
            dstd: Default::default(),
            lane: Default::default(),
            xq: Default::default(),
            gneg: Default::default(),
            gz: Default::default(),
            msat: Default::default(),
            g: Default::default(),
            nsh: Default::default(),
            p: Default::default(),
            bq: Default::default(),
            mrem: Default::default(),
            msh: Default::default(),
            mquo: Default::default(),
            brem: Default::default(),
            bsh: Default::default(),
            bquo: Default::default(),
            pneg: Default::default(),
            xnz: Default::default(),
            xgt: Default::default(),
            xeq: Default::default(),
            cnt: Default::default(),
            stg: array_init::array_init(|_| Default::default()),
            ov: Default::default(),
            olast: Default::default(),
            odata: array_init::array_init(|_| Default::default()),
            issue: Default::default(),
            rlast: Default::default(),
            lm: Default::default(),
            vl: Default::default(),
            ssum: Default::default(),
            sssq: Default::default(),
            xd: array_init::array_init(|_| Default::default()),
            qsel: Default::default(),
            hsel: Default::default(),
            bsel: Default::default(),
            dsel: Default::default(),
            exq: Default::default(),
            gq: Default::default(),
            gm: Default::default(),
            bg: Default::default(),
            bd: Default::default(),
            ge: Default::default(),
            t: Default::default(),
            tdiff: Default::default(),
            pmag: Default::default(),
            xs: Default::default(),
            xr: Default::default(),
            brr: Default::default(),
            mrr: Default::default(),
            r2: Default::default(),
            up: Default::default(),
            bbm: Default::default(),
            bb: Default::default(),
            mv: Default::default(),
            sm: Default::default(),
            lastlane: Default::default(),
        }
    }
}

impl<
        const B: usize,
        const L: usize,
        const DW: usize,
        const XW: usize,
        const XX: usize,
        const SW: usize,
        const QW: usize,
        const QW1: usize,
        const NQ: usize,
        const SS: usize,
        const VW: usize,
        const DB: usize,
        const H2: usize,
        const DB1: usize,
        const PW: usize,
        const XS: usize,
        const GS: usize,
        const Q: usize,
        const AC: usize,
        const ODW: usize,
        const AW: usize,
    > Logic for LayerNormFqvit<B, L, DW, XW, XX, SW, QW, QW1, NQ, SS, VW, DB, H2, DB1, PW, XS, GS, Q, AC, ODW, AW>
{
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(
            self, clock, n, nbeats, lastn, zp, phase, wptr, rptr, raddr, rvalid, rdi, sum, ssq, go, dstd, lane, xq, gneg, gz, msat, g, nsh,
            p, bq, mrem, msh, mquo, brem, bsh, bquo, pneg, xnz, xgt, xeq, cnt, ov, olast
        );
        for i in 0..L {
            self.stg[i].clock.next = self.clock.val();
            self.stg[i].d.next = self.stg[i].q.val();
            self.odata[i].clock.next = self.clock.val();
            self.odata[i].d.next = self.odata[i].q.val();
        }
        // Configuration: row length (beats and the last beat's lanes derived here), zero point.
        self.lm.next = ((self.cfg_data.val().get_bits::<5>(0) - self.one5.val()) & self.lm1_5.val()) + self.one5.val();
        if self.cfg_we.val() {
            match self.cfg_addr.val().index() {
                7 => {
                    self.n.d.next = self.cfg_data.val().get_bits::<11>(0);
                    self.nbeats.d.next = (self.cfg_data.val().get_bits::<11>(0) + self.lm1.val()) >> self.lbsh.val();
                    self.lastn.d.next = self.lm.val();
                }
                8 => self.zp.d.next = self.cfg_data.val().get_bits::<B>(0),
                _ => {}
            }
        }
        self.in_ready.next = self.phase.q.val() == self.ph_load.val();
        self.out_valid.next = self.ov.q.val();
        self.out_last.next = self.olast.q.val();
        self.issue.next = (self.phase.q.val() == self.ph_rd.val())
            | ((self.phase.q.val() == self.ph_stat.val()) & (self.rptr.q.val() < self.nbeats.q.val()));
        // All RAMs share the read address (word = beat index).
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
            self.hram[i].read_clock.next = self.clock.val();
            self.hram[i].write_clock.next = self.clock.val();
            self.hram[i].read_address.next = self.ram.read_address.val();
            self.hram[i].write_address.next = self.cfg_addr.val().get_bits::<AW>(self.lbi.val().index());
            self.hram[i].write_data.next = self.cfg_data.val();
            self.hram[i].write_enable.next = self.cfg_we.val()
                & (self.cfg_addr.val().get_bits::<2>(10) == self.sel_h.val())
                & ((self.cfg_addr.val() & self.lmask12.val()) == self.lane12[i].val());
            self.bram[i].read_clock.next = self.clock.val();
            self.bram[i].write_clock.next = self.clock.val();
            self.bram[i].read_address.next = self.ram.read_address.val();
            self.bram[i].write_address.next = self.cfg_addr.val().get_bits::<AW>(self.lbi.val().index());
            self.bram[i].write_data.next = self.cfg_data.val();
            self.bram[i].write_enable.next = self.cfg_we.val()
                & (self.cfg_addr.val().get_bits::<2>(10) == self.sel_b.val())
                & ((self.cfg_addr.val() & self.lmask12.val()) == self.lane12[i].val());
            self.dram[i].read_clock.next = self.clock.val();
            self.dram[i].write_clock.next = self.clock.val();
            self.dram[i].read_address.next = self.ram.read_address.val();
            self.dram[i].write_address.next = self.cfg_addr.val().get_bits::<AW>(self.lbi.val().index());
            self.dram[i].write_data.next = self.cfg_data.val().get_bits::<13>(0);
            self.dram[i].write_enable.next = self.cfg_we.val()
                & (self.cfg_addr.val().get_bits::<2>(10) == self.sel_d.val())
                & ((self.cfg_addr.val() & self.lmask12.val()) == self.lane12[i].val());
        }
        self.rlast.next = (self.rdi.q.val() + self.one11.val()) == self.nbeats.q.val();
        if self.rlast.val() {
            self.vl.next = self.lastn.q.val();
        } else {
            self.vl.next = self.lanes5.val();
        }
        // STAT lanes: xq = (q − zp)·2^e, the row sum and square sum of the valid lanes.
        self.zpx.a.next = self.zp.q.val();
        self.ssum.next = self.sum.q.val();
        self.sssq.next = self.ssq.q.val();
        for i in 0..L {
            self.sq_q[i].a.next = self.ram.read_data.val().get_bits::<B>(i * self.width.val().index());
            self.xd[i].next = (self.sq_q[i].y.val() - self.zpx.y.val()) << self.dram[i].read_data.val().get_bits::<2>(11);
            self.sq_m[i].a.next = self.xd[i].val();
            self.sq_m[i].b.next = self.xd[i].val();
            self.sq_x[i].a.next = self.sq_m[i].p.val();
            self.sq_s[i].a.next = self.xd[i].val();
            if self.lane_no[i].val() < self.vl.val() {
                self.ssum.next = self.ssum.val() + self.sq_s[i].y.val();
                self.sssq.next = self.sssq.val() + self.sq_x[i].y.val();
            }
        }
        // The variance N·SS − S² into the square root; D its low DB bits.
        self.nqx.a.next = self.n.q.val();
        self.ssx.a.next = self.ssq.q.val();
        self.nss.a.next = self.nqx.y.val();
        self.nss.b.next = self.ssx.y.val();
        self.sum2.a.next = self.sum.q.val();
        self.sum2.b.next = self.sum.q.val();
        self.nssr.a.next = self.nss.p.val();
        self.sum2r.a.next = self.sum2.p.val();
        self.sqrt.clock.next = self.clock.val();
        self.sqrt.reset.next = self.reset.val();
        self.sqrt.go.next = self.go.q.val();
        self.sqrt.vin.next = self.nssr.y.val() - self.sum2r.y.val();
        self.rootr.a.next = self.sqrt.root.val();
        // P1: lane `lane` of the read word; gq = N·hq + δ, g = |gq|.
        self.qsel.next = self.ram.read_data.val().get_bits::<B>(0);
        self.hsel.next = self.hram[0].read_data.val();
        self.bsel.next = self.bram[0].read_data.val();
        self.dsel.next = self.dram[0].read_data.val();
        for i in 0..L {
            if self.lane.q.val() == self.lane_no[i].val() {
                self.qsel.next = self.ram.read_data.val().get_bits::<B>(i * self.width.val().index());
                self.hsel.next = self.hram[i].read_data.val();
                self.bsel.next = self.bram[i].read_data.val();
                self.dsel.next = self.dram[i].read_data.val();
            }
        }
        self.e_q.a.next = self.qsel.val();
        self.exq.next = (self.e_q.y.val() - self.zpx.y.val()) << self.dsel.val().get_bits::<2>(11);
        self.gqm.a.next = self.nqx.y.val();
        self.gqm.b.next = self.hsel.val();
        self.dlx.a.next = self.dsel.val().get_bits::<11>(0);
        self.gq.next = self.gqm.p.val() + self.dlx.y.val();
        if self.gq.val().get_bit(43) {
            self.gm.next = self.zero44.val() - self.gq.val();
        } else {
            self.gm.next = self.gq.val();
        }
        self.gr.a.next = self.gm.val();
        // n = clamp(7 − ⌊log2(g/(D·2^F))⌋, 0, 31): bit lengths, then the normalised mantissas.
        self.bg.next = self.zero7.val();
        for i in 0..42 {
            if self.gr.y.val().get_bit(i) {
                self.bg.next = self.blc[i].val();
            }
        }
        self.bd.next = self.zero7.val();
        for i in 0..DB {
            if self.dstd.q.val().get_bit(i) {
                self.bd.next = self.blc[i].val();
            }
        }
        self.gn.a.next = self.gr.y.val();
        self.dn.a.next = self.dstd.q.val();
        self.ge.next = (self.gn.y.val() << (self.c64.val() - self.bg.val())) >= (self.dn.y.val() << (self.c64.val() - self.bd.val()));
        if self.ge.val() {
            self.t.next = self.c27.val() + self.bd.val();
        } else {
            self.t.next = self.c27.val() + self.bd.val() + self.one7.val();
        }
        self.tdiff.next = self.t.val() - self.bg.val();
        // P = bq·D − S·hq.
        self.dx.a.next = self.dstd.q.val();
        self.pbd.a.next = self.bsel.val();
        self.pbd.b.next = self.dx.y.val();
        self.psh.a.next = self.sum.q.val();
        self.psh.b.next = self.hsel.val();
        // P2: |P|≪n and g≪n; the dividers start from their top bits.
        if self.p.q.val() >= self.pw_half.val() {
            self.pmag.next = self.zero_pw.val() - self.p.q.val();
        } else {
            self.pmag.next = self.p.q.val();
        }
        self.px.a.next = self.pmag.val();
        self.xs.next = self.px.y.val() << self.nsh.q.val();
        self.gx.a.next = self.g.q.val();
        self.gx.s.next = self.nsh.q.val();
        self.xr.next = self.xs.val().get_bits::<20>(0);
        // DIV: one quotient bit of each divider.
        if self.bsh.q.val() >= self.q_top.val() {
            self.brr.next = (self.brem.q.val() << self.one6.val()) + self.one_db1.val();
        } else {
            self.brr.next = self.brem.q.val() << self.one6.val();
        }
        if self.msh.q.val().get_bit(7) {
            self.mrr.next = (self.mrem.q.val() << self.one6.val()) + self.one_db1.val();
        } else {
            self.mrr.next = self.mrem.q.val() << self.one6.val();
        }
        // FIN: half-even rounding of the bias from the remainder, D and the F dropped bits.
        self.r2.next = self.brem.q.val() << self.one6.val();
        self.up.next = (self.r2.val() > self.dx.y.val())
            | ((self.r2.val() == self.dx.y.val()) & (self.xnz.q.val() | self.bquo.q.val().get_bit(0)))
            | (((self.r2.val() + self.one_db1.val()) == self.dx.y.val())
                & (self.xgt.q.val() | (self.xeq.q.val() & self.bquo.q.val().get_bit(0))));
        if self.up.val() {
            self.bbm.next = self.bquo.q.val() + self.one_q.val();
        } else {
            self.bbm.next = self.bquo.q.val();
        }
        self.bbx.a.next = self.bbm.val();
        if self.pneg.q.val() {
            self.bb.next = self.zero_ac.val() - self.bbx.y.val();
        } else {
            self.bb.next = self.bbx.y.val();
        }
        if self.gz.q.val() {
            self.mv.next = self.zero8.val();
        } else if self.msat.q.val() {
            self.mv.next = self.m255.val();
        } else {
            self.mv.next = self.mquo.q.val();
        }
        self.mx.a.next = self.mv.val();
        if self.gneg.q.val() {
            self.sm.next = self.zero9.val() - self.mx.y.val();
        } else {
            self.sm.next = self.mx.y.val();
        }
        self.prod.a.next = self.sm.val();
        self.prod.b.next = self.xq.q.val();
        self.rne.a.next = self.prod.p.val() + self.bb.val();
        self.rne.s.next = self.nsh.q.val();
        self.outr.a.next = self.rne.y.val();
        self.zrne.a.next = self.bq.q.val();
        self.zrne.s.next = self.f5.val();
        self.lastlane.next = (self.lane.q.val() + self.one5.val()) == self.lanes5.val();
        for i in 0..L {
            self.pack.lane[i].next = self.odata[i].q.val();
        }
        self.out_data.next = self.pack.data.val();
        if self.ov.q.val() & self.out_ready.val() {
            self.ov.d.next = false;
        }
        if self.reset.val() {
            self.phase.d.next = self.ph_load.val();
            self.wptr.d.next = self.zero11.val();
            self.ov.d.next = false;
            self.rvalid.d.next = false;
            self.go.d.next = false;
        } else if self.phase.q.val() == self.ph_load.val() {
            if self.in_valid.val() {
                self.ram.write_enable.next = true;
                self.wptr.d.next = self.wptr.q.val() + self.one11.val();
                if (self.wptr.q.val() + self.one11.val()) == self.nbeats.q.val() {
                    self.phase.d.next = self.ph_stat.val();
                    self.rptr.d.next = self.zero11.val();
                    self.rvalid.d.next = false;
                    self.sum.d.next = self.zero_sw.val();
                    self.ssq.d.next = self.zero_qw.val();
                }
            }
        } else if self.phase.q.val() == self.ph_stat.val() {
            if self.issue.val() {
                self.rptr.d.next = self.rptr.q.val() + self.one11.val();
                self.rdi.d.next = self.rptr.q.val();
            }
            self.rvalid.d.next = self.issue.val();
            if self.rvalid.q.val() {
                self.sum.d.next = self.ssum.val();
                self.ssq.d.next = self.sssq.val();
                if self.rlast.val() {
                    self.phase.d.next = self.ph_sqrt.val();
                    self.go.d.next = true;
                }
            }
        } else if self.phase.q.val() == self.ph_sqrt.val() {
            self.go.d.next = false;
            if !self.go.q.val() & self.sqrt.done.val() {
                self.dstd.d.next = self.rootr.y.val();
                self.phase.d.next = self.ph_rd.val();
                self.rptr.d.next = self.zero11.val();
            }
        } else if self.phase.q.val() == self.ph_rd.val() {
            self.rptr.d.next = self.rptr.q.val() + self.one11.val();
            self.rdi.d.next = self.rptr.q.val();
            self.lane.d.next = self.zero5.val();
            self.phase.d.next = self.ph_p1.val();
        } else if self.phase.q.val() == self.ph_p1.val() {
            self.xq.d.next = self.exq.val();
            self.gneg.d.next = self.gq.val().get_bit(43);
            self.gz.d.next = self.gr.y.val() == self.zero42.val();
            self.g.d.next = self.gr.y.val();
            if self.gr.y.val() == self.zero42.val() {
                self.nsh.d.next = self.n31.val();
                self.msat.d.next = false;
            } else if self.bg.val() >= self.t.val() {
                self.nsh.d.next = self.zero5.val();
                self.msat.d.next = self.bg.val() > self.t.val();
            } else {
                if self.tdiff.val() > self.c31.val() {
                    self.nsh.d.next = self.n31.val();
                } else {
                    self.nsh.d.next = self.tdiff.val().get_bits::<5>(0);
                }
                self.msat.d.next = false;
            }
            self.p.d.next = self.pbd.p.val() - self.psh.p.val();
            self.bq.d.next = self.bsel.val();
            self.phase.d.next = self.ph_p2.val();
        } else if self.phase.q.val() == self.ph_p2.val() {
            self.mrem.d.next = self.gx.y.val().get_bits::<DB1>(8);
            self.msh.d.next = self.gx.y.val().get_bits::<8>(0);
            self.mquo.d.next = self.zero8.val();
            self.brem.d.next = self.xs.val().get_bits::<DB1>(self.i_fq.val().index());
            self.bsh.d.next = self.xs.val().get_bits::<Q>(self.i_f.val().index());
            self.bquo.d.next = self.zero_q.val();
            self.pneg.d.next = self.p.q.val() >= self.pw_half.val();
            self.xnz.d.next = self.xr.val() != self.zero20.val();
            self.xgt.d.next = self.xr.val() > self.f_half.val();
            self.xeq.d.next = self.xr.val() == self.f_half.val();
            self.cnt.d.next = self.zero6.val();
            self.phase.d.next = self.ph_div.val();
        } else if self.phase.q.val() == self.ph_div.val() {
            if self.brr.val() >= self.dx.y.val() {
                self.brem.d.next = self.brr.val() - self.dx.y.val();
                self.bquo.d.next = (self.bquo.q.val() << self.one6.val()) + self.one_q.val();
            } else {
                self.brem.d.next = self.brr.val();
                self.bquo.d.next = self.bquo.q.val() << self.one6.val();
            }
            self.bsh.d.next = self.bsh.q.val() << self.one6.val();
            if self.cnt.q.val() < self.c8.val() {
                if self.mrr.val() >= self.dx.y.val() {
                    self.mrem.d.next = self.mrr.val() - self.dx.y.val();
                    self.mquo.d.next = (self.mquo.q.val() << self.one6.val()) + self.one8.val();
                } else {
                    self.mrem.d.next = self.mrr.val();
                    self.mquo.d.next = self.mquo.q.val() << self.one6.val();
                }
                self.msh.d.next = self.msh.q.val() << self.one6.val();
            }
            self.cnt.d.next = self.cnt.q.val() + self.one6.val();
            if self.cnt.q.val() == self.q_last.val() {
                self.phase.d.next = self.ph_fin.val();
            }
        } else if self.phase.q.val() == self.ph_fin.val() {
            for i in 0..L {
                if self.lane.q.val() == self.lane_no[i].val() {
                    if self.dstd.q.val() == self.zero_db.val() {
                        self.stg[i].d.next = self.zrne.y.val();
                    } else {
                        self.stg[i].d.next = self.outr.y.val();
                    }
                }
            }
            if self.lastlane.val() {
                self.phase.d.next = self.ph_xfer.val();
            } else {
                self.lane.d.next = self.lane.q.val() + self.one5.val();
                self.phase.d.next = self.ph_p1.val();
            }
        } else if (self.phase.q.val() == self.ph_xfer.val()) & (!self.ov.q.val() | self.out_ready.val()) {
            for i in 0..L {
                if self.lane_no[i].val() < self.vl.val() {
                    self.odata[i].d.next = self.stg[i].q.val();
                } else {
                    self.odata[i].d.next = self.zero32.val();
                }
            }
            self.ov.d.next = true;
            self.olast.d.next = self.rlast.val();
            if self.rlast.val() {
                self.phase.d.next = self.ph_load.val();
                self.wptr.d.next = self.zero11.val();
            } else {
                self.phase.d.next = self.ph_rd.val();
            }
        }
    }
}
