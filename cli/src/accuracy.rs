//! Accuracy against an f64 reference: the reference attention itself, the error metrics, and
//! the report (input family x length x pipeline x softmax variant) that the `accuracy` command
//! prints and the accuracy tests check.
//!
//! The reference reads the same f32 inputs the pipelines get and does everything else in f64
//! (logits, max subtraction, exp, normalisation, P x V), so its own error (~1e-15 relative) is
//! far below that of any pipeline, including fp32.

use rayon::prelude::*;

use crate::attention::{head_slices, Attention, AttnShape, Pipeline};
use crate::data::{self, Family};
use crate::error::{param_err, shape_err, Result};
use crate::kernels;
use crate::quant::check_finite;
use crate::softmax::SoftmaxVariant;
use crate::threads;

/// Attention in f64 with `attn`'s logit scale, causal mask, key padding and GQA layout (the
/// pipeline, variant and quantization settings are ignored). Query rows that see no key give
/// zeros, as the pipelines do.
pub fn reference_attention(
    attn: &Attention,
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<Vec<f64>> {
    shape.validate()?;
    if q.len() != shape.q_elems() || k.len() != shape.kv_elems() || v.len() != shape.kv_elems() {
        return shape_err(format!(
            "reference: Q, K, V have {}, {}, {} elements; the shape needs {}, {}, {}",
            q.len(),
            k.len(),
            v.len(),
            shape.q_elems(),
            shape.kv_elems(),
            shape.kv_elems()
        ));
    }
    check_finite("Q", q)?;
    check_finite("K", k)?;
    check_finite("V", v)?;
    let scale = attn.softmax_scale(shape.head_dim) as f64;
    if !scale.is_finite() || scale <= 0.0 {
        return param_err(format!("scale must be finite and > 0, got {scale}"));
    }
    if let Some(lens) = &attn.key_lens {
        if lens.len() != shape.batch {
            return shape_err(format!(
                "key_lens has {} entries for batch {}",
                lens.len(),
                shape.batch
            ));
        }
        if let Some(&l) = lens.iter().find(|&&l| l > shape.kv_len) {
            return shape_err(format!("key length {l} exceeds kv_len {}", shape.kv_len));
        }
    }
    let d = shape.head_dim;
    let mut out = vec![0f64; shape.q_elems()];
    threads::install(attn.threads, || {
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
            let (bh, i) = (r / shape.q_len, r % shape.q_len);
            let (qh, kh, vh) = head_slices(shape, bh, q, k, v);
            let valid = visible_keys(attn, shape, bh / shape.heads, i);
            reference_row(&qh[i * d..(i + 1) * d], kh, vh, valid, scale, o);
        })
    })?;
    Ok(out)
}

/// How many keys query `i` of batch row `b` sees, straight from SPEC section 2 (written apart
/// from [`Attention::valid_keys`] so that the reference does not share its bugs): key `j` is
/// masked when `j >= key_lens[b]`, and with the causal mask when `j > i + (kv_len - q_len)`.
fn visible_keys(attn: &Attention, shape: &AttnShape, b: usize, i: usize) -> usize {
    let mut n = shape.kv_len;
    if let Some(lens) = &attn.key_lens {
        n = n.min(lens[b]);
    }
    if attn.causal {
        let last = i as i64 + shape.kv_len as i64 - shape.q_len as i64;
        n = n.min((last + 1).max(0) as usize);
    }
    n
}

/// One output row: softmax over the first `valid` keys, in f64.
fn reference_row(q: &[f32], k: &[f32], v: &[f32], valid: usize, scale: f64, out: &mut [f64]) {
    out.fill(0.0);
    if valid == 0 {
        return;
    }
    let d = q.len();
    let logits: Vec<f64> = k[..valid * d]
        .chunks_exact(d)
        .map(|kr| {
            scale
                * q.iter()
                    .zip(kr)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
        })
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for (l, vr) in logits.iter().zip(v.chunks_exact(d)) {
        let p = (l - max).exp();
        sum += p;
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += p * x as f64;
        }
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// How far an output is from the reference.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Cosine similarity of the flattened outputs (1 when both are zero, 0 when only one is).
    pub cosine: f64,
    /// `||out - ref|| / ||ref||` (`||out||` when the reference is zero).
    pub rel_l2: f64,
    /// Largest absolute elementwise difference.
    pub max_abs: f64,
    /// Largest absolute reference value, the scale against which to read `max_abs`.
    pub ref_max_abs: f64,
}

