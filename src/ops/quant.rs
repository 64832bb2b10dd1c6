//! Symmetric int8 quantization (docs/numerics.md, section 1) and the int8 tensor type.
//!
//! The two passes every quantization makes, `max |x|` and `q = clamp(round_half_even(x / s),
//! -127, 127)`, are compiled for the CPU's best vector level at run time (x86-64) or written
//! with NEON (aarch64); the finer scales of the pipelines (per head, per row) are made from the
//! same two passes, so every granularity gives the same bits as quantizing its slice alone.

use crate::error::{Error, Result};

/// An int8 tensor with one scale: the real value of `data[i]` is `data[i] * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    data: Vec<i8>,
    scale: f32,
}

/// Returns the first non-finite element of `x` as an error naming `what`.
pub(crate) fn check_finite(what: &'static str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            tensor: what,
            index,
            value: x[index],
        }),
    }
}

/// The scale `max|x| / 127` of the contract's section 1 (0 when the largest magnitude is 0 or
/// subnormal).
///
/// # Errors
/// [`Error::NonFinite`] for a NaN or an infinity.
pub fn symmetric_scale(x: &[f32]) -> Result<f32> {
    let max_bits = max_abs_bits(x);
    if max_bits >= f32::INFINITY.to_bits() {
        check_finite("tensor to quantize", x)?;
    }
    Ok(scale_of_max_bits(max_bits))
}

/// Whether every value is finite: one pass of [`max_abs_bits`] (vectorised, no early exit),
/// for checking whole output rows where `iter().all(is_finite)` stays scalar.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    max_abs_bits(x) < f32::INFINITY.to_bits()
}

