//! `intattention softmax`: IndexSoftmax over an int32 score matrix from a .npy file, with the
//! threshold given directly or derived from quantization scales.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::npy;
use intattention::lut::{DEFAULT_CLIP, DEFAULT_TABLE_BITS};
use intattention::{index_softmax, IndexSoftmaxParams, ScoreMask, SoftmaxVariant};

use super::check_paths;

#[derive(Args, Debug)]
pub struct SoftmaxArgs {
    /// Scores: int32, 2-D [rows, cols].
    #[arg(long)]
    pub scores: PathBuf,
    #[command(flatten)]
    pub threshold: ThresholdArgs,
    /// normalized, deferred or paper-sim.
    #[arg(long)]
    pub variant: SoftmaxVariant,
    /// Table bits b, 4..=8.
    #[arg(long, default_value_t = DEFAULT_TABLE_BITS)]
    pub bits: u32,
    /// Clip c in logit units.
    #[arg(long, default_value_t = DEFAULT_CLIP, allow_negative_numbers = true)]
    pub clip: f32,
    /// Mask: bool (or uint8, nonzero = keep) shaped like the scores; masked entries give 0.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Output probabilities: uint8 [rows, cols] (Deferred: the unnormalized table values).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the per-row sums of the table values: uint32 [rows]. Written together with
    /// --out: either both files are replaced or neither is.
    #[arg(long)]
    pub sums: Option<PathBuf>,
}

/// Exactly one way to set the threshold.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ThresholdArgs {
    /// Integer threshold T (score units), 1..=2^30.
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<i32>,
    /// Quantization scales and head dimension `s_q,s_k,d`: T from c / (s_q s_k / sqrt(d)).
    #[arg(long, allow_hyphen_values = true)]
    pub scales: Option<Scales>,
}

#[derive(Clone, Copy, Debug)]
pub struct Scales {
    pub s_q: f32,
    pub s_k: f32,
    pub head_dim: usize,
}

impl FromStr for Scales {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [sq, sk, d] = parts[..] else {
            bail!("expected three comma-separated values s_q,s_k,d, got '{s}'");
        };
        let scale = |name: &str, x: &str| -> Result<f32> {
            x.parse::<f32>()
                .map_err(|e| anyhow!("{name} '{x}' is not a number: {e}"))
        };
        let head_dim: usize = d
            .parse()
            .map_err(|e| anyhow!("d '{d}' is not a positive integer: {e}"))?;
        if head_dim == 0 {
            bail!("d must be at least 1");
        }
        Ok(Scales {
            s_q: scale("s_q", sq)?,
            s_k: scale("s_k", sk)?,
            head_dim,
        })
    }
}

pub fn run(a: SoftmaxArgs) -> Result<()> {
    let params = match (a.threshold.threshold, a.threshold.scales) {
        (Some(t), _) => IndexSoftmaxParams::new(t, a.variant)?
            .with_table_bits(a.bits)?
            .with_clip(a.clip)?,
        (None, Some(s)) => IndexSoftmaxParams::from_scales(
            s.s_q,
            s.s_k,
            1.0 / (s.head_dim as f32).sqrt(),
            a.bits,
            a.clip,
            a.variant,
        )?,
        (None, None) => bail!("give --threshold or --scales"),
    };
    let mut inputs = vec![("--scores", a.scores.as_path())];
    inputs.extend(a.mask.as_deref().map(|m| ("--mask", m)));
    let mut outputs = vec![("--out", a.out.as_path())];
    outputs.extend(a.sums.as_deref().map(|s| ("--sums", s)));
    check_paths(&outputs, &inputs)?;
    let scores = npy::read_i32(&a.scores)?;
    scores.require_rank(&a.scores.display().to_string(), &[2])?;
    let (rows, cols) = (scores.shape[0], scores.shape[1]);
    let keep = match &a.mask {
        Some(path) => Some(load_mask(path, &scores.shape)?),
        None => None,
    };
    let mask = keep.as_deref().map_or(ScoreMask::None, ScoreMask::Dense);
    let mut p = vec![0u8; rows * cols];
    let sums = index_softmax(&scores.data, rows, cols, &params, mask, &mut p)?;
    let mut files = npy::Outputs::new();
    files.stage(&a.out, &[rows, cols], &p)?;
    if let Some(path) = &a.sums {
        files.stage(path, &[rows], sums.as_slice())?;
    }
    files.commit()?;
    Ok(())
}

/// A dense keep-mask from a bool or uint8 file shaped like the scores.
fn load_mask(path: &Path, shape: &[usize]) -> Result<Vec<bool>> {
    let (mshape, keep) = match npy::read_bool(path) {
        Ok(m) => (m.shape, m.data),
        Err(bool_err) => match npy::read_u8(path) {
            Ok(m) => (m.shape, m.data.iter().map(|&x| x != 0).collect()),
            Err(_) => {
                return Err(bool_err).context("the mask must be bool or uint8");
            }
        },
    };
    if mshape != shape {
        bail!(
            "{} has shape {mshape:?} but the scores have shape {shape:?}",
            path.display()
        );
    }
    Ok(keep)
}
