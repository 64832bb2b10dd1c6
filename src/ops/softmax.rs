//! IndexSoftmax as a standalone operation (docs/numerics.md, section 3): its parameters, the
//! masks it takes, and the row-wise operation over an S32 score block on a chosen kernel.

use std::fmt;
use std::str::FromStr;

use crate::error::{check_len, invalid, mul, Error, Result};
use crate::kernels::Kernel;
use crate::lut::{
    check_bits_and_clip, threshold_exact, threshold_paper_sim, Lut, DEFAULT_CLIP,
    DEFAULT_TABLE_BITS, MAX_THRESHOLD,
};

/// How IndexSoftmax finishes a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SoftmaxVariant {
    /// `P = round_half_up(255 e / sum)`: the paper's and ACL's output, scale 1/255.
    Normalized,
    /// `P = e` and the row sum is returned: the division happens once per output row.
    Deferred,
    /// Bit-exact with the authors' PyTorch simulation (f32 threshold and index arithmetic).
    PaperSim,
}

impl SoftmaxVariant {
    /// Every finish.
    pub const ALL: [SoftmaxVariant; 3] = [
        SoftmaxVariant::Normalized,
        SoftmaxVariant::Deferred,
        SoftmaxVariant::PaperSim,
    ];

    /// The name the CLI and reports use.
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
            _ => invalid("softmax variant", s, "normalized, deferred or paper-sim"),
        }
    }
}

/// Everything IndexSoftmax needs besides the scores: the threshold `T`, the table (`b`, `c`)
/// and the finish. Built only through constructors that check every field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexSoftmaxParams {
    threshold: i32,
    table_bits: u32,
    clip: f32,
    variant: SoftmaxVariant,
}

impl IndexSoftmaxParams {
    /// Parameters for callers working directly on S32 scores, with the contract's default `b`
    /// and `c`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a threshold outside `[1, 2^30]`.
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

    /// Computes `T` from the quantization scales and the softmax scale with the variant's rule
    /// (exact for `Normalized` and `Deferred`, f32 truncation for `PaperSim`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for table bits outside `4..=8`, a clip that is not finite
    /// and positive, negative or non-finite scales.
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

    /// The same parameters with `b` table bits.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] outside `4..=8`.
    pub fn with_table_bits(mut self, table_bits: u32) -> Result<Self> {
        self.table_bits = table_bits;
        self.validate()?;
        Ok(self)
    }

    /// The same parameters with clip `c`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless finite and positive.
    pub fn with_clip(mut self, clip: f32) -> Result<Self> {
        self.clip = clip;
        self.validate()?;
        Ok(self)
    }

    /// The integer threshold `T` (for `PaperSim`, `T_sim`), in `[1, 2^30]`.
    pub fn threshold(&self) -> i32 {
        self.threshold
    }

    /// Table bits `b`, in `4..=8`.
    pub fn table_bits(&self) -> u32 {
        self.table_bits
    }

    /// Clip `c`, in logit units.
    pub fn clip(&self) -> f32 {
        self.clip
    }

    /// The finish.
    pub fn variant(&self) -> SoftmaxVariant {
        self.variant
    }

    fn validate(&self) -> Result<()> {
        check_bits_and_clip(self.table_bits, self.clip)?;
        if !(1..=MAX_THRESHOLD).contains(&self.threshold) {
            return invalid("threshold T", self.threshold, "in [1, 2^30]");
        }
        Ok(())
    }

    /// The exponent table of these parameters.
    pub fn lut(&self) -> Lut {
        Lut::build(self.table_bits, self.clip)
    }
}

/// Which score entries take part in the softmax.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
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
pub struct RowSums(Vec<u32>);

impl RowSums {
    /// The sums, one per row.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// The sums as a vector.
    pub fn into_vec(self) -> Vec<u32> {
        self.0
    }
}

/// IndexSoftmax over a row-major `rows x cols` block of S32 scores, writing U8 probabilities,
/// on the fastest kernel ([`index_softmax_on`] takes one).
///
/// `Normalized` and `PaperSim` write P with scale 1/255; `Deferred` writes the table values `e`
/// and the returned [`RowSums`] are the per-row divisors. Masked entries are 0; a fully masked
/// row is all zeros with sum 0.
///
/// # Errors
/// [`Error::LengthMismatch`] for buffers or masks that do not fit `rows x cols`;
/// [`Error::InvalidParameter`] for a prefix length past `cols`; [`Error::LimitExceeded`] for
/// rows of `2^24` entries or more (the u32 row sum must stay exact).
pub fn index_softmax(
    scores: &[i32],
    rows: usize,
    cols: usize,
    params: &IndexSoftmaxParams,
    mask: ScoreMask<'_>,
    out: &mut [u8],
) -> Result<RowSums> {
    index_softmax_on(Kernel::best(), scores, rows, cols, params, mask, out)
}

/// [`index_softmax`] on a given kernel.
///
/// # Errors
/// As [`index_softmax`].
pub fn index_softmax_on(
    kernel: Kernel,
    scores: &[i32],
    rows: usize,
    cols: usize,
    params: &IndexSoftmaxParams,
    mask: ScoreMask<'_>,
    out: &mut [u8],
) -> Result<RowSums> {
    let n = mul("scores", rows, cols)?;
    check_len("scores", n, scores.len())?;
    check_len("output", n, out.len())?;
    crate::kernels::row_len_limit(cols)?;
    match mask {
        ScoreMask::None => {}
        ScoreMask::Prefix(lens) => {
            check_len("prefix mask", rows, lens.len())?;
            if let Some(&l) = lens.iter().find(|&&l| l > cols) {
                return invalid("prefix mask length", l, "at most the number of columns");
            }
        }
        ScoreMask::Dense(keep) => check_len("dense mask", n, keep.len())?,
    }
    let lut = params.lut();
    let kernel = kernel.imp();
    let t = params.threshold;
    let mut sums = Vec::with_capacity(rows);
    for i in 0..rows {
        let row = &scores[i * cols..(i + 1) * cols];
        let o = &mut out[i * cols..(i + 1) * cols];
        let sum = match (params.variant, mask) {
            (SoftmaxVariant::PaperSim, ScoreMask::Dense(keep)) => {
                kernel.paper_sim_row(row, &keep[i * cols..(i + 1) * cols], &lut, t, o)
            }
            (SoftmaxVariant::PaperSim, _) => {
                let keep = prefix_keep(mask, i, cols);
                kernel.paper_sim_row(row, &keep, &lut, t, o)
            }
            (variant, ScoreMask::Dense(keep)) => {
                let keep = &keep[i * cols..(i + 1) * cols];
                let sum = kernel.index_softmax_row_masked(row, keep, &lut, t, o);
                if variant == SoftmaxVariant::Normalized {
                    kernel.normalize_row(o, sum);
                }
                sum
            }
            (variant, _) => {
                let valid = match mask {
                    ScoreMask::Prefix(lens) => lens[i],
                    _ => cols,
                };
                let sum = kernel.index_softmax_row(row, valid, &lut, t, o);
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

/// The keep mask of row `i` of a prefix (or absent) mask.
fn prefix_keep(mask: ScoreMask<'_>, i: usize, cols: usize) -> Vec<bool> {
    let valid = match mask {
        ScoreMask::Prefix(lens) => lens[i],
        _ => cols,
    };
    (0..cols).map(|j| j < valid).collect()
}
