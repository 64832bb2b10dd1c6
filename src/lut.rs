//! IndexSoftmax's constants (docs/numerics.md, section 3): the exponent table and the integer
//! threshold `T`, exactly as the contract defines them. The lowest layer: the scalar reference,
//! the kernels and the operations all read the table from here.

use crate::error::{invalid, Result};

/// The contract's default clip `c`, in logit units.
pub const DEFAULT_CLIP: f32 = 6.6;
/// The contract's default table bits `b` (N = 32 entries).
pub const DEFAULT_TABLE_BITS: u32 = 5;
/// Largest integer threshold; a zero scale product maps here.
pub const MAX_THRESHOLD: i32 = 1 << 30;
/// Rows must be shorter than this so that `255 * cols` fits the u32 row sum.
pub const MAX_ROW_LEN: usize = 1 << 24;

/// The exponent table: `N = 2^b` entries, `LUT[i] ~ 255 exp(-c i / (N - 1))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lut {
    entries: [u8; 256],
    len: usize,
}

impl Lut {
    /// docs/numerics.md section 3: `LUT[0] = 255`, `LUT[N-1] = 0`, otherwise
    /// `round_half_even(255 exp(-c i / (N - 1)))`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidParameter`] for table bits outside `4..=8` or a clip that is not
    /// finite and positive.
    pub fn new(table_bits: u32, clip: f32) -> Result<Self> {
        check_bits_and_clip(table_bits, clip)?;
        Ok(Self::build(table_bits, clip))
    }

    /// [`Lut::new`] for parameters already checked.
    pub(crate) fn build(table_bits: u32, clip: f32) -> Self {
        debug_assert!(check_bits_and_clip(table_bits, clip).is_ok());
        let n = 1usize << table_bits;
        let mut entries = [0u8; 256];
        entries[0] = 255;
        for (i, e) in entries.iter_mut().enumerate().take(n - 1).skip(1) {
            let x = 255.0 * (-(clip as f64) * i as f64 / (n - 1) as f64).exp();
            *e = x.round_ties_even() as u8;
        }
        entries[n - 1] = 0;
        Lut { entries, len: n }
    }

    /// The table entries, `N` of them.
    pub fn entries(&self) -> &[u8] {
        &self.entries[..self.len]
    }

    /// The whole 256-byte backing array (entries past `N` are 0); handy for SIMD lookups.
    pub fn padded(&self) -> &[u8; 256] {
        &self.entries
    }

    /// `N - 1`, the largest index.
    pub fn max_index(&self) -> u32 {
        (self.len - 1) as u32
    }
}

pub(crate) fn check_bits_and_clip(table_bits: u32, clip: f32) -> Result<()> {
    if !(4..=8).contains(&table_bits) {
        return invalid("table bits", table_bits, "4..=8");
    }
    if !clip.is_finite() || clip <= 0.0 {
        return invalid("clip", clip, "finite and > 0");
    }
    Ok(())
}

fn check_scales(s_q: f32, s_k: f32, scale: f32) -> Result<()> {
    for (name, v) in [("s_q", s_q), ("s_k", s_k)] {
        if !v.is_finite() || v < 0.0 {
            return invalid(name, v, "finite and >= 0");
        }
    }
    if !scale.is_finite() || scale <= 0.0 {
        return invalid("softmax scale", scale, "finite and > 0");
    }
    Ok(())
}

/// docs/numerics.md section 3: `T = round_half_up(c / (s_q s_k scale))` clamped to `[1, 2^30]`; a zero
/// scale product gives `2^30`.
pub fn threshold_exact(clip: f32, s_q: f32, s_k: f32, scale: f32) -> Result<i32> {
    check_scales(s_q, s_k, scale)?;
    check_bits_and_clip(DEFAULT_TABLE_BITS, clip)?;
    Ok(threshold_of_checked(clip, s_q, s_k, scale))
}

/// [`threshold_exact`] for a clip that [`Lut::new`] accepted and a finite, positive softmax
/// `scale` (both checked once per call): the engine's per-row thresholds (per-row Q scales),
/// where checking them again was most of the cost. A zero or non-finite (a row with a NaN or
/// infinity, which the call reports as an error) `s_q` or `s_k` gives `2^30`, what
/// [`threshold_exact`]'s caller used for its error.
pub(crate) fn threshold_of_checked(clip: f32, s_q: f32, s_k: f32, scale: f32) -> i32 {
    debug_assert!(scale.is_finite() && scale > 0.0);
    debug_assert!(check_bits_and_clip(DEFAULT_TABLE_BITS, clip).is_ok());
    if !(s_q.is_finite() && s_k.is_finite() && s_q > 0.0 && s_k > 0.0) {
        return MAX_THRESHOLD;
    }
    threshold_fast(clip, s_q, s_k, scale)
        .unwrap_or_else(|| threshold_rational(clip, s_q, s_k, scale))
}