impl Metrics {
    pub fn between(out: &[f32], reference: &[f64]) -> Result<Metrics> {
        if out.len() != reference.len() {
            return shape_err(format!(
                "metrics: output has {} elements, reference {}",
                out.len(),
                reference.len()
            ));
        }
        let (mut dot, mut oo, mut rr, mut ee) = (0f64, 0f64, 0f64, 0f64);
        let (mut max_abs, mut ref_max_abs) = (0f64, 0f64);
        for (&o, &r) in out.iter().zip(reference) {
            let o = o as f64;
            if o.is_nan() {
                // A NaN would vanish from max() and poison the sums unnoticed: report it.
                return param_err("metrics: the output contains NaN");
            }
            dot += o * r;
            oo += o * o;
            rr += r * r;
            ee += (o - r) * (o - r);
            max_abs = max_abs.max((o - r).abs());
            ref_max_abs = ref_max_abs.max(r.abs());
        }
        let cosine = match (oo > 0.0, rr > 0.0) {
            (true, true) => dot / (oo.sqrt() * rr.sqrt()),
            (false, false) => 1.0,
            _ => 0.0,
        };
        let rel_l2 = if rr > 0.0 {
            (ee / rr).sqrt()
        } else {
            ee.sqrt()
        };
        Ok(Metrics {
            cosine,
            rel_l2,
            max_abs,
            ref_max_abs,
        })
    }
}

/// Runs `attn` on the inputs and compares it with the f64 reference for the same settings.
pub fn compare(
    attn: &Attention,
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<Metrics> {
    let reference = reference_attention(attn, shape, q, k, v)?;
    let out = attn.run(shape, q, k, v)?;
    Metrics::between(&out, &reference)
}

/// The length the `--large` option adds to the report.
pub const LARGE_LEN: usize = 16384;

/// What the accuracy report covers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AccuracyConfig {
    pub families: Vec<Family>,
    /// Sequence lengths (self-attention: `q_len == kv_len`).
    pub lens: Vec<usize>,
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    #[serde(serialize_with = "pipeline_names")]
    pub pipelines: Vec<Pipeline>,
    /// IndexSoftmax variants, reported for the IntAttention pipeline.
    pub variants: Vec<SoftmaxVariant>,
    pub table_bits: u32,
    pub clip: f32,
    pub seed: u64,
    /// Worker threads (0: one per core); the results do not depend on it.
    #[serde(skip)]
    pub threads: usize,
}

impl Default for AccuracyConfig {
    /// Every family and pipeline, L in {128, 1024, 4096}, one head of dimension 64.
    fn default() -> Self {
        AccuracyConfig {
            families: Family::ALL.to_vec(),
            lens: vec![128, 1024, 4096],
            batch: 1,
            heads: 1,
            head_dim: 64,
            pipelines: Pipeline::ALL.to_vec(),
            variants: SoftmaxVariant::ALL.to_vec(),
            table_bits: crate::softmax::DEFAULT_TABLE_BITS,
            clip: crate::softmax::DEFAULT_CLIP,
            seed: 0,
            threads: 0,
        }
    }
}

/// Pipelines appear in JSON under their CLI names (`intattn`, as `--pipe` takes them), not
/// the enum's serde names.
pub fn pipeline_name<S: serde::Serializer>(
    p: &Pipeline,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn pipeline_names<S: serde::Serializer>(
    ps: &[Pipeline],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(ps.iter().map(|p| p.as_str()))
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    pub family: Family,
    #[serde(rename = "L")]
    pub len: usize,
    #[serde(serialize_with = "pipeline_name")]
    pub pipeline: Pipeline,
    /// The IndexSoftmax variant (IntAttention rows only).
    pub variant: Option<SoftmaxVariant>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

impl Row {
    /// `intattn/deferred`, `fp32`, ...
    pub fn label(&self) -> String {
        match self.variant {
            Some(v) => format!("{}/{}", self.pipeline, v),
            None => self.pipeline.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// The kernel that computed the integer pipelines.
    pub kernel: String,
    pub config: AccuracyConfig,
    pub rows: Vec<Row>,
}

impl Report {
    /// The row of one (family, length, pipeline, variant), if the report has it.
    pub fn find(
        &self,
        family: Family,
        len: usize,
        pipeline: Pipeline,
        variant: Option<SoftmaxVariant>,
    ) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.family == family && r.len == len && r.pipeline == pipeline && r.variant == variant
        })
    }
}

impl std::fmt::Display for Report {
    /// A fixed-width table, one line per row.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "accuracy vs f64 reference: batch {} heads {} d {} seed {} kernel {} (IndexSoftmax b={} c={})",
            c.batch, c.heads, c.head_dim, c.seed, self.kernel, c.table_bits, c.clip
        )?;
        writeln!(
            f,
            "{:<9} {:>6}  {:<20} {:>10} {:>10} {:>10} {:>10}",
            "family", "L", "pipeline", "cosine", "1-cosine", "rel_l2", "max_abs"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<9} {:>6}  {:<20} {:>10.6} {:>10.2e} {:>10.2e} {:>10.2e}",
                r.family.as_str(),
                r.len,
                r.label(),
                r.metrics.cosine,
                1.0 - r.metrics.cosine,
                r.metrics.rel_l2,
                r.metrics.max_abs
            )?;
        }
        Ok(())
    }
}