/// The largest `|x|` as bits (infinity's bits or more when a NaN or infinity is present).
pub(crate) fn max_abs_bits(x: &[f32]) -> u32 {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 target.
        unsafe { neon::max_abs_bits(x) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    max_abs_bits_at(crate::simd::level(), x)
}

crate::simd::dispatch! {
    /// [`max_abs_bits_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    fn max_abs_bits_at(x: &[f32]) -> u32 => max_abs_bits_portable
}

#[inline(always)]
fn max_abs_bits_portable(x: &[f32]) -> u32 {
    // One pass over the bit patterns: for non-negative floats the bit order is the value order,
    // and |x| is finite exactly when its bits are below infinity's. An integer max reduction
    // vectorises where a float max (NaN-aware, order-dependent) would not. (A hand-unrolled
    // 16-lane array was turned into gathers across chunks by LLVM.)
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// Quantizes `x` with a given scale: `clamp(round_half_even(x / s), -127, 127)`, all zeros when
/// `s == 0`. `s` must come from [`symmetric_scale`] (or be at least as large), so that the clamp
/// only absorbs rounding at the ends of the range.
pub(crate) fn quantize_with_scale(x: &[f32], scale: f32, out: &mut [i8]) {
    debug_assert_eq!(x.len(), out.len());
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 target.
        unsafe { neon::quantize_with_scale(x, scale, out) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    quantize_at(crate::simd::level(), x, scale, out)
}

crate::simd::dispatch! {
    /// [`quantize_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    fn quantize_at(x: &[f32], scale: f32, out: &mut [i8]) => quantize_portable
}

#[inline(always)]
fn quantize_portable(x: &[f32], scale: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        // After the magic addition the integer sits in the low mantissa bits (the exponent
        // is fixed for |v| <= 2^22), so its low byte is the two's complement i8: no float to
        // int conversion, which would not vectorise on baseline x86-64.
        let r = (v / scale).clamp(-127.0, 127.0) + MAGIC;
        *o = r.to_bits() as u8 as i8;
    }
}

/// Quantizes `x` with one scale per element (a row of per-channel scales):
/// `clamp(round_half_even(x[c] / div[c]), -127, 127)`. Every `div[c]` must be non-zero: a
/// channel whose scale is 0 (section 1: its values are zero or subnormal) passes 1, which
/// rounds each of its values to 0 as the contract says.
pub(crate) fn quantize_with_divisors(x: &[f32], div: &[f32], out: &mut [i8]) {
    debug_assert!(x.len() == out.len() && x.len() == div.len());
    quantize_divisors_at(crate::simd::level(), x, div, out)
}

crate::simd::dispatch! {
    /// [`quantize_divisors_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    fn quantize_divisors_at(x: &[f32], div: &[f32], out: &mut [i8]) => quantize_divisors_portable
}

#[inline(always)]
fn quantize_divisors_portable(x: &[f32], div: &[f32], out: &mut [i8]) {
    for ((o, &v), &s) in out.iter_mut().zip(x).zip(div) {
        // The same magic-number rounding as `quantize_portable`.
        let r = (v / s).clamp(-127.0, 127.0) + MAGIC;
        *o = r.to_bits() as u8 as i8;
    }
}

/// [`quantize_with_divisors`] of `x - mean` (an f32 subtraction per element, as smoothing
/// defines it) without writing the differences anywhere.
pub(crate) fn quantize_centered(x: &[f32], mean: &[f32], div: &[f32], out: &mut [i8]) {
    debug_assert!(x.len() == out.len() && x.len() == div.len() && x.len() == mean.len());
    quantize_centered_at(crate::simd::level(), x, mean, div, out)
}

crate::simd::dispatch! {
    /// [`quantize_centered_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    fn quantize_centered_at(x: &[f32], mean: &[f32], div: &[f32], out: &mut [i8])
        => quantize_centered_portable
}

#[inline(always)]
fn quantize_centered_portable(x: &[f32], mean: &[f32], div: &[f32], out: &mut [i8]) {
    for (((o, &v), &mu), &s) in out.iter_mut().zip(x).zip(mean).zip(div) {
        let r = ((v - mu) / s).clamp(-127.0, 127.0) + MAGIC;
        *o = r.to_bits() as u8 as i8;
    }
}

/// The divisors [`quantize_with_divisors`] takes for per-channel `scales` (0 becomes 1).
/// (`scales` of one entry gives `d` copies of it.)
pub(crate) fn divisors_of(scales: &[f32], d: usize, out: &mut Vec<f32>) {
    out.clear();
    let div = |s: f32| if s == 0.0 { 1.0 } else { s };
    match scales {
        [s] => out.resize(d, div(*s)),
        _ => out.extend(scales.iter().map(|&s| div(s))),
    }
}

/// NEON versions of the two passes (the portable loops do not vectorise well on aarch64: the
/// maximum came out as scalar code, and the magic-number rounding needs a narrowing chain that
/// FCVTNS + saturating narrows do in fewer instructions). Same results bit for bit: FCVTNS
/// rounds half to even like the magic addition, and clamping after rounding equals clamping
/// before it because the bounds are integers.
#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::*;

    /// See [`super::max_abs_bits`].
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn max_abs_bits(x: &[f32]) -> u32 {
        let mask = vdupq_n_u32(0x7fff_ffff);
        let mut m = [vdupq_n_u32(0); 4];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            // SAFETY: the chunk has 16 floats.
            let v = unsafe { vld1q_u32_x4(c.as_ptr().cast()) };
            m[0] = vmaxq_u32(m[0], vandq_u32(v.0, mask));
            m[1] = vmaxq_u32(m[1], vandq_u32(v.1, mask));
            m[2] = vmaxq_u32(m[2], vandq_u32(v.2, mask));
            m[3] = vmaxq_u32(m[3], vandq_u32(v.3, mask));
        }
        let all = vmaxq_u32(vmaxq_u32(m[0], m[1]), vmaxq_u32(m[2], m[3]));
        chunks
            .remainder()
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .fold(vmaxvq_u32(all), u32::max)
    }

    /// See [`super::quantize_with_scale`] (`scale != 0`).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_with_scale(x: &[f32], scale: f32, out: &mut [i8]) {
        let s = vdupq_n_f32(scale);
        let lo = vdupq_n_s8(-127);
        let mut ins = x.chunks_exact(16);
        let mut outs = out.chunks_exact_mut(16);
        for (c, o) in (&mut ins).zip(&mut outs) {
            // SAFETY: the chunk has 16 floats.
            let v = unsafe { vld1q_f32_x4(c.as_ptr()) };
            let r = |v| vcvtnq_s32_f32(vdivq_f32(v, s));
            let h0 = vqmovn_high_s32(vqmovn_s32(r(v.0)), r(v.1));
            let h1 = vqmovn_high_s32(vqmovn_s32(r(v.2)), r(v.3));
            let b = vmaxq_s8(vqmovn_high_s16(vqmovn_s16(h0), h1), lo);
            // SAFETY: the output chunk has 16 bytes.
            unsafe { vst1q_s8(o.as_mut_ptr(), b) };
        }
        super::quantize_portable(ins.remainder(), scale, outs.into_remainder());
    }
}

