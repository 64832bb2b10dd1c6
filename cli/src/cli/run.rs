//! `intattention run`: attention on Q, K, V read from f32 .npy files, output written as f32
//! .npy shaped like Q. Arrays are `[L, d]` (one head) or `[B, H, L, d]`, K and V with
//! `H_kv` heads dividing `H`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::npy::NpyArray;
use intattention::backend;
use intattention::AttnShape;

use super::{check_paths, load_f32, save_f32, AttnOpts};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Queries: f32 [Lq, d] or [B, H, Lq, d].
    #[arg(long)]
    pub q: PathBuf,
    /// Keys: f32 [Lk, d] or [B, H_kv, Lk, d].
    #[arg(long)]
    pub k: PathBuf,
    /// Values: shaped like the keys.
    #[arg(long)]
    pub v: PathBuf,
    #[command(flatten)]
    pub attn: AttnOpts,
    /// Valid key length per batch row (key padding), comma separated: one per batch row.
    #[arg(long = "key-lens", value_delimiter = ',')]
    pub key_lens: Option<Vec<usize>>,
    /// Output file (f32, shaped like Q).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: RunArgs) -> Result<()> {
    check_paths(
        &[("--out", &a.out)],
        &[("--q", &a.q), ("--k", &a.k), ("--v", &a.v)],
    )?;
    let q = load_f32(&a.q)?;
    let k = load_f32(&a.k)?;
    let v = load_f32(&a.v)?;
    let shape = shape_of(&a, &q, &k, &v)?;
    let attn = a.attn.attention(a.key_lens.clone())?;
    let mut runner = backend::prepare(a.attn.backend, &attn, &shape)?;
    let out = runner.run(&q.data, &k.data, &v.data)?;
    save_f32(&a.out, &q.shape, &out)
}

/// The attention shape the three arrays describe, or an error naming the files that disagree.
fn shape_of(
    a: &RunArgs,
    q: &NpyArray<f32>,
    k: &NpyArray<f32>,
    v: &NpyArray<f32>,
) -> Result<AttnShape> {
    let (qn, kn, vn) = (a.q.display(), a.k.display(), a.v.display());
    q.require_rank(&qn.to_string(), &[2, 4])?;
    if k.shape.len() != q.shape.len() {
        bail!(
            "{kn} has shape {:?} but {qn} has shape {:?}: K must have Q's rank",
            k.shape,
            q.shape
        );
    }
    if v.shape != k.shape {
        bail!(
            "{vn} has shape {:?} but {kn} has shape {:?}: V must be shaped like K",
            v.shape,
            k.shape
        );
    }
    let (batch, heads, kv_heads) = if q.shape.len() == 4 {
        (q.shape[0], q.shape[1], k.shape[1])
    } else {
        (1, 1, 1)
    };
    let r = q.shape.len();
    let (q_len, d, kv_len, kd) = (
        q.shape[r - 2],
        q.shape[r - 1],
        k.shape[r - 2],
        k.shape[r - 1],
    );
    if kd != d {
        bail!("head dimension differs: {qn} has d = {d}, {kn} has d = {kd}");
    }
    if r == 4 && k.shape[0] != batch {
        bail!("batch differs: {qn} has {batch}, {kn} has {}", k.shape[0]);
    }
    if heads % kv_heads != 0 {
        bail!("{kn} has {kv_heads} heads, which does not divide the {heads} heads of {qn}");
    }
    let shape = AttnShape::new(batch, heads, q_len, d)
        .with_kv_heads(kv_heads)
        .with_kv_len(kv_len);
    shape.validate()?;
    Ok(shape)
}
