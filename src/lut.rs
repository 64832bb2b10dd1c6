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
    if s_q == 0.0 || s_k == 0.0 {
        return Ok(MAX_THRESHOLD);
    }
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
            return Ok(MAX_THRESHOLD);
        }
        (c << shift, p)
    } else {
        // Once p 2^-shift > 4 c the quotient is below 1/2 and rounds to 0 (clamped to 1).
        if bit_len(p) as i32 - shift > bit_len(c) as i32 + 3 {
            return Ok(1);
        }
        (c, p << -shift)
    };
    let t = (2 * num + den) / (2 * den);
    Ok(t.clamp(1, MAX_THRESHOLD as u128) as i32)
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
