//! Accuracy against an f64 reference: the reference attention itself, the error metrics, and
//! the report (input family x length x pipeline x softmax variant) that the `accuracy` command
//! prints and the accuracy tests check.
//!
//! The reference reads the same f32 inputs the pipelines get and does everything else in f64
//! (logits, max subtraction, exp, normalisation, P x V), so its own error (~1e-15 relative) is
//! far below that of any pipeline, including fp32.

use rayon::prelude::*;

use intattention::{Attention, AttnShape, Pipeline, SoftmaxVariant};

use crate::data::{self, Family};
use crate::error::{param_err, shape_err, Error, Result};
use crate::settings::Settings;
use crate::threads;

/// The Q, K and V slices of flat head index `bh = b * heads + h` (contiguous inputs).
fn head_slices<'a, T>(
    shape: &AttnShape,
    bh: usize,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
) -> (&'a [T], &'a [T], &'a [T]) {
    let (b, h) = (bh / shape.heads, bh % shape.heads);
    let kv = b * shape.kv_heads + h / (shape.heads / shape.kv_heads);
    let qn = shape.q_len * shape.head_dim;
    let kn = shape.kv_len * shape.head_dim;
    (
        &q[bh * qn..(bh + 1) * qn],
        &k[kv * kn..(kv + 1) * kn],
        &v[kv * kn..(kv + 1) * kn],
    )
}

/// The first NaN or infinity of `x`, as an error naming `what`.
fn check_finite(what: &str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => param_err(format!("{what}[{i}] = {} is not finite", x[i])),
    }
}

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
    if let Some(lens) = attn.key_lens() {
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
    threads::install(attn.executor().workers(), || {
        out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
            let (bh, i) = (r / shape.q_len, r % shape.q_len);
            let (qh, kh, vh) = head_slices(shape, bh, q, k, v);
            let valid = visible_keys(attn, shape, bh / shape.heads, i);
            reference_row(&qh[i * d..(i + 1) * d], kh, vh, valid, scale, o);
        })
    })?;
    Ok(out)
}

/// How many keys query `i` of batch row `b` sees, straight from docs/numerics.md section 2 (written apart
/// from [`Attention::valid_keys`] so that the reference does not share its bugs): key `j` is
/// masked when `j >= key_lens[b]`, and with the causal mask when `j > i + (kv_len - q_len)`.
fn visible_keys(attn: &Attention, shape: &AttnShape, b: usize, i: usize) -> usize {
    let mut n = shape.kv_len;
    if let Some(lens) = attn.key_lens() {
        n = n.min(lens[b]);
    }
    if attn.causal() {
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
    #[serde(serialize_with = "variant_names")]
    pub variants: Vec<SoftmaxVariant>,
    /// Overrides of the IntAttention settings (none: each finish's default).
    #[serde(serialize_with = "settings_text")]
    pub settings: Settings,
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
            settings: Settings::default(),
            clip: intattention::lut::DEFAULT_CLIP,
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

/// A softmax variant by its CLI name (`deferred`, `normalized`, `paper-sim`), or null.
pub fn variant_name<S: serde::Serializer>(
    v: &Option<SoftmaxVariant>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.as_str()),
        None => s.serialize_none(),
    }
}

fn variant_names<S: serde::Serializer>(
    v: &[SoftmaxVariant],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|v| v.as_str()))
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
    #[serde(serialize_with = "variant_name")]
    pub variant: Option<SoftmaxVariant>,
    /// The integer pipelines' settings in words (table bits and scales).
    pub settings: Option<String>,
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
            "accuracy vs f64 reference: batch {} heads {} d {} seed {} kernel {} (IndexSoftmax c={}; \
             settings {})",
            c.batch,
            c.heads,
            c.head_dim,
            c.seed,
            self.kernel,
            c.clip,
            describe_settings(&c.settings)
        )?;
        writeln!(
            f,
            "{:<9} {:>6}  {:<20} {:>10} {:>10} {:>10} {:>10}  settings",
            "family", "L", "pipeline", "cosine", "1-cosine", "rel_l2", "max_abs"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<9} {:>6}  {:<20} {:>10.6} {:>10.2e} {:>10.2e} {:>10.2e}  {}",
                r.family.as_str(),
                r.len,
                r.label(),
                r.metrics.cosine,
                1.0 - r.metrics.cosine,
                r.metrics.rel_l2,
                r.metrics.max_abs,
                r.settings.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}

