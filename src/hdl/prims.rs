//! The hand-written Verilog primitives, in one place: what rust_hdl 0.46 cannot express.
//!
//! rust_hdl multiplies only 16×16 → 32, has no arithmetic right shift for `Signed`, and its
//! `signed_cast` emits a bare `$signed()` without resizing, so every signed operation of the
//! datapaths goes through one of these parameterised wrappers; everything around them (registers,
//! handshakes, muxes, unsigned two's-complement adds and compares) is rust_hdl. Each body is
//! written with explicit sign extension so its meaning does not depend on Verilog's
//! context-determined widths.

use rust_hdl::prelude::*;

/// Signed product `p = a · b` (A×B → P bits, sign-extended operands).
#[derive(LogicBlock, Default)]
pub struct SMul<const A: usize, const B: usize, const P: usize> {
    /// Multiplicand (two's complement).
    pub a: Signal<In, Bits<A>>,
    /// Multiplier (two's complement).
    pub b: Signal<In, Bits<B>>,
    /// Product, sign-extended to P bits (P ≥ A + B).
    pub p: Signal<Out, Bits<P>>,
}

impl<const A: usize, const B: usize, const P: usize> Logic for SMul<A, B, P> {
    fn update(&mut self) {
        assert!(P >= A + B, "SMul: product width {P} < {A} + {B}");
    }
    fn connect(&mut self) {
        self.p.connect();
    }
    fn hdl(&self) -> Verilog {
        Verilog::Wrapper(Wrapper {
            // The product is formed at its exact width A+B (both operands signed, so Verilog
            // sign-extends them to the context width) and then sign-extended to P ≥ A+B.
            code: if P == A + B {
                format!("    wire signed [{w1}:0] full = $signed(a) * $signed(b);\n    assign p = full;\n", w1 = A + B - 1)
            } else {
                format!(
                    "    wire signed [{w1}:0] full = $signed(a) * $signed(b);\n    assign p = {{{{{pad}{{full[{w1}]}}}}, full}};\n",
                    w1 = A + B - 1,
                    pad = P - A - B,
                )
            },
            cores: String::new(),
        })
    }
}

/// Arithmetic shift right `y = a >>> s` (floor division by 2^s).
#[derive(LogicBlock, Default)]
pub struct Asr<const W: usize, const S: usize> {
    /// Value (two's complement).
    pub a: Signal<In, Bits<W>>,
    /// Shift amount.
    pub s: Signal<In, Bits<S>>,
    /// Result.
    pub y: Signal<Out, Bits<W>>,
}

impl<const W: usize, const S: usize> Logic for Asr<W, S> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        Verilog::Wrapper(Wrapper { code: "    assign y = $signed(a) >>> s;\n".into(), cores: String::new() })
    }
}

/// Sign extension from I to O bits.
#[derive(LogicBlock, Default)]
pub struct SExt<const I: usize, const O: usize> {
    /// Narrow value.
    pub a: Signal<In, Bits<I>>,
    /// Sign-extended value.
    pub y: Signal<Out, Bits<O>>,
}

impl<const I: usize, const O: usize> Logic for SExt<I, O> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        Verilog::Wrapper(Wrapper { code: format!("    assign y = {{{{{}{{a[{}]}}}}, a}};\n", O - I, I - 1), cores: String::new() })
    }
}

/// Concatenation of L lanes of W bits into one bus (lane 0 in the low bits).
#[derive(LogicBlock)]
pub struct Pack<const L: usize, const W: usize, const D: usize> {
    /// Lanes.
    pub lane: [Signal<In, Bits<W>>; L],
    /// Packed bus, D = L·W.
    pub data: Signal<Out, Bits<D>>,
}

impl<const L: usize, const W: usize, const D: usize> Default for Pack<L, W, D> {
    fn default() -> Self {
        assert_eq!(L * W, D, "Pack: D must be L·W");
        Self { lane: array_init::array_init(|_| Default::default()), data: Default::default() }
    }
}

impl<const L: usize, const W: usize, const D: usize> Logic for Pack<L, W, D> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.data.connect();
    }
    fn hdl(&self) -> Verilog {
        let lanes: Vec<String> = (0..L).rev().map(|i| format!("lane${i}")).collect();
        Verilog::Wrapper(Wrapper { code: format!("    assign data = {{{}}};\n", lanes.join(", ")), cores: String::new() })
    }
}

