//! IndexSoftmax (SPEC section 3): parameters, the exponent table, masks and the public
//! row-wise operation. The scalar arithmetic lives in [`crate::reference`]; this module checks
//! inputs and dispatches rows to the active kernel.

use std::fmt;
use std::str::FromStr;

use crate::error::{param_err, shape_err, Error, Result};
use crate::kernels;
use crate::reference;

/// SPEC's default clip `c`, in logit units.
pub const DEFAULT_CLIP: f32 = 6.6;
/// SPEC's default table bits `b` (N = 32 entries).
pub const DEFAULT_TABLE_BITS: u32 = 5;
/// Largest integer threshold; a zero scale product maps here.
pub const MAX_THRESHOLD: i32 = 1 << 30;
/// Rows must be shorter than this so that `255 * cols` fits the u32 row sum.
pub const MAX_ROW_LEN: usize = 1 << 24;

/// How IndexSoftmax finishes a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoftmaxVariant {
    /// `P = round_half_up(255 e / sum)`: the paper's and ACL's output, scale 1/255.
    Normalized,
    /// `P = e` and the row sum is returned: the division happens once per output row.
    Deferred,
    /// Bit-exact with the authors' PyTorch simulation (f32 threshold and index arithmetic).
    PaperSim,
}

impl SoftmaxVariant {
    pub const ALL: [SoftmaxVariant; 3] = [
        SoftmaxVariant::Normalized,
        SoftmaxVariant::Deferred,
        SoftmaxVariant::PaperSim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SoftmaxVariant::Normalized => "normalized",
            SoftmaxVariant::Deferred => "deferred",
            SoftmaxVariant::PaperSim => "paper-sim",
        }
    }
}

impl fmt::Display for SoftmaxVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SoftmaxVariant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "normalized" | "norm" => Ok(SoftmaxVariant::Normalized),
            "deferred" | "defer" => Ok(SoftmaxVariant::Deferred),
            "paper-sim" | "papersim" | "sim" => Ok(SoftmaxVariant::PaperSim),
            _ => param_err(format!(
                "unknown softmax variant '{s}' (expected normalized, deferred or paper-sim)"
            )),
        }
    }
}

/// The exponent table: `N = 2^b` entries, `LUT[i] ~ 255 exp(-c i / (N - 1))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lut {
    entries: [u8; 256],
    len: usize,
}

impl Lut {
    /// SPEC section 3: `LUT[0] = 255`, `LUT[N-1] = 0`, otherwise
    /// `round_half_even(255 exp(-c i / (N - 1)))`.
    pub fn new(table_bits: u32, clip: f32) -> Result<Self> {
        check_bits_and_clip(table_bits, clip)?;
        let n = 1usize << table_bits;
        let mut entries = [0u8; 256];
        entries[0] = 255;
        for (i, e) in entries.iter_mut().enumerate().take(n - 1).skip(1) {
            let x = 255.0 * (-(clip as f64) * i as f64 / (n - 1) as f64).exp();
            *e = x.round_ties_even() as u8;
        }
        entries[n - 1] = 0;
        Ok(Lut { entries, len: n })
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

fn check_bits_and_clip(table_bits: u32, clip: f32) -> Result<()> {
    if !(4..=8).contains(&table_bits) {
        return param_err(format!("table bits must be in 4..=8, got {table_bits}"));
    }
    if !clip.is_finite() || clip <= 0.0 {
        return param_err(format!("clip must be finite and > 0, got {clip}"));
    }
    Ok(())
}

fn check_scales(s_q: f32, s_k: f32, scale: f32) -> Result<()> {
    for (name, v) in [("s_q", s_q), ("s_k", s_k)] {
        if !v.is_finite() || v < 0.0 {
            return param_err(format!("{name} must be finite and >= 0, got {v}"));
        }
    }
    if !scale.is_finite() || scale <= 0.0 {
        return param_err(format!("softmax scale must be finite and > 0, got {scale}"));
    }
    Ok(())
}

/// SPEC section 3: `T = round_half_up(c / (s_q s_k scale))` clamped to `[1, 2^30]`; a zero
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

/// SPEC section 3, paper-simulation rule: `T_sim = trunc(((c / s_q) / s_k) / scale)` in f32,
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

/// Everything IndexSoftmax needs besides the scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexSoftmaxParams {
    /// The integer threshold `T` (for `PaperSim`, `T_sim`), in `[1, 2^30]`.
    pub threshold: i32,
    /// `b`, in `4..=8`.
    pub table_bits: u32,
    /// `c`, in logit units.
    pub clip: f32,
    pub variant: SoftmaxVariant,
}

impl IndexSoftmaxParams {
    /// Parameters for callers working directly on S32 scores, with SPEC's default `b` and `c`.
    pub fn new(threshold: i32, variant: SoftmaxVariant) -> Result<Self> {
        let p = IndexSoftmaxParams {
            threshold,
            table_bits: DEFAULT_TABLE_BITS,
            clip: DEFAULT_CLIP,
            variant,
        };
        p.validate()?;
        Ok(p)
    }