/// The settings of an integer pipeline's row in words: `b7, q row, kv head, ...` (IntAttention),
/// the scales alone (int8); `None` for the float pipelines.
pub fn row_settings(attn: &Attention) -> Option<String> {
    let scales = crate::settings::describe(&attn.quantization());
    match attn.pipeline() {
        Pipeline::IntAttention => Some(format!("b{}, {scales}", attn.table_bits())),
        Pipeline::Int8 => Some(scales),
        _ => None,
    }
}

/// A [`Settings`] override in words (`default` when it overrides nothing).
pub fn describe_settings(s: &Settings) -> String {
    let mut parts = Vec::new();
    if s.paper {
        parts.push("paper".to_string());
    }
    if let Some(b) = s.bits {
        parts.push(format!("bits {b}"));
    }
    if let Some(p) = s.quant {
        parts.push(format!("quant {}", format!("{p:?}").to_lowercase()));
    }
    if let Some(g) = s.q_scales {
        parts.push(format!("q {}", crate::settings::granularity_name(g)));
    }
    if let Some(g) = s.kv_scales {
        parts.push(format!("kv {}", crate::settings::granularity_name(g)));
    }
    for (name, v) in [
        ("smooth-k", s.smooth_k),
        ("v-channels", s.v_channels),
        ("smooth-v", s.smooth_v),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "default".to_string()
    } else {
        parts.join(", ")
    }
}

fn settings_text<S: serde::Serializer>(
    s: &Settings,
    out: S,
) -> std::result::Result<S::Ok, S::Error> {
    out.serialize_str(&describe_settings(s))
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
    let kernel = intattention::Kernel::best().name().to_string();
    let mut rows = Vec::new();
    for &family in &cfg.families {
        for &len in &cfg.lens {
            let shape = AttnShape::new(cfg.batch, cfg.heads, len, cfg.head_dim);
            let inputs = data::generate(family, &shape, cfg.seed)?;
            let base = Attention::new(Pipeline::Fp32)
                .with_causal(family.causal())
                .with_executor(threads::executor(cfg.threads)?)
                .with_clip(cfg.clip);
            let reference = reference_attention(&base, &shape, &inputs.q, &inputs.k, &inputs.v)?;
            for (pipeline, variant) in configurations(cfg) {
                let mut attn = base.clone();
                attn = attn.with_pipeline(pipeline);
                if let Some(v) = variant {
                    attn = attn.with_variant(v);
                }
                let attn = cfg.settings.apply(attn);
                let out = attn.run(&shape, &inputs.q, &inputs.k, &inputs.v)?;
                let row = Row {
                    family,
                    len,
                    pipeline,
                    variant,
                    settings: row_settings(&attn),
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

// ---------------------------------------------------------------------------------------------
// The real-activation suite (issue 15): Q, K, V of every attention head of every layer of a
// real model on real inputs, stored as f16 .npy files with a JSON manifest
// (scripts/real-activations/capture.py writes them into tests/data/real). Each stored
// (group, layer) is one [B, H, L, d] call, run whole as a deployment would run it (per-tensor
// scales over all its heads and batch rows, key padding from the recorded valid lengths); the
// error is then taken per head and input over that input's valid query rows, since padded
// query rows never reach the model's output.

/// The default location of the suite, relative to the repository root.
pub const REAL_DIR: &str = "tests/data/real";

/// `manifest.json` of the suite.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RealManifest {
    pub model: String,
    pub package: String,
    pub package_version: String,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// The model's logit scale (BERT: 1/sqrt(d)).
    pub scale: f64,
    /// Element type of the stored arrays; only `float16` is read.
    pub dtype: String,
    pub groups: Vec<RealGroup>,
}

/// Inputs run as one padded batch.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RealGroup {
    pub name: String,
    pub batch: usize,
    /// Padded sequence length L.
    pub len: usize,
    /// Valid tokens (and so valid keys) of each batch row.
    pub key_lens: Vec<usize>,
    pub texts: Vec<String>,
    /// `[batch, heads, len, head_dim]`, the shape of every file of the group.
    pub shape: Vec<usize>,
    /// One entry per layer, in layer order.
    pub files: Vec<RealFiles>,
}

/// The files of one layer of a group, relative to the suite's directory.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RealFiles {
    pub layer: usize,
    pub q: String,
    pub k: String,
    pub v: String,
    /// The model's own float attention output (rounded to f16).
    pub o: String,
}

/// One (group, layer) of the suite, widened to f32.
#[derive(Clone, Debug)]
pub struct RealCall {
    pub group: usize,
    pub layer: usize,
    pub shape: AttnShape,
    pub key_lens: Vec<usize>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
}

/// The suite in memory.
#[derive(Clone, Debug)]
pub struct RealSuite {
    pub dir: std::path::PathBuf,
    pub manifest: RealManifest,
    /// Group-major, then layer.
    pub calls: Vec<RealCall>,
}

fn real_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Param(format!("real suite: {}", msg.into())))
}