/// 1.5 * 2^23: adding it to |v| <= 2^22 leaves only integer bits, and IEEE addition rounds half
/// to even, so this is the contract's round_half_even without a per-element `rintf` call (plain
/// `f32::round_ties_even` is one on baseline x86-64, which made quantization a third of the
/// IntAttention run time). Clamping before rounding gives the same result as the contract's
/// round-then-clamp because the bounds are integers and rounding is monotone.
const MAGIC: f32 = 12_582_912.0;

/// The quantizer's rounding as a float, for the tests that check it against `round_ties_even`.
#[cfg(test)]
fn round_half_even_small(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// The contract's section 1: `s = max|x| / 127`, `q = clamp(round_half_even(x / s), -127,
/// 127)`. An all-zero tensor is valid and gives all-zero `q` with scale 0 (so does one whose
/// largest magnitude is subnormal).
///
/// # Errors
/// [`Error::NonFinite`] for a NaN or an infinity; [`Error::Allocation`] if the int8 copy
/// cannot be allocated.
pub fn quantize_symmetric(x: &[f32]) -> Result<(Vec<i8>, f32)> {
    let scale = symmetric_scale(x)?;
    let mut q = Vec::new();
    q.try_reserve_exact(x.len())
        .map_err(|_| Error::Allocation {
            what: "the quantized tensor",
            bytes: x.len(),
        })?;
    q.resize(x.len(), 0i8);
    quantize_with_scale(x, scale, &mut q);
    Ok((q, scale))
}

/// The scale of a largest magnitude given as bits (`max_abs_bits`): `max / 127`, 0 when the
/// largest magnitude is 0 or subnormal (the contract counts those as zero).
pub(crate) fn scale_of_max_bits(max_bits: u32) -> f32 {
    let max = f32::from_bits(max_bits);
    if max < f32::MIN_POSITIVE {
        0.0
    } else {
        max / 127.0
    }
}

impl QTensor {
    /// Quantizes a float tensor per the contract's section 1.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for a NaN or an infinity; [`Error::Allocation`] if the int8 copy
    /// cannot be allocated.
    pub fn quantize(x: &[f32]) -> Result<Self> {
        let (data, scale) = quantize_symmetric(x)?;
        Ok(QTensor { data, scale })
    }

    /// Wraps int8 data a caller already holds (any i8 values, -128 included).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless the scale is finite and non-negative.
    pub fn from_parts(data: Vec<i8>, scale: f32) -> Result<Self> {
        if !scale.is_finite() || scale < 0.0 {
            return crate::error::invalid("quantization scale", scale, "finite and >= 0");
        }
        Ok(QTensor { data, scale })
    }

    /// The int8 values.
    pub fn data(&self) -> &[i8] {
        &self.data
    }

    /// The scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The values and the scale.
    pub fn into_parts(self) -> (Vec<i8>, f32) {
        (self.data, self.scale)
    }

    /// `data[i] * scale` for every element.
    pub fn dequantize(&self) -> Vec<f32> {
        self.data.iter().map(|&q| q as f32 * self.scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tensor_is_valid() {
        let (q, s) = quantize_symmetric(&[0.0; 7]).unwrap();
        assert_eq!(s, 0.0);
        assert!(q.iter().all(|&v| v == 0));
    }

    #[test]
    fn max_maps_to_127_and_ties_go_to_even() {
        let (q, s) = quantize_symmetric(&[-2.54, 2.54, 0.01, 0.03, -0.05]).unwrap();
        assert_eq!(s, 2.54f32 / 127.0);
        assert_eq!(q[0], -127);
        assert_eq!(q[1], 127);
        // 0.01 / 0.02 = 0.5 -> 0 (even), 0.03 / 0.02 = 1.5 -> 2, -0.05/0.02 = -2.5 -> -2
        let expect: Vec<i8> = [0.01f32, 0.03, -0.05]
            .iter()
            .map(|&v| (v / s).round_ties_even() as i8)
            .collect();
        assert_eq!(&q[2..], &expect[..]);
    }

    #[test]
    fn ties_to_even_exactly() {
        // scale 1.0: max 127
        let (q, s) = quantize_symmetric(&[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]).unwrap();
        assert_eq!(s, 1.0);
        assert_eq!(q, vec![127, 0, 2, 2, 0, -2]);
    }

    #[test]
    fn never_produces_minus_128() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.731).sin() * 3.3)
            .collect();
        let (q, _) = quantize_symmetric(&x).unwrap();
        assert!(q.iter().all(|&v| v >= -127));
    }

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        // Every multiple of 1/64 in [-130, 130] (all ties included) and a sweep of odd values.
        for i in -130 * 64..=130 * 64 {
            let v = i as f32 / 64.0;
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
        for i in 0..100_000 {
            let v = (i as f32 * 0.001_273_1).sin() * 127.0;
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn quantizer_equals_spec_formula() {
        let x: Vec<f32> = (0..50_000)
            .map(|i| match i % 5 {
                0 => (i as f32 * 0.731).sin() * 3.3,
                1 => (i % 255) as f32 - 127.0 + 0.5,
                2 => -((i % 300) as f32) * 0.5,
                3 => 1e-30 * i as f32,
                _ => (i as f32).sqrt(),
            })
            .collect();
        let (q, s) = quantize_symmetric(&x).unwrap();
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, max / 127.0);
        for (&v, &got) in x.iter().zip(&q) {
            let want = (v / s).round_ties_even().clamp(-127.0, 127.0) as i8;
            assert_eq!(got, want, "{v}");
        }
        let e = quantize_symmetric(&[0.0, -0.0, 3.0, f32::NAN, 1.0]).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 3, .. }), "{e}");
    }

    #[test]
    fn nan_and_inf_are_errors() {
        assert!(matches!(
            quantize_symmetric(&[1.0, f32::NAN]),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(quantize_symmetric(&[f32::INFINITY]).is_err());
        assert!(quantize_symmetric(&[f32::NEG_INFINITY, 0.0]).is_err());
    }

    /// The dispatched passes (NEON on aarch64) against the portable loops, element for element,
    /// on random tensors, exact ties, the clamp edges, zeros, subnormals, NaN and infinities.
    fn check_passes(x: &[f32]) {
        assert_eq!(max_abs_bits(x), max_abs_bits_portable(x), "max of {x:?}");
        for level in crate::simd::levels() {
            assert_eq!(
                max_abs_bits_at(level, x),
                max_abs_bits_portable(x),
                "{level:?}"
            );
        }
        if !x.iter().all(|v| v.is_finite()) {
            // Never quantized (the library rejects them first); NaN payloads would differ.
            return;
        }
        let scale = f32::from_bits(max_abs_bits_portable(x)) / 127.0;
        for s in [scale, scale * 0.5, 1.0, 1e-40, 3e38] {
            if s == 0.0 {
                continue;
            }
            let (mut a, mut b) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            quantize_with_scale(x, s, &mut a);
            quantize_portable(x, s, &mut b);
            assert_eq!(a, b, "scale {s:e} of {x:?}");
            for level in crate::simd::levels() {
                quantize_at(level, x, s, &mut a);
                assert_eq!(a, b, "{level:?}, scale {s:e} of {x:?}");
            }
        }
    }

    #[test]
    fn dispatched_passes_match_portable_ones_on_edges() {
        let mut edge = vec![
            0.0f32,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            126.5,
            -126.5,
            127.0,
            -127.0,
            127.49,
            -127.6,
            1e-45,
            -1e-45,
            1e-38,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for n in [0, 1, 15, 16, 17, 33, 64] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 - 8.0) * 0.5).collect();
            check_passes(&x);
            check_passes(&edge[..n.min(edge.len())]);
        }
        check_passes(&edge);
        edge.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        // Non-finite values: max_abs_bits must see them wherever they sit.
        for at in 0..edge.len() {
            let mut y = vec![1.0f32; 40];
            y[at % 40] = edge[at];
            check_passes(&y);
        }
    }

    proptest::proptest! {
        #[test]
        fn dispatched_passes_match_portable_ones(
            x in proptest::collection::vec(proptest::num::f32::ANY, 0..100),
            y in proptest::collection::vec(-1000.0f32..1000.0, 0..100),
        ) {
            check_passes(&x);
            check_passes(&y);
        }
    }
}