    /// Computes `T` from the quantization scales and the softmax scale, with the variant's rule
    /// (exact for `Normalized`/`Deferred`, f32 truncation for `PaperSim`).
    pub fn from_scales(
        s_q: f32,
        s_k: f32,
        scale: f32,
        table_bits: u32,
        clip: f32,
        variant: SoftmaxVariant,
    ) -> Result<Self> {
        check_bits_and_clip(table_bits, clip)?;
        let threshold = match variant {
            SoftmaxVariant::PaperSim => threshold_paper_sim(clip, s_q, s_k, scale)?,
            _ => threshold_exact(clip, s_q, s_k, scale)?,
        };
        let p = IndexSoftmaxParams {
            threshold,
            table_bits,
            clip,
            variant,
        };
        p.validate()?;
        Ok(p)
    }

    pub fn with_table_bits(mut self, table_bits: u32) -> Result<Self> {
        self.table_bits = table_bits;
        self.validate()?;
        Ok(self)
    }

    pub fn with_clip(mut self, clip: f32) -> Result<Self> {
        self.clip = clip;
        self.validate()?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<()> {
        check_bits_and_clip(self.table_bits, self.clip)?;
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return param_err(format!(
                "threshold T must be in [1, 2^30], got {}",
                self.threshold
            ));
        }
        Ok(())
    }

    pub fn lut(&self) -> Lut {
        Lut::new(self.table_bits, self.clip).expect("validated parameters")
    }
}

/// Which score entries take part in the softmax.
#[derive(Clone, Copy, Debug, Default)]
pub enum ScoreMask<'a> {
    /// Every entry.
    #[default]
    None,
    /// Row `i` keeps its first `lens[i]` entries (causal and key-padding masks are of this form).
    Prefix(&'a [usize]),
    /// `keep[i * cols + j]` says whether entry `(i, j)` takes part.
    Dense(&'a [bool]),
}

/// Per-row sums of the table values `e` (the Deferred divisor; 0 for a fully masked row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSums(pub Vec<u32>);

impl RowSums {
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }
}

/// IndexSoftmax over a row-major `rows x cols` block of S32 scores, writing U8 probabilities.
///
/// `Normalized` and `PaperSim` write P with scale 1/255; `Deferred` writes the table values `e`
/// and the returned [`RowSums`] are the per-row divisors. Masked entries are 0; a fully masked
/// row is all zeros with sum 0.
pub fn index_softmax(
    scores: &[i32],
    rows: usize,
    cols: usize,
    params: &IndexSoftmaxParams,
    mask: ScoreMask<'_>,
    out: &mut [u8],
) -> Result<RowSums> {
    params.validate()?;
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::Shape(format!("{rows} x {cols} overflows")))?;
    if scores.len() != n || out.len() != n {
        return shape_err(format!(
            "index_softmax: {rows} x {cols} needs {n} scores and outputs, got {} and {}",
            scores.len(),
            out.len()
        ));
    }
    if cols >= MAX_ROW_LEN {
        return Err(Error::Unsupported(format!(
            "rows of {cols} entries: the u32 row sum is exact only below 2^24 entries"
        )));
    }
    match mask {
        ScoreMask::None => {}
        ScoreMask::Prefix(lens) => {
            if lens.len() != rows {
                return shape_err(format!(
                    "prefix mask has {} lengths for {rows} rows",
                    lens.len()
                ));
            }
            if let Some(&l) = lens.iter().find(|&&l| l > cols) {
                return shape_err(format!("prefix mask length {l} exceeds {cols} columns"));
            }
        }
        ScoreMask::Dense(keep) => {
            if keep.len() != n {
                return shape_err(format!(
                    "dense mask has {} entries for {rows} x {cols} scores",
                    keep.len()
                ));
            }
        }
    }
    let lut = params.lut();
    let kernel = kernels::active()?;
    let mut sums = Vec::with_capacity(rows);
    for i in 0..rows {
        let row = &scores[i * cols..(i + 1) * cols];
        let o = &mut out[i * cols..(i + 1) * cols];
        let sum = match (params.variant, mask) {
            (SoftmaxVariant::PaperSim, ScoreMask::Dense(keep)) => {
                let k = &keep[i * cols..(i + 1) * cols];
                reference::index_softmax_paper_sim_row(row, |j| k[j], &lut, params.threshold, o)
            }
            (SoftmaxVariant::PaperSim, _) => {
                let valid = prefix_len(mask, i, cols);
                reference::index_softmax_paper_sim_row(
                    row,
                    |j| j < valid,
                    &lut,
                    params.threshold,
                    o,
                )
            }
            (variant, ScoreMask::Dense(keep)) => {
                let k = &keep[i * cols..(i + 1) * cols];
                let sum = reference::index_softmax_row(row, |j| k[j], &lut, params.threshold, o);
                if variant == SoftmaxVariant::Normalized {
                    reference::normalize_row(o, sum);
                }
                sum
            }
            (variant, _) => {
                let valid = prefix_len(mask, i, cols);
                let sum = kernel.index_softmax_row(row, valid, &lut, params.threshold, o);
                if variant == SoftmaxVariant::Normalized {
                    kernel.normalize_row(o, sum);
                }
                sum
            }
        };
        sums.push(sum);
    }
    Ok(RowSums(sums))
}

fn prefix_len(mask: ScoreMask<'_>, row: usize, cols: usize) -> usize {
    match mask {
        ScoreMask::Prefix(lens) => lens[row],
        _ => cols,
    }
}