impl RealSuite {
    /// Reads the manifest and every file it names, checking that they agree: the element type,
    /// each file's shape against its group's, one entry per layer, the valid lengths, finite
    /// values.
    pub fn load(dir: impl AsRef<std::path::Path>) -> Result<RealSuite> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| {
            Error::Param(format!("real suite: cannot read {}: {e}", mpath.display()))
        })?;
        let manifest: RealManifest = serde_json::from_str(&text)
            .map_err(|e| Error::Param(format!("real suite: {}: {e}", mpath.display())))?;
        let m = &manifest;
        if m.dtype != "float16" {
            return real_err(format!("dtype {} (only float16 is stored)", m.dtype));
        }
        if m.groups.is_empty() || m.layers == 0 || m.heads == 0 || m.head_dim == 0 {
            return real_err("the manifest has no groups, layers, heads or head dimension");
        }
        if !(m.scale.is_finite() && m.scale > 0.0) {
            return real_err(format!("scale {} must be finite and > 0", m.scale));
        }
        let mut calls = Vec::new();
        for (gi, g) in m.groups.iter().enumerate() {
            let want = [g.batch, m.heads, g.len, m.head_dim];
            if g.shape != want {
                return real_err(format!(
                    "group {}: shape {:?}, but batch, heads, len, head_dim give {want:?}",
                    g.name, g.shape
                ));
            }
            if g.key_lens.len() != g.batch || g.texts.len() != g.batch {
                return real_err(format!(
                    "group {}: {} key lengths and {} texts for batch {}",
                    g.name,
                    g.key_lens.len(),
                    g.texts.len(),
                    g.batch
                ));
            }
            if let Some(&l) = g.key_lens.iter().find(|&&l| l == 0 || l > g.len) {
                return real_err(format!(
                    "group {}: key length {l} outside 1..={}",
                    g.name, g.len
                ));
            }
            let layers: Vec<usize> = g.files.iter().map(|f| f.layer).collect();
            if layers != (0..m.layers).collect::<Vec<_>>() {
                return real_err(format!(
                    "group {}: layers {layers:?}, expected 0..{}",
                    g.name, m.layers
                ));
            }
            let shape = AttnShape::new(g.batch, m.heads, g.len, m.head_dim);
            for f in &g.files {
                let load = |rel: &str| -> Result<Vec<f32>> {
                    let path = dir.join(rel);
                    let a = crate::npy::read_f16_as_f32(&path)?;
                    if a.shape != want {
                        return real_err(format!(
                            "{}: shape {:?}, the manifest says {want:?}",
                            path.display(),
                            a.shape
                        ));
                    }
                    check_finite("stored activation", &a.data)?;
                    Ok(a.data)
                };
                calls.push(RealCall {
                    group: gi,
                    layer: f.layer,
                    shape,
                    key_lens: g.key_lens.clone(),
                    q: load(&f.q)?,
                    k: load(&f.k)?,
                    v: load(&f.v)?,
                    o: load(&f.o)?,
                });
            }
        }
        Ok(RealSuite {
            dir,
            manifest,
            calls,
        })
    }

    /// Head instances (input x layer x head): the population the report averages over.
    pub fn head_count(&self) -> usize {
        self.calls
            .iter()
            .map(|c| c.shape.batch * c.shape.heads)
            .sum()
    }

    /// Inputs (texts) over all groups.
    pub fn input_count(&self) -> usize {
        self.manifest.groups.iter().map(|g| g.batch).sum()
    }
}

/// Per-head relative L2 errors of one call's output against a reference, over each batch row's
/// valid query rows, in (batch row, head) order.
fn head_errors(call: &RealCall, out: &[f32], reference: &[f64]) -> Result<Vec<f64>> {
    let (l, d) = (call.shape.q_len, call.shape.head_dim);
    let mut errs = Vec::with_capacity(call.shape.batch * call.shape.heads);
    for b in 0..call.shape.batch {
        let rows = call.key_lens[b] * d;
        for h in 0..call.shape.heads {
            let at = (b * call.shape.heads + h) * l * d;
            errs.push(Metrics::between(&out[at..at + rows], &reference[at..at + rows])?.rel_l2);
        }
    }
    Ok(errs)
}

/// Which head: input (group and batch row, with the text's index over all groups), layer,
/// head.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HeadId {
    pub group: String,
    pub input: usize,
    pub layer: usize,
    pub head: usize,
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in{} L{} h{}", self.input, self.layer, self.head)
    }
}

