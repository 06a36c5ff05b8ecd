//! `layernorm_ibert` as a rust_hdl block. IntLayerNorm (I-BERT): the LayerNorm core with the digit-by-digit integer square root
//! (`hdl::layernorm`; phases, latency and row period in `cycle::layernorm`).

use super::layernorm::{DigitSqrt, LnCore};
use rust_hdl::prelude::*;

/// The streaming unit: ports of every mnq unit, a 12-bit configuration address.
#[derive(LogicBlock, Default)]
pub struct LayerNormIbert<
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
    const H: usize,
    const H2: usize,
> {
    /// Clock.
    pub clock: Signal<In, Clock>,
    /// Synchronous reset (back to LOAD, output emptied, engine stopped).
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
    /// Last beat of a row (the row length is configured; `last` must agree with it).
    pub in_last: Signal<In, Bit>,
    /// Output beat valid.
    pub out_valid: Signal<Out, Bit>,
    /// Downstream ready.
    pub out_ready: Signal<In, Bit>,
    /// LANES outputs, O = B + 32 bits each.
    pub out_data: Signal<Out, Bits<ODW>>,
    /// Last beat of a row.
    pub out_last: Signal<Out, Bit>,
    core: LnCore<B, L, DW, Y, YY, W, W1, SW, O, ODW, AW>,
    sqrt: DigitSqrt<W, H, H2>,
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
        const H: usize,
        const H2: usize,
    > Logic for LayerNormIbert<B, L, DW, Y, YY, W, W1, SW, O, ODW, AW, H, H2>
{
    #[hdl_gen]
    fn update(&mut self) {
        self.core.clock.next = self.clock.val();
        self.core.reset.next = self.reset.val();
        self.core.cfg_we.next = self.cfg_we.val();
        self.core.cfg_addr.next = self.cfg_addr.val();
        self.core.cfg_data.next = self.cfg_data.val();
        self.core.in_valid.next = self.in_valid.val();
        self.core.in_data.next = self.in_data.val();
        self.core.out_ready.next = self.out_ready.val();
        self.in_ready.next = self.core.in_ready.val();
        self.out_valid.next = self.core.out_valid.val();
        self.out_data.next = self.core.out_data.val();
        self.out_last.next = self.core.out_last.val();
        self.sqrt.clock.next = self.clock.val();
        self.sqrt.reset.next = self.reset.val();
        self.sqrt.go.next = self.core.sq_go.val();
        self.sqrt.vin.next = self.core.sq_var.val();
        self.core.sq_done.next = self.sqrt.done.val();
        self.core.sq_root.next = self.sqrt.root.val();
    }
}