/// Signed comparison `y = a ≤ b`.
#[derive(LogicBlock, Default)]
pub struct SLe<const W: usize> {
    /// Left operand (two's complement).
    pub a: Signal<In, Bits<W>>,
    /// Right operand (two's complement).
    pub b: Signal<In, Bits<W>>,
    /// a ≤ b.
    pub y: Signal<Out, Bit>,
}

impl<const W: usize> Logic for SLe<W> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        Verilog::Wrapper(Wrapper { code: "    assign y = $signed(a) <= $signed(b);\n".into(), cores: String::new() })
    }
}

/// Bits `[S+O−1 : S]` of the signed product `a · b`: a multiply followed by a fixed right shift.
#[derive(LogicBlock, Default)]
pub struct MulSlice<const A: usize, const B: usize, const O: usize, const S: usize> {
    /// Multiplicand (two's complement).
    pub a: Signal<In, Bits<A>>,
    /// Multiplier (two's complement).
    pub b: Signal<In, Bits<B>>,
    /// The selected product bits.
    pub y: Signal<Out, Bits<O>>,
}

impl<const A: usize, const B: usize, const O: usize, const S: usize> Logic for MulSlice<A, B, O, S> {
    fn update(&mut self) {
        assert!(S + O <= A + B, "MulSlice: slice beyond the product");
    }
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        // The bits outside the slice are dropped by design: the caller's widths guarantee the
        // high bits are zero (checked by the configuration) and the low bits are the shifted-out part.
        Verilog::Wrapper(Wrapper {
            code: format!(
                "    /* verilator lint_off UNUSEDSIGNAL */\n    wire signed [{w1}:0] full = $signed(a) * $signed(b);\n    /* verilator lint_on UNUSEDSIGNAL */\n    assign y = full[{hi}:{lo}];\n",
                w1 = A + B - 1,
                hi = S + O - 1,
                lo = S
            ),
            cores: String::new(),
        })
    }
}

/// Bits `[LO+O−1 : LO]` of `a` (a fixed slice; the bits outside it are read elsewhere or dropped by design).
#[derive(LogicBlock, Default)]
pub struct Slice<const I: usize, const O: usize, const LO: usize> {
    /// Value.
    pub a: Signal<In, Bits<I>>,
    /// The slice.
    pub y: Signal<Out, Bits<O>>,
}

impl<const I: usize, const O: usize, const LO: usize> Logic for Slice<I, O, LO> {
    fn update(&mut self) {
        assert!(LO + O <= I, "Slice: beyond the value");
    }
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        let code = if LO + O == I && LO == 0 {
            "    assign y = a;\n".to_string()
        } else {
            format!(
                "    /* verilator lint_off UNUSEDSIGNAL */\n    wire [{}:0] full = a;\n    /* verilator lint_on UNUSEDSIGNAL */\n    assign y = full[{}:{LO}];\n",
                I - 1,
                LO + O - 1
            )
        };
        Verilog::Wrapper(Wrapper { code, cores: String::new() })
    }
}

/// Round-half-to-even right shift `y = RNE(a / 2^s)` of a non-negative value.
#[derive(LogicBlock, Default)]
pub struct RneShr<const W: usize, const S: usize> {
    /// Value (non-negative).
    pub a: Signal<In, Bits<W>>,
    /// Shift amount (at least 1).
    pub s: Signal<In, Bits<S>>,
    /// Rounded quotient.
    pub y: Signal<Out, Bits<W>>,
}

impl<const W: usize, const S: usize> Logic for RneShr<W, S> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        // q = a >> s; the remainder against half = 2^(s−1) decides: above rounds up, equal rounds to even.
        Verilog::Wrapper(Wrapper {
            code: format!(
                "    wire [{w1}:0] q = a >> s;\n    wire [{w1}:0] half = {{{{{w1}{{1'b0}}}}, 1'b1}} << (s - 1'b1);\n    wire [{w1}:0] rem = a - (q << s);\n    assign y = q + {{{{{w1}{{1'b0}}}}, (rem > half) | ((rem == half) & q[0])}};\n",
                w1 = W - 1
            ),
            cores: String::new(),
        })
    }
}

/// Zero extension from I to O bits.
#[derive(LogicBlock, Default)]
pub struct ZExt<const I: usize, const O: usize> {
    /// Narrow value.
    pub a: Signal<In, Bits<I>>,
    /// Zero-extended value.
    pub y: Signal<Out, Bits<O>>,
}