/// Mean and worst of a set of per-head errors.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ErrStats {
    pub mean: f64,
    pub worst: f64,
}

impl ErrStats {
    fn of(errs: &[f64]) -> ErrStats {
        ErrStats {
            mean: errs.iter().sum::<f64>() / errs.len().max(1) as f64,
            worst: errs.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// One line of the real-activation report: a pipeline (and variant) over every head.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RealRow {
    /// `capture` for the stored model output against the f64 reference (how faithful the
    /// stored data is: f16 rounding), else the pipeline's CLI name.
    pub pipeline: String,
    #[serde(serialize_with = "variant_name")]
    pub variant: Option<SoftmaxVariant>,
    /// The integer pipelines' settings in words (table bits and scales).
    pub settings: Option<String>,
    /// Relative L2 error of a head's output: mean and worst over all heads.
    #[serde(flatten)]
    pub stats: ErrStats,
    pub worst_head: HeadId,
    /// Mean and worst per layer.
    pub per_layer: Vec<ErrStats>,
    /// Every head's error, in the order (group, layer, batch row, head).
    pub heads: Vec<f64>,
}

impl RealRow {
    pub fn label(&self) -> String {
        match self.variant {
            Some(v) => format!("{}/{}", self.pipeline, v),
            None => self.pipeline.clone(),
        }
    }
}

/// What the real-activation report covers; the pipelines, variants, table bits, clip and
/// threads of an [`AccuracyConfig`] (its families, lengths and shape are the suite's own).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RealConfig {
    #[serde(serialize_with = "pipeline_names")]
    pub pipelines: Vec<Pipeline>,
    #[serde(serialize_with = "variant_names")]
    pub variants: Vec<SoftmaxVariant>,
    /// Overrides of the IntAttention settings (none: each finish's default).
    #[serde(serialize_with = "settings_text")]
    pub settings: Settings,
    pub clip: f32,
    #[serde(skip)]
    pub threads: usize,
}

impl Default for RealConfig {
    fn default() -> Self {
        let a = AccuracyConfig::default();
        RealConfig {
            pipelines: a.pipelines,
            variants: a.variants,
            settings: a.settings,
            clip: a.clip,
            threads: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RealReport {
    pub kernel: String,
    pub dir: String,
    pub model: String,
    pub package: String,
    pub package_version: String,
    pub inputs: usize,
    pub layers: usize,
    pub heads_per_layer: usize,
    pub head_dim: usize,
    /// Head instances (inputs x layers x heads) each row averages over.
    pub head_count: usize,
    pub config: RealConfig,
    pub rows: Vec<RealRow>,
}

impl RealReport {
    pub fn find(&self, pipeline: &str, variant: Option<SoftmaxVariant>) -> Option<&RealRow> {
        self.rows
            .iter()
            .find(|r| r.pipeline == pipeline && r.variant == variant)
    }
}

/// Builds a row from per-call error lists (in the suite's call order).
fn real_row(
    suite: &RealSuite,
    pipeline: String,
    variant: Option<SoftmaxVariant>,
    settings: Option<String>,
    per_call: Vec<Vec<f64>>,
) -> RealRow {
    let m = &suite.manifest;
    let mut by_layer = vec![Vec::new(); m.layers];
    let mut heads = Vec::new();
    let mut worst: Option<(f64, HeadId)> = None;
    // Index of each group's first text over all groups.
    let first: Vec<usize> = m
        .groups
        .iter()
        .scan(0, |n, g| {
            let at = *n;
            *n += g.batch;
            Some(at)
        })
        .collect();
    for (call, errs) in suite.calls.iter().zip(&per_call) {
        by_layer[call.layer].extend_from_slice(errs);
        heads.extend_from_slice(errs);
        for (i, &e) in errs.iter().enumerate() {
            if worst.as_ref().is_none_or(|(w, _)| e > *w) {
                let (b, h) = (i / call.shape.heads, i % call.shape.heads);
                let id = HeadId {
                    group: m.groups[call.group].name.clone(),
                    input: first[call.group] + b,
                    layer: call.layer,
                    head: h,
                };
                worst = Some((e, id));
            }
        }
    }
    RealRow {
        pipeline,
        variant,
        settings,
        stats: ErrStats::of(&heads),
        worst_head: worst.map(|(_, id)| id).expect("the suite has heads"),
        per_layer: by_layer.iter().map(|e| ErrStats::of(e)).collect(),
        heads,
    }
}

/// Runs every requested pipeline (and IntAttention variant) over every stored call and
/// compares each head with the f64 reference computed from the same (f16-rounded) Q, K, V.
/// The first row, `capture`, compares the model's own stored output with that reference.
pub fn run_real(suite: &RealSuite, cfg: &RealConfig) -> Result<RealReport> {
    if cfg.pipelines.is_empty() {
        return param_err("accuracy --real: the pipeline list must not be empty");
    }
    if cfg.pipelines.contains(&Pipeline::IntAttention) && cfg.variants.is_empty() {
        return param_err(
            "accuracy --real: the intattn pipeline needs at least one softmax variant",
        );
    }
    let kernel = intattention::Kernel::best().name().to_string();
    let m = &suite.manifest;
    let executor = threads::executor(cfg.threads)?;
    let base = |call: &RealCall| {
        Attention::new(Pipeline::Fp32)
            .with_scale(m.scale as f32)
            .with_key_lens(call.key_lens.clone())
            .with_executor(executor.clone())
            .with_clip(cfg.clip)
    };
    let references = suite
        .calls
        .iter()
        .map(|c| reference_attention(&base(c), &c.shape, &c.q, &c.k, &c.v))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let captured = suite
        .calls
        .iter()
        .zip(&references)
        .map(|(c, r)| head_errors(c, &c.o, r))
        .collect::<Result<Vec<_>>>()?;
    rows.push(real_row(suite, "capture".into(), None, None, captured));
    let pseudo = AccuracyConfig {
        pipelines: cfg.pipelines.clone(),
        variants: cfg.variants.clone(),
        ..AccuracyConfig::default()
    };
    for (pipeline, variant) in configurations(&pseudo) {
        let mut per_call = Vec::new();
        let mut settings = None;
        for (c, r) in suite.calls.iter().zip(&references) {
            let mut attn = base(c);
            attn = attn.with_pipeline(pipeline);
            if let Some(v) = variant {
                attn = attn.with_variant(v);
            }
            let attn = cfg.settings.apply(attn);
            settings = row_settings(&attn);
            let out = attn.run(&c.shape, &c.q, &c.k, &c.v)?;
            per_call.push(head_errors(c, &out, r)?);
        }
        let name = pipeline.as_str().into();
        rows.push(real_row(suite, name, variant, settings, per_call));
    }
    Ok(RealReport {
        kernel,
        dir: suite.dir.display().to_string(),
        model: m.model.clone(),
        package: m.package.clone(),
        package_version: m.package_version.clone(),
        inputs: suite.input_count(),
        layers: m.layers,
        heads_per_layer: m.heads,
        head_dim: m.head_dim,
        head_count: suite.head_count(),
        config: cfg.clone(),
        rows,
    })
}

impl std::fmt::Display for RealReport {
    /// One line per pipeline: mean and worst head, where the worst is, and the per-layer means.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "real activations: {} ({} {}), {} inputs x {} layers x {} heads (d {}) = {} heads; \
             kernel {}; IndexSoftmax b={} c={}",
            self.model,
            self.package,
            self.package_version,
            self.inputs,
            self.layers,
            self.heads_per_layer,
            self.head_dim,
            self.head_count,
            self.kernel,
            describe_settings(&c.settings),
            c.clip
        )?;
        writeln!(
            f,
            "relative L2 error of each head's output (valid query rows) vs f64 on the stored f16 \
             Q, K, V; capture = the model's own f32 output"
        )?;
        write!(
            f,
            "{:<20} {:>9} {:>9}  {:<14}",
            "pipeline", "mean", "worst", "worst head"
        )?;
        // (Each row's settings follow the per-layer means.)
        for l in 0..self.layers {
            write!(f, " {:>8}", format!("L{l} mean"))?;
        }
        writeln!(f)?;
        for r in &self.rows {
            write!(
                f,
                "{:<20} {:>9.3e} {:>9.3e}  {:<14}",
                r.label(),
                r.stats.mean,
                r.stats.worst,
                r.worst_head.to_string()
            )?;
            for s in &r.per_layer {
                write!(f, " {:>8.2e}", s.mean)?;
            }
            writeln!(f, "  {}", r.settings.as_deref().unwrap_or(""))?;
        }
        Ok(())
    }
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
        let shape = shape.with_kv_len(2);
        let attn = Attention::default().with_scale(1.0);
        let l3 = 3f32.ln();
        let o = reference_attention(&attn, &shape, &[1.0], &[0.0, l3], &[4.0, 8.0]).unwrap();
        assert!((o[0] - 7.0).abs() < 1e-6, "{o:?}");
    }
}
