"""`erf` and `exp` of the Rust `libm` crate (0.2, FreeBSD msun `s_erf.c` / `e_exp.c`), ported
operation for operation so that Python's IEEE float64 arithmetic gives the same bits.

mnq's FQ-ViT float GELU fallback is `x·0.5·(1 + libm::erf(x/√2))` in f64; Python's `math.erf`
is glibc's, which can differ in the last bit, and a last-bit difference can move
`RNE(gelu(x)/s)` across a rounding boundary. Only the branches reachable from finite inputs
are kept (NaN and infinities are refused by the callers).
"""

from __future__ import annotations

import math
import struct

ERX = 8.45062911510467529297e-01
EFX8 = 1.02703333676410069053e+00
PP0, PP1, PP2, PP3, PP4 = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
                           -5.77027029648944159157e-03, -2.37630166566501626084e-05)
QQ1, QQ2, QQ3, QQ4, QQ5 = (3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
                           1.32494738004321644526e-04, -3.96022827877536812320e-06)
PA0, PA1, PA2, PA3, PA4, PA5, PA6 = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
                                     3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
                                     -2.16637559486879084300e-03)
QA1, QA2, QA3, QA4, QA5, QA6 = (1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
                                1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
RA0, RA1, RA2, RA3, RA4, RA5, RA6, RA7 = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
                                          -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
                                          -8.12874355063065934246e+01, -9.81432934416914548592e+00)
SA1, SA2, SA3, SA4, SA5, SA6, SA7, SA8 = (1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
                                          6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
                                          6.57024977031928170135e+00, -6.04244152148580987438e-02)
RB0, RB1, RB2, RB3, RB4, RB5, RB6 = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
                                     -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
                                     -4.83519191608651397019e+02)
SB1, SB2, SB3, SB4, SB5, SB6, SB7 = (3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
                                     3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
                                     -2.24409524465858183362e+01)

LN2HI = 6.93147180369123816490e-01
LN2LO = 1.90821492927058770002e-10
INVLN2 = 1.44269504088896338700e+00
P1, P2, P3, P4, P5 = (1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
                      -1.65339022054652515390e-06, 4.13813679705723846039e-08)


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def _high(x: float) -> int:
    return _bits(x) >> 32


def _scalbn(y: float, k: int) -> float:
    # libm's scalbn multiplies by powers of two; for the normal results reached here
    # (|x| < 6 in erf) that is exact, as ldexp is.
    return math.ldexp(y, k)


def libm_exp(x: float) -> float:
    """`libm::exp` (FreeBSD `e_exp.c`) for finite x."""
    hx = _high(x)
    sign = hx >> 31
    hx &= 0x7FFFFFFF
    if hx >= 0x4086232B:
        if x > 709.782712893383973096:
            return math.inf
        if x < -745.13321910194110842:
            return 0.0
    if hx > 0x3FD62E42:
        if hx >= 0x3FF0A2B2:
            k = int(INVLN2 * x + (0.5, -0.5)[sign])  # `as i32` truncates toward zero
        else:
            k = 1 - sign - sign
        hi = x - k * LN2HI
        lo = k * LN2LO
        x = hi - lo
    elif hx > 0x3E300000:
        k = 0
        hi = x
        lo = 0.0
    else:
        return 1.0 + x
    xx = x * x
    c = x - xx * (P1 + xx * (P2 + xx * (P3 + xx * (P4 + xx * P5))))
    y = 1.0 + (x * c / (2.0 - c) - lo + hi)
    return y if k == 0 else _scalbn(y, k)


def _erfc1(x: float) -> float:
    s = abs(x) - 1.0
    p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))))
    q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))))
    return 1.0 - ERX - p / q


def _erfc2(ix: int, x: float) -> float:
    if ix < 0x3FF40000:
        return _erfc1(x)
    x = abs(x)
    s = 1.0 / (x * x)
    if ix < 0x4006DB6D:
        r = RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7))))))
        big_s = 1.0 + s * (SA1 + s * (SA2 + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8)))))))
    else:
        r = RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6)))))
        big_s = 1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7))))))
    z = _from_bits(_bits(x) & 0xFFFFFFFF00000000)  # with_set_low_word(x, 0)
    return libm_exp(-z * z - 0.5625) * libm_exp((z - x) * (z + x) + r / big_s) / x


def libm_erf(x: float) -> float:
    """`libm::erf` for finite x."""
    if not math.isfinite(x):
        raise ValueError(f"erf of a non-finite value {x}")
    ix = _high(x)
    sign = ix >> 31
    ix &= 0x7FFFFFFF
    if ix < 0x3FEB0000:
        if ix < 0x3E300000:
            return 0.125 * (8.0 * x + EFX8 * x)
        z = x * x
        r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)))
        s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))))
        y = r / s
        return x + x * y
    if ix < 0x40180000:
        y = 1.0 - _erfc2(ix, x)
    else:
        y = 1.0 - _from_bits(0x0010000000000000)
    return -y if sign else y


FRAC_1_SQRT_2 = 0.7071067811865476  # std::f64::consts::FRAC_1_SQRT_2


def gelu_f64(x: float) -> float:
    """mnq's exact GELU in f64: `x·0.5·(1 + erf(x·FRAC_1_SQRT_2))` (`model::float::gelu`)."""
    return x * 0.5 * (1.0 + libm_erf(x * FRAC_1_SQRT_2))