/// The (pipeline, variant) pairs a config asks for, in report order.
fn configurations(cfg: &AccuracyConfig) -> Vec<(Pipeline, Option<SoftmaxVariant>)> {
    let mut out = Vec::new();
    for &p in &cfg.pipelines {
        if p == Pipeline::IntAttention {
            out.extend(cfg.variants.iter().map(|&v| (p, Some(v))));
        } else {
            out.push((p, None));
        }
    }
    out
}

/// Builds the whole report.
pub fn run(cfg: &AccuracyConfig) -> Result<Report> {
    run_with_progress(cfg, |_| {})
}

/// Builds the report, calling `on_row` as each row is finished (long reports can stream).
pub fn run_with_progress(cfg: &AccuracyConfig, mut on_row: impl FnMut(&Row)) -> Result<Report> {
    if cfg.families.is_empty() || cfg.lens.is_empty() || cfg.pipelines.is_empty() {
        return param_err("accuracy: families, lengths and pipelines must not be empty");
    }
    if cfg.pipelines.contains(&Pipeline::IntAttention) && cfg.variants.is_empty() {
        return param_err("accuracy: the intattn pipeline needs at least one softmax variant");
    }
    let kernel = kernels::active()?.name().to_string();
    let mut rows = Vec::new();
    for &family in &cfg.families {
        for &len in &cfg.lens {
            let shape = AttnShape::new(cfg.batch, cfg.heads, len, cfg.head_dim);
            let inputs = data::generate(family, &shape, cfg.seed)?;
            let base = Attention::new(Pipeline::Fp32)
                .causal(family.causal())
                .threads(cfg.threads)
                .table_bits(cfg.table_bits)
                .clip(cfg.clip);
            let reference = reference_attention(&base, &shape, &inputs.q, &inputs.k, &inputs.v)?;
            for (pipeline, variant) in configurations(cfg) {
                let mut attn = base.clone();
                attn.pipeline = pipeline;
                if let Some(v) = variant {
                    attn.variant = v;
                }
                let out = attn.run(&shape, &inputs.q, &inputs.k, &inputs.v)?;
                let row = Row {
                    family,
                    len,
                    pipeline,
                    variant,
                    metrics: Metrics::between(&out, &reference)?,
                };
                on_row(&row);
                rows.push(row);
            }
        }
    }
    Ok(Report {
        kernel,
        config: cfg.clone(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_identical_and_opposite_outputs() {
        let r = [1.0f64, -2.0, 3.0];
        let m = Metrics::between(&[1.0, -2.0, 3.0], &r).unwrap();
        assert!((m.cosine - 1.0).abs() < 1e-12 && m.rel_l2 == 0.0 && m.max_abs == 0.0);
        let m = Metrics::between(&[-1.0, 2.0, -3.0], &r).unwrap();
        assert!((m.cosine + 1.0).abs() < 1e-12);
        assert!((m.rel_l2 - 2.0).abs() < 1e-12);
        assert!((m.max_abs - 6.0).abs() < 1e-12);
        assert_eq!(Metrics::between(&[0.0], &[0.0]).unwrap().cosine, 1.0);
        assert!(Metrics::between(&[f32::NAN], &[0.0]).is_err());
        assert!(Metrics::between(&[0.0; 2], &[0.0]).is_err());
    }

    #[test]
    fn reference_of_a_single_key_is_that_value_row() {
        let shape = AttnShape::new(1, 1, 1, 2);
        let o = reference_attention(
            &Attention::default(),
            &shape,
            &[0.3, 0.1],
            &[1.0, 2.0],
            &[5.0, -7.0],
        )
        .unwrap();
        assert_eq!(o, vec![5.0, -7.0]);
    }

    #[test]
    fn reference_softmax_by_hand() {
        // Two keys with logits 0 and ln 3 (scale 1): weights 1/4 and 3/4.
        let shape = AttnShape::new(1, 1, 1, 1);
        let shape = AttnShape { kv_len: 2, ..shape };
        let attn = Attention::default().scale(1.0);
        let l3 = 3f32.ln();
        let o = reference_attention(&attn, &shape, &[1.0], &[0.0, l3], &[4.0, 8.0]).unwrap();
        assert!((o[0] - 7.0).abs() < 1e-6, "{o:?}");
    }
}
