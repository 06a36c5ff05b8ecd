//! The row buffer of the three row-buffer softmaxes (`softmax_ivit`, `softmax_ibert`,
//! `softmax_fqvit`), one block that each top instantiates, register for register the LOAD
//! side of `cycle::softmax::RowSoftmax`: the row RAM, the mask RAM beside it (one flag per
//! lane and word, written with the beat), which lanes of the word read back are valid and
//! which are live (valid and unmasked), and the running maximum over the live lanes.
//!
//! Masks (Swin's shifted windows) follow the golden models: a masked lane never updates the
//! maximum, and the tops leave it out of the sum and give it probability zero. A row whose
//! every lane is masked leaves the maximum unset (`seen` low), which nothing reads: every
//! exponent of that row is discarded.

use super::prims::SLe;
use rust_hdl::prelude::*;
use rust_hdl::widgets::prelude::RAM;

/// Row RAM, mask RAM, lane validity and the running maximum of a row-buffer softmax.
#[derive(LogicBlock)]
pub struct RowBuffer<const B: usize, const L: usize, const DW: usize, const AW: usize> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Store the input beat this cycle (LOAD with a valid beat).
    pub write: Signal<In, Bit>,
    /// Word the beat is written to.
    pub waddr: Signal<In, Bits<AW>>,
    /// LANES input codes.
    pub in_data: Signal<In, Bits<DW>>,
    /// Mask flags of the beat, bit i for lane i (1 = masked).
    pub in_mask: Signal<In, Bits<L>>,
    /// The beat is the first of its row (the maximum restarts).
    pub first: Signal<In, Bit>,
    /// The beat is the last of its row (only `lastn` lanes hold elements).
    pub wlast: Signal<In, Bit>,
    /// Word to read (registered read: its data appears on `rdata` the next cycle).
    pub raddr: Signal<In, Bits<AW>>,
    /// The word on `rdata` is the last of its row.
    pub rlast: Signal<In, Bit>,
    /// Valid lanes of a row's last beat.
    pub lastn: Signal<In, Bits<5>>,
    /// Maximum over the live lanes loaded so far in this row.
    pub m: Signal<Out, Bits<B>>,
    /// The word read last cycle.
    pub rdata: Signal<Out, Bits<DW>>,
    /// Lane i of `rdata` holds an element of the row (not padding).
    pub rlane: [Signal<Out, Bit>; L],
    /// Lane i of `rdata` holds an unmasked element.
    pub rlive: [Signal<Out, Bit>; L],
    ram: RAM<Bits<DW>, AW>,
    mram: RAM<Bits<L>, AW>,
    mcmp: [SLe<B>; L],
    lane_no: [Constant<Bits<5>>; L],
    /// 1 << i: selects lane i's flag (`get_bit` would index a 1-bit mask, a scalar in Verilog).
    lane_bit: [Constant<Bits<L>>; L],
    width: Constant<Bits<8>>,
    mreg: DFF<Bits<B>>,
    seen: DFF<Bit>,
    mrun: Signal<Local, Bits<B>>,
    srun: Signal<Local, Bit>,
}

impl<const B: usize, const L: usize, const DW: usize, const AW: usize> Default for RowBuffer<B, L, DW, AW> {
    fn default() -> Self {
        assert_eq!(B * L, DW);
        Self {
            clock: Default::default(),
            write: Default::default(),
            waddr: Default::default(),
            in_data: Default::default(),
            in_mask: Default::default(),
            first: Default::default(),
            wlast: Default::default(),
            raddr: Default::default(),
            rlast: Default::default(),
            lastn: Default::default(),
            m: Default::default(),
            rdata: Default::default(),
            rlane: array_init::array_init(|_| Default::default()),
            rlive: array_init::array_init(|_| Default::default()),
            ram: Default::default(),
            mram: Default::default(),
            mcmp: array_init::array_init(|_| Default::default()),
            lane_no: array_init::array_init(|i| Constant::new((i as u64).to_bits())),
            lane_bit: array_init::array_init(|i| Constant::new((1u64 << i).to_bits())),
            width: Constant::new((B as u64).to_bits()),
            mreg: Default::default(),
            seen: Default::default(),
            mrun: Default::default(),
            srun: Default::default(),
        }
    }
}

impl<const B: usize, const L: usize, const DW: usize, const AW: usize> Logic for RowBuffer<B, L, DW, AW> {
    #[hdl_gen]
    fn update(&mut self) {
        dff_setup!(self, clock, mreg, seen);
        self.ram.read_clock.next = self.clock.val();
        self.ram.write_clock.next = self.clock.val();
        self.ram.read_address.next = self.raddr.val();
        self.ram.write_address.next = self.waddr.val();
        self.ram.write_data.next = self.in_data.val();
        self.ram.write_enable.next = self.write.val();
        self.mram.read_clock.next = self.clock.val();
        self.mram.write_clock.next = self.clock.val();
        self.mram.read_address.next = self.raddr.val();
        self.mram.write_address.next = self.waddr.val();
        self.mram.write_data.next = self.in_mask.val();
        self.mram.write_enable.next = self.write.val();
        self.rdata.next = self.ram.read_data.val();
        self.m.next = self.mreg.q.val();
        for i in 0..L {
            self.rlane[i].next = !self.rlast.val() | (self.lane_no[i].val() < self.lastn.val());
            self.rlive[i].next = self.rlane[i].val() & !(self.mram.read_data.val() & self.lane_bit[i].val()).any();
        }
        // Running maximum over the live lanes of the beat being written; `srun` says whether
        // one has been seen (the first live lane of a row is taken whatever `mrun` holds).
        self.mrun.next = self.mreg.q.val();
        if self.first.val() {
            self.srun.next = false;
        } else {
            self.srun.next = self.seen.q.val();
        }
        for i in 0..L {
            self.mcmp[i].a.next = self.mrun.val();
            self.mcmp[i].b.next = self.in_data.val().get_bits::<B>(i * self.width.val().index());
            if (!self.wlast.val() | (self.lane_no[i].val() < self.lastn.val()))
                & !(self.in_mask.val() & self.lane_bit[i].val()).any()
                & (!self.srun.val() | self.mcmp[i].y.val())
            {
                self.mrun.next = self.in_data.val().get_bits::<B>(i * self.width.val().index());
                self.srun.next = true;
            }
        }
        if self.write.val() {
            self.mreg.d.next = self.mrun.val();
            self.seen.d.next = self.srun.val();
        }
    }
}