/// [`threshold_exact`] in three f64 operations where they decide it (positive scales): `s_q s_k`
/// is exact (48 bits), the product with `scale` and the quotient round once each, so `q` is
/// within a relative 2^-52 of the exact `x = c / (s_q s_k scale)`, i.e. within 2^-21 for
/// `x < 2^31`. `round_half_up(x) = floor(q + 1/2)` then holds unless `q` lies within 2^-20 of
/// a half-integer; those (and quotients near the clamps) return `None`. The engine computes a
/// threshold per query row with per-row Q scales, where the u128 path cost about 3 % of a
/// call.
fn threshold_fast(clip: f32, s_q: f32, s_k: f32, scale: f32) -> Option<i32> {
    let q = clip as f64 / ((s_q as f64 * s_k as f64) * scale as f64);
    // (NaN cannot occur: the scales are positive and finite.)
    if q.is_nan() || q >= (1u64 << 31) as f64 {
        return None;
    }
    let half = q - q.floor();
    if (half - 0.5).abs() <= 1.0 / (1u64 << 20) as f64 {
        return None;
    }
    let t = (q + 0.5).floor() as i64;
    Some(t.clamp(1, MAX_THRESHOLD as i64) as i32)
}

/// [`threshold_exact`] in exact rational arithmetic (positive scales).
fn threshold_rational(clip: f32, s_q: f32, s_k: f32, scale: f32) -> i32 {
    // Exact rational arithmetic on the f32 inputs: the product of three 24-bit mantissas
    // needs 72 bits, so an f64 quotient can land on the wrong side of a k + 1/2 tie.
    let (mc, ec) = f32_parts(clip);
    let (mq, eq) = f32_parts(s_q);
    let (mk, ek) = f32_parts(s_k);
    let (ms, es) = f32_parts(scale);
    let p = mq as u128 * mk as u128 * ms as u128;
    let c = mc as u128;
    // c / (s_q s_k scale) = c 2^shift / p; round_half_up(x) = floor((2 c' + p') / (2 p')).
    let shift = ec - (eq + ek + es);
    let (num, den) = if shift >= 0 {
        // Past 2^32 the clamp decides; this also keeps c << shift inside u128.
        if bit_len(c) as i32 + shift > bit_len(p) as i32 + 32 {
            return MAX_THRESHOLD;
        }
        (c << shift, p)
    } else {
        // Once p 2^-shift > 4 c the quotient is below 1/2 and rounds to 0 (clamped to 1).
        if bit_len(p) as i32 - shift > bit_len(c) as i32 + 3 {
            return 1;
        }
        (c, p << -shift)
    };
    let t = (2 * num + den) / (2 * den);
    t.clamp(1, MAX_THRESHOLD as u128) as i32
}

/// A finite, non-negative f32 as `m 2^e` with an integer mantissa (subnormals included).
fn f32_parts(x: f32) -> (u32, i32) {
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0 {
        (frac, -149)
    } else {
        (frac | 1 << 23, exp - 150)
    }
}

fn bit_len(x: u128) -> u32 {
    128 - x.leading_zeros()
}

/// docs/numerics.md section 3, paper-simulation rule: `T_sim = trunc(((c / s_q) / s_k) / scale)` in f32,
/// clamped to `[1, 2^30]` like the exact rule (the simulation itself would divide by zero).
pub fn threshold_paper_sim(clip: f32, s_q: f32, s_k: f32, scale: f32) -> Result<i32> {
    check_scales(s_q, s_k, scale)?;
    check_bits_and_clip(DEFAULT_TABLE_BITS, clip)?;
    let t = ((clip / s_q) / s_k) / scale;
    if t.is_nan() {
        return Ok(MAX_THRESHOLD);
    }
    Ok(t.trunc().clamp(1.0, MAX_THRESHOLD as f32) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// The f64 path, wherever it answers, answers what exact rational arithmetic does.
        #[test]
        fn fast_threshold_agrees_with_rational(
            clip in prop_oneof![Just(6.6f32), 0.01f32..64.0],
            s_q in prop_oneof![1e-30f32..1e3, (1u32..0x7f00_0000).prop_map(f32::from_bits)],
            s_k in prop_oneof![1e-30f32..1e3, (1u32..0x7f00_0000).prop_map(f32::from_bits)],
            scale in prop_oneof![Just(0.125f32), Just(0.088_388_35), 1e-3f32..4.0],
        ) {
            if let Some(t) = threshold_fast(clip, s_q, s_k, scale) {
                prop_assert_eq!(t, threshold_rational(clip, s_q, s_k, scale));
            }
        }
    }

    /// Quotients at and next to half-integers: the fast path declines or agrees.
    #[test]
    fn fast_threshold_near_ties() {
        let mut declined = 0;
        for k in 1..5000u32 {
            // c / (s_q s_k scale) = k + 1/2 exactly: s_q = 2c / (2k + 1) rounded, nudged.
            let clip = 6.5f32;
            for nudge in [-2i32, -1, 0, 1, 2] {
                let base = (2.0 * clip as f64 / (2 * k + 1) as f64) as f32;
                let s_q = f32::from_bits((base.to_bits() as i32 + nudge) as u32);
                match threshold_fast(clip, s_q, 1.0, 1.0) {
                    Some(t) => assert_eq!(t, threshold_rational(clip, s_q, 1.0, 1.0)),
                    None => declined += 1,
                }
            }
        }
        // Typical scales almost never need the exact path.
        let mut typical = 0;
        for i in 1..10_000u32 {
            let s_q = i as f32 * 1e-4;
            if threshold_fast(6.6, s_q, 0.01, 0.125).is_none() {
                typical += 1;
            }
        }
        assert!(typical < 10, "{typical} declined");
        assert!(declined < 25_000);
    }
}