impl<const I: usize, const O: usize> Logic for ZExt<I, O> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        Verilog::Wrapper(Wrapper { code: format!("    assign y = {{{{{}{{1'b0}}}}, a}};\n", O - I), cores: String::new() })
    }
}

/// Unsigned resize from I to O bits: zero extension when O > I, the low O bits otherwise
/// (the caller guarantees the dropped bits are zero), a plain copy when O = I.
#[derive(LogicBlock, Default)]
pub struct Resize<const I: usize, const O: usize> {
    /// Value.
    pub a: Signal<In, Bits<I>>,
    /// Resized value.
    pub y: Signal<Out, Bits<O>>,
}

impl<const I: usize, const O: usize> Logic for Resize<I, O> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        let code = match O.cmp(&I) {
            std::cmp::Ordering::Greater => format!("    assign y = {{{{{}{{1'b0}}}}, a}};\n", O - I),
            std::cmp::Ordering::Equal => "    assign y = a;\n".to_string(),
            std::cmp::Ordering::Less => format!(
                "    /* verilator lint_off UNUSEDSIGNAL */\n    wire [{}:0] full = a;\n    /* verilator lint_on UNUSEDSIGNAL */\n    assign y = full[{}:0];\n",
                I - 1,
                O - 1
            ),
        };
        Verilog::Wrapper(Wrapper { code, cores: String::new() })
    }
}

/// Signed round-half-to-even right shift `y = RNE(a / 2^s)` of a two's-complement value
/// (`fixed::shift_round` with `Rounding::HalfEven`); `s = 0` passes `a` through.
#[derive(LogicBlock, Default)]
pub struct SRneShr<const W: usize, const S: usize> {
    /// Value (two's complement).
    pub a: Signal<In, Bits<W>>,
    /// Shift amount.
    pub s: Signal<In, Bits<S>>,
    /// Rounded quotient.
    pub y: Signal<Out, Bits<W>>,
}

impl<const W: usize, const S: usize> Logic for SRneShr<W, S> {
    fn update(&mut self) {}
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        // q = a >>> s (floor); the remainder a − q·2^s is in [0, 2^s) and is compared with half = 2^(s−1).
        Verilog::Wrapper(Wrapper {
            code: format!(
                "    wire [{w1}:0] q = $signed(a) >>> s;\n    wire [{w1}:0] half = {{{{{w1}{{1'b0}}}}, 1'b1}} << (s - 1'b1);\n    wire [{w1}:0] rem = a - (q << s);\n    assign y = (s == {sw}'d0) ? a : q + {{{{{w1}{{1'b0}}}}, (rem > half) | ((rem == half) & q[0])}};\n",
                w1 = W - 1,
                sw = S
            ),
            cores: String::new(),
        })
    }
}

/// Bits `[LO+O−1 : LO]` of `a << s` (s < 2^S): a barrel shift followed by a fixed slice.
#[derive(LogicBlock, Default)]
pub struct ShlSlice<const I: usize, const S: usize, const O: usize, const LO: usize> {
    /// Value (unsigned).
    pub a: Signal<In, Bits<I>>,
    /// Shift amount.
    pub s: Signal<In, Bits<S>>,
    /// The selected bits of the shifted value.
    pub y: Signal<Out, Bits<O>>,
}

impl<const I: usize, const S: usize, const O: usize, const LO: usize> Logic for ShlSlice<I, S, O, LO> {
    fn update(&mut self) {
        assert!(LO + O < I + (1 << S), "ShlSlice: slice beyond the shifted value");
    }
    fn connect(&mut self) {
        self.y.connect();
    }
    fn hdl(&self) -> Verilog {
        // The bits below LO are dropped by design (the caller floors by 2^LO) and the caller's
        // bounds guarantee the bits above the slice are zero whenever the result is used.
        let fw = I + (1 << S) - 1;
        Verilog::Wrapper(Wrapper {
            code: format!(
                "    /* verilator lint_off UNUSEDSIGNAL */\n    wire [{f1}:0] full = {{{{{pad}{{1'b0}}}}, a}} << s;\n    /* verilator lint_on UNUSEDSIGNAL */\n    assign y = full[{hi}:{lo}];\n",
                f1 = fw - 1,
                pad = fw - I,
                hi = LO + O - 1,
                lo = LO
            ),
            cores: String::new(),
        })
    }
}
