//! Multi-head attention through the four pipelines of SPEC section 5.
//!
//! The pipelines here are the unfused ones: per (batch, head) they materialise the `Lq x Lk`
//! score block, run the softmax over it, then multiply by V. They are the behavioural reference
//! for every faster schedule; [`crate::fused`] holds the row-block one that
//! [`Schedule::Auto`] picks for the integer pipelines.

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::aligned::Fresh;
use crate::error::{param_err, shape_err, Error, Result};
use crate::float::{matmul_f16, matmul_f32, Rhs};
use crate::fused;
use crate::kernels::{self, Kernel, MAX_K_S8S8, MAX_K_U8S8};
use crate::quant::{check_finite, QTensor};
use crate::reference;
use crate::softmax::{IndexSoftmaxParams, Lut, SoftmaxVariant, DEFAULT_CLIP, DEFAULT_TABLE_BITS};
use crate::threads;

/// The four pipelines of SPEC section 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipeline {
    /// 0: f32 end to end.
    Fp32,
    /// 1: f16 GEMMs, f32 softmax between casts.
    Fp16,
    /// 2: s8 GEMMs with a float softmax, P quantized to u8.
    Int8,
    /// 3: s8 GEMMs with IndexSoftmax.
    IntAttention,
}

impl Pipeline {
    pub const ALL: [Pipeline; 4] = [
        Pipeline::Fp32,
        Pipeline::Fp16,
        Pipeline::Int8,
        Pipeline::IntAttention,
    ];

    /// The short name used by the CLI and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Pipeline::Fp32 => "fp32",
            Pipeline::Fp16 => "fp16",
            Pipeline::Int8 => "int8",
            Pipeline::IntAttention => "intattn",
        }
    }

    /// Whether the pipeline quantizes Q, K, V to int8.
    pub fn is_integer(self) -> bool {
        matches!(self, Pipeline::Int8 | Pipeline::IntAttention)
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pipeline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "0" | "fp32" | "f32" => Ok(Pipeline::Fp32),
            "1" | "fp16" | "f16" => Ok(Pipeline::Fp16),
            "2" | "int8" | "i8" => Ok(Pipeline::Int8),
            "3" | "intattn" | "intattention" | "int" => Ok(Pipeline::IntAttention),
            _ => param_err(format!(
                "unknown pipeline '{s}' (expected 0-3, fp32, fp16, int8 or intattn)"
            )),
        }
    }
}

/// Shapes: Q is `[batch, heads, q_len, head_dim]`, K and V are
/// `[batch, kv_heads, kv_len, head_dim]`, the output is shaped like Q. Query head `h` reads
/// key/value head `h / (heads / kv_heads)` (grouped-query attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Self-attention with as many K/V heads as query heads.
    pub fn new(batch: usize, heads: usize, len: usize, head_dim: usize) -> Self {
        AttnShape {
            batch,
            heads,
            kv_heads: heads,
            q_len: len,
            kv_len: len,
            head_dim,
        }
    }

    pub fn q_elems(&self) -> usize {
        self.batch * self.heads * self.q_len * self.head_dim
    }

    pub fn kv_elems(&self) -> usize {
        self.batch * self.kv_heads * self.kv_len * self.head_dim
    }

    pub fn validate(&self) -> Result<()> {
        let dims = [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("q_len", self.q_len),
            ("kv_len", self.kv_len),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return shape_err(format!("{name} must be at least 1"));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return shape_err(format!(
                "kv_heads ({}) must divide heads ({})",
                self.kv_heads, self.heads
            ));
        }
        let total = dims
            .iter()
            .try_fold(1usize, |acc, (_, v)| acc.checked_mul(*v))
            .ok_or_else(|| Error::Shape("tensor sizes overflow usize".into()))?;
        let _ = total;
        if self.head_dim > MAX_K_S8S8 {
            return Err(Error::Unsupported(format!(
                "head_dim {} exceeds {MAX_K_S8S8}, past which i32 scores can overflow",
                self.head_dim
            )));
        }
        Ok(())
    }
}

/// An attention configuration: which pipeline, which softmax, which masks, how many threads.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub pipeline: Pipeline,
    /// IndexSoftmax finish (IntAttention only).
    pub variant: SoftmaxVariant,
    /// IndexSoftmax table bits `b`, 4..=8 (IntAttention only).
    pub table_bits: u32,
    /// IndexSoftmax clip `c` in logit units (IntAttention only).
    pub clip: f32,
    /// Logit scale; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal mask: key `j` is masked for query `i` when `j > i + (kv_len - q_len)`.
    pub causal: bool,
    /// Valid key length per batch row (key padding); `None` means all keys.
    pub key_lens: Option<Vec<usize>>,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// How the integer pipelines are scheduled (the float pipelines are always unfused).
    pub schedule: Schedule,
    /// Query rows per row block of the fused schedule; `None` chooses them from the cache
    /// sizes and the thread count ([`crate::fused::BlockPlan`]). For tuning and measuring:
    /// every choice gives the same bits.
    pub block_rows: Option<usize>,
}

/// How the integer pipelines walk a head. Both give bit-identical results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The fastest available (fused where it exists).
    #[default]
    Auto,
    /// Materialise the whole `Lq x Lk` score block per head.
    Unfused,
    /// Row blocks: scores, softmax and P x V per block of query rows, never an `Lq x Lk` buffer.
    Fused,
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Schedule::Auto),
            "unfused" => Ok(Schedule::Unfused),
            "fused" => Ok(Schedule::Fused),
            _ => param_err(format!(
                "unknown schedule '{s}' (expected auto, unfused or fused)"
            )),
        }
    }
}

impl Default for Attention {
    fn default() -> Self {
        Attention::new(Pipeline::IntAttention)
    }
}

impl Attention {
    /// A configuration with SPEC's defaults: Deferred IndexSoftmax, b = 5, c = 6.6,
    /// scale 1/sqrt(d), no masks, one thread.
    pub fn new(pipeline: Pipeline) -> Self {
        Attention {
            pipeline,
            variant: SoftmaxVariant::Deferred,
            table_bits: DEFAULT_TABLE_BITS,
            clip: DEFAULT_CLIP,
            scale: None,
            causal: false,
            key_lens: None,
            threads: 1,
            schedule: Schedule::Auto,
            block_rows: None,
        }
    }

    pub fn variant(mut self, v: SoftmaxVariant) -> Self {
        self.variant = v;
        self
    }
    pub fn table_bits(mut self, b: u32) -> Self {
        self.table_bits = b;
        self
    }
    pub fn clip(mut self, c: f32) -> Self {
        self.clip = c;
        self
    }
    pub fn scale(mut self, s: f32) -> Self {
        self.scale = Some(s);
        self
    }
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    pub fn key_lens(mut self, lens: Vec<usize>) -> Self {
        self.key_lens = Some(lens);
        self
    }
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
    pub fn schedule(mut self, s: Schedule) -> Self {
        self.schedule = s;
        self
    }
    pub fn block_rows(mut self, rows: usize) -> Self {
        self.block_rows = Some(rows);
        self
    }

    /// The logit scale in use for a head dimension.
    pub fn softmax_scale(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or_else(|| 1.0 / (head_dim as f32).sqrt())
    }

    /// The checks of [`Attention::run`] that do not depend on the data (every backend's).
    pub(crate) fn check(&self, shape: &AttnShape) -> Result<()> {
        shape.validate()?;
        if let Some(s) = self.scale {
            if !s.is_finite() || s <= 0.0 {
                return param_err(format!("scale must be finite and > 0, got {s}"));
            }
        }
        if self.block_rows == Some(0) {
            return param_err("block_rows must be at least 1".to_string());
        }
        if let Some(lens) = &self.key_lens {
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
        if self.pipeline == Pipeline::IntAttention {
            IndexSoftmaxParams::new(1, self.variant)?
                .with_table_bits(self.table_bits)?
                .with_clip(self.clip)?;
        }
        Ok(())
    }

    /// Number of keys query row `i` of batch row `b` attends to: always a prefix of the keys.
    pub fn valid_keys(&self, shape: &AttnShape, b: usize, i: usize) -> usize {
        let mut n = shape.kv_len;
        if let Some(lens) = &self.key_lens {
            n = n.min(lens[b]);
        }
        if self.causal {
            // j is masked when j > i + (kv_len - q_len): keep j < i + kv_len - q_len + 1.
            let keep = (i + shape.kv_len + 1).saturating_sub(shape.q_len);
            n = n.min(keep);
        }
        n
    }

    /// Runs attention on f32 inputs (row-major, shapes as [`AttnShape`] says) and returns the
    /// f32 output shaped like Q. The integer pipelines quantize each tensor per SPEC section 1.
    pub fn run(&self, shape: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        self.check(shape)?;
        check_lens(shape, q.len(), k.len(), v.len())?;
        self.new_output(shape, |o| self.run_fresh(shape, q, k, v, o))
    }

    /// [`Attention::run`] into `out` (shaped like Q; every value is overwritten), so that a
    /// loop of calls need not allocate its output every time. Same results bit for bit.
    pub fn run_into(
        &self,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check(shape)?;
        check_lens(shape, q.len(), k.len(), v.len())?;
        check_out(shape, out.len())?;
        threads::install(self.threads, || {
            crate::aligned::built_in(out, |o| self.run_fresh(shape, q, k, v, o))
        })?
    }

    /// A new output vector, built by `build` on the call's pool. Where its memory comes from
    /// is [`output_storage`]'s choice.
    fn new_output(
        &self,
        shape: &AttnShape,
        build: impl FnOnce(Fresh<'_, f32>) -> Result<()> + Send,
    ) -> Result<Vec<f32>> {
        let storage = output_storage(shape, self.threads);
        let (out, done) = threads::install(self.threads, || {
            crate::aligned::vec_built_by(storage, shape.q_elems(), build)
        })?;
        done.map(|()| out)
    }

    /// The work of [`Attention::run`] once shapes are checked, into `out`.
    fn run_fresh(
        &self,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        match self.pipeline {
            Pipeline::Fp32 => {
                check_finite("Q", q)?;
                check_finite("K", k)?;
                check_finite("V", v)?;
                self.run_float::<f32>(shape, q, k, v, out)
            }
            Pipeline::Fp16 => {
                let q16 = to_f16("Q", q)?;
                let k16 = to_f16("K", k)?;
                let v16 = to_f16("V", v)?;
                self.run_float::<f16>(shape, &q16, &k16, &v16, out)
            }
            Pipeline::Int8 | Pipeline::IntAttention => {
                // The int8 copies live only for this call: their memory is kept for the next.
                let kept = &crate::aligned::I8_BUFFERS;
                let storage = [kept.take(q.len()), kept.take(k.len()), kept.take(v.len())];
                let [q, k, v] = threads::install(self.threads, || {
                    QTensor::quantize_all_parallel_in(storage, [q, k, v])
                })??;
                let done = self.quantized_fresh(kernels::active()?, shape, &q, &k, &v, out);
                for t in [q, k, v] {
                    kept.give(t.data);
                }
                done
            }
        }
    }

    /// Runs an integer pipeline on int8 tensors the caller already holds (any i8 values,
    /// -128 included; per-tensor scales).
    pub fn run_quantized(
        &self,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
    ) -> Result<Vec<f32>> {
        self.run_quantized_with(kernels::active()?, shape, q, k, v)
    }

    /// [`Attention::run_quantized`] into `out` (shaped like Q; every value is overwritten).
    pub fn run_quantized_into(
        &self,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
        out: &mut [f32],
    ) -> Result<()> {
        let kernel = kernels::active()?;
        self.check_quantized(shape, q, k, v)?;
        check_out(shape, out.len())?;
        threads::install(self.threads, || {
            crate::aligned::built_in(out, |o| self.quantized_fresh(kernel, shape, q, k, v, o))
        })?
    }

    /// [`Attention::run_quantized`] on a given kernel rather than the process-wide one, so that
    /// tests can run every kernel of [`kernels::available`] in one process.
    pub fn run_quantized_with(
        &self,
        kernel: &dyn Kernel,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
    ) -> Result<Vec<f32>> {
        self.check_quantized(shape, q, k, v)?;
        self.new_output(shape, |o| self.quantized_fresh(kernel, shape, q, k, v, o))
    }

    fn check_quantized(
        &self,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
    ) -> Result<()> {
        self.check(shape)?;
        check_lens(shape, q.data.len(), k.data.len(), v.data.len())?;
        for (name, t) in [("Q", q), ("K", k), ("V", v)] {
            if !t.scale.is_finite() || t.scale < 0.0 {
                return param_err(format!("{name} scale must be finite and >= 0"));
            }
        }
        if !self.pipeline.is_integer() {
            return param_err(format!(
                "run_quantized needs an integer pipeline, not {}",
                self.pipeline
            ));
        }
        Ok(())
    }

    /// The integer pipelines once the inputs are checked, into `out`.
    fn quantized_fresh(
        &self,
        kernel: &dyn Kernel,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        let scale = self.softmax_scale(shape.head_dim);
        let softmax = match self.pipeline {
            Pipeline::IntAttention => IntSoftmax::Index {
                params: IndexSoftmaxParams::from_scales(
                    q.scale,
                    k.scale,
                    scale,
                    self.table_bits,
                    self.clip,
                    self.variant,
                )?,
            },
            _ => IntSoftmax::Float {
                logit_scale: (q.scale as f64 * k.scale as f64 * scale as f64) as f32,
            },
        };
        let lut = match softmax {
            IntSoftmax::Index { params } => params.lut(),
            IntSoftmax::Float { .. } => Lut::new(DEFAULT_TABLE_BITS, DEFAULT_CLIP)?,
        };
        if self.schedule != Schedule::Unfused {
            return threads::install(self.threads, || {
                fused::run(self, kernel, shape, &softmax, &lut, q, k, v, out)
            })?;
        }
        self.per_head(shape, out, |ctx, bh, o| {
            let (qh, kh, vh) = head_slices(shape, bh, &q.data, &k.data, &v.data);
            ctx.int_head(kernel, &softmax, &lut, qh, kh, vh, v.scale, o);
        })
    }

    /// `head(ctx, bh, rows)` for every flat head `bh` on the call's pool, each on its own
    /// output rows, zeroed first (the unfused schedules).
    fn per_head(
        &self,
        shape: &AttnShape,
        out: Fresh<'_, f32>,
        head: impl Fn(&HeadCtx, usize, &mut [f32]) + Sync,
    ) -> Result<()> {
        let per_head = shape.q_len * shape.head_dim;
        threads::install(self.threads, || {
            out.chunks(per_head)
                .into_par_iter()
                .enumerate()
                .for_each(|(bh, o)| {
                    let ctx = HeadCtx {
                        shape,
                        attn: self,
                        batch: bh / shape.heads,
                    };
                    head(&ctx, bh, o.zeroed());
                });
        })
    }

    fn run_float<T: FloatElem>(
        &self,
        shape: &AttnShape,
        q: &[T],
        k: &[T],
        v: &[T],
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        let kernel = kernels::active()?;
        let scale = self.softmax_scale(shape.head_dim);
        let overflow = std::sync::atomic::AtomicBool::new(false);
        self.per_head(shape, out, |ctx, bh, o| {
            let (qh, kh, vh) = head_slices(shape, bh, q, k, v);
            if !ctx.float_head(kernel, scale, qh, kh, vh, o) {
                overflow.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })?;
        if overflow.into_inner() {
            return Err(Error::Unsupported(
                "fp16 pipeline: the scaled scores overflow f16; use fp32 or an integer pipeline"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Room for the output of a call on `threads` workers, to be zeroed by them as they write it
/// ([`crate::aligned::vec_built_by`]). Where it is allocated was measured (device Xeon, glibc 2.39):
/// - one worker: here, on the calling thread, which also frees it. Allocated on the worker,
///   its arena gave the pages back after every call (L = 1024: 265 page faults per call,
///   1.3-2.0 ms instead of 1.0-1.1 ms).
/// - several: on a worker (`vec_built_by` reserves room in an empty `Vec` there). The
///   caller's arena hands back the same block every call, whose lines the previous call's
///   workers still hold modified in their own caches, and the blocks then pull them over
///   one by one (L = 4096, 16 threads: 1.57-1.63 ms against 1.32-1.49 ms, rotated order).
fn output_storage(shape: &AttnShape, threads: usize) -> Vec<f32> {
    if threads::resolved(threads) == 1 {
        Vec::with_capacity(shape.q_elems())
    } else {
        Vec::new()
    }
}

/// `out` must hold exactly the output's values.
fn check_out(shape: &AttnShape, len: usize) -> Result<()> {
    if len != shape.q_elems() {
        return shape_err(format!(
            "the output has {len} elements, shape {}x{}x{}x{} needs {}",
            shape.batch,
            shape.heads,
            shape.q_len,
            shape.head_dim,
            shape.q_elems()
        ));
    }
    Ok(())
}

pub(crate) fn check_lens(shape: &AttnShape, q: usize, k: usize, v: usize) -> Result<()> {
    if q != shape.q_elems() {
        return shape_err(format!(
            "Q has {q} elements, shape {}x{}x{}x{} needs {}",
            shape.batch,
            shape.heads,
            shape.q_len,
            shape.head_dim,
            shape.q_elems()
        ));
    }
    for (name, n) in [("K", k), ("V", v)] {
        if n != shape.kv_elems() {
            return shape_err(format!(
                "{name} has {n} elements, shape {}x{}x{}x{} needs {}",
                shape.batch,
                shape.kv_heads,
                shape.kv_len,
                shape.head_dim,
                shape.kv_elems()
            ));
        }
    }
    Ok(())
}

fn to_f16(what: &'static str, x: &[f32]) -> Result<Vec<f16>> {
    check_finite(what, x)?;
    if let Some(i) = x.iter().position(|v| v.abs() > f16::MAX.to_f32()) {
        return Err(Error::Unsupported(format!(
            "{what}[{i}] = {} is outside the f16 range (|x| <= 65504)",
            x[i]
        )));
    }
    let mut h = vec![f16::ZERO; x.len()];
    h.convert_from_f32_slice(x);
    Ok(h)
}

/// The flat key/value head index `b * kv_heads + kvh` that query head `bh = b * heads + h` reads.
pub(crate) fn kv_head_index(shape: &AttnShape, bh: usize) -> usize {
    let (b, h) = (bh / shape.heads, bh % shape.heads);
    b * shape.kv_heads + h / (shape.heads / shape.kv_heads)
}

/// The Q, K and V slices of flat head index `bh = b * heads + h`.
pub(crate) fn head_slices<'a, T>(
    shape: &AttnShape,
    bh: usize,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
) -> (&'a [T], &'a [T], &'a [T]) {
    let qn = shape.q_len * shape.head_dim;
    let kn = shape.kv_len * shape.head_dim;
    let kv = kv_head_index(shape, bh);
    (
        &q[bh * qn..(bh + 1) * qn],
        &k[kv * kn..(kv + 1) * kn],
        &v[kv * kn..(kv + 1) * kn],
    )
}

#[derive(Clone, Copy)]
pub(crate) enum IntSoftmax {
    /// IntAttention: IndexSoftmax with these parameters.
    Index { params: IndexSoftmaxParams },
    /// INT8 baseline: logits = S * logit_scale, f32 softmax, P = round(255 p).
    Float { logit_scale: f32 },
}

impl IntSoftmax {
    /// Softmax of one score row whose first `valid` keys take part, into the u8 row `prow`
    /// (same length as `srow`). Returns the divisor of the row's O32: 255 when P carries scale
    /// 1/255, the row sum for Deferred. `frow` is f32 scratch at least `srow.len()` long. Every
    /// schedule calls this, so they agree bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn row(
        &self,
        kernel: &dyn Kernel,
        lut: &Lut,
        srow: &[i32],
        valid: usize,
        prow: &mut [u8],
        frow: &mut [f32],
    ) -> u32 {
        match self {
            IntSoftmax::Index { params } => match params.variant {
                SoftmaxVariant::PaperSim => {
                    reference::index_softmax_paper_sim_row(
                        srow,
                        |j| j < valid,
                        lut,
                        params.threshold,
                        prow,
                    );
                    255
                }
                SoftmaxVariant::Normalized => {
                    let sum = kernel.index_softmax_row(srow, valid, lut, params.threshold, prow);
                    kernel.normalize_row(prow, sum);
                    255
                }
                SoftmaxVariant::Deferred => {
                    kernel.index_softmax_row(srow, valid, lut, params.threshold, prow)
                }
            },
            IntSoftmax::Float { logit_scale } => {
                let frow = &mut frow[..srow.len()];
                for (f, &x) in frow.iter_mut().zip(srow) {
                    *f = x as f32 * logit_scale;
                }
                kernel.softmax_f32_row(frow, valid);
                for (pv, &f) in prow.iter_mut().zip(frow.iter()) {
                    *pv = (f * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
                }
                255
            }
        }
    }
}

/// One output row from its exact O32 row (i32 or i64) and divisor (0 for a fully masked row):
/// SPEC section 4, correctly rounded, the same bits as [`reference::dequantize_output`].
///
/// Eight entries at a time go through [`reference::dequantize_output_fast`]'s arithmetic
/// without branches (so the compiler vectorises it, with AVX2 or AVX-512 where the CPU has
/// them, see [`crate::simd`]); a group where any entry needs the exact path (about one in 10^7
/// for random data, or an O32 past 2^53) is redone entry by entry.
pub(crate) fn output_row<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32]) {
    output_row_at(crate::simd::level(), o32, divisor, v_scale, out)
}

/// An exact P x V result entry: i32 (one key chunk) or i64 (chunks summed).
pub(crate) trait O32: Copy + Into<i64> {}
impl O32 for i32 {}
impl O32 for i64 {}

crate::simd::dispatch! {
    /// [`output_row`] compiled for a given [`crate::simd::Level`].
    pub(crate) fn output_row_at<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32])
        => output_row_body
}

#[inline(always)]
fn output_row_body<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32]) {
    const GROUP: usize = 8;
    let factor = reference::row_factor(v_scale, divisor);
    let one = |o: &mut f32, x: T| {
        let x: i64 = x.into();
        *o = reference::dequantize_output_fast(x, factor)
            .unwrap_or_else(|| reference::dequantize_output_exact(x, v_scale, divisor));
    };
    if factor == 0.0 {
        out.fill(0.0);
        return;
    }
    let mut outs = out.chunks_exact_mut(GROUP);
    let mut ins = o32.chunks_exact(GROUP);
    for (o, x) in (&mut outs).zip(&mut ins) {
        let x: [T; GROUP] = x.try_into().expect("group");
        let o: &mut [f32; GROUP] = o.try_into().expect("group");
        // Per entry, all in integer lanes: `x` past 2^53, |q| outside f32's normal range
        // (compared as bit patterns, which order like magnitudes), or the low 29 bits of q
        // within 16 of the f32 halfway point. `x == 0` gives q = +0.0, which is exact.
        const MIN_BITS: u64 = (f32::MIN_POSITIVE as f64).to_bits();
        const MAX_BITS: u64 = (f32::MAX as f64).to_bits();
        let mut bad = 0u64;
        for (o, &x) in o.iter_mut().zip(&x) {
            let x: i64 = x.into();
            let q = x as f64 * factor;
            let bits = q.to_bits();
            let mag = bits & !(1 << 63);
            let low = bits & ((1 << 29) - 1);
            let big = (x.unsigned_abs() >= 1 << 53) as u64;
            let range = ((mag.wrapping_sub(MIN_BITS) >= MAX_BITS - MIN_BITS) & (x != 0)) as u64;
            let near = (low.wrapping_sub((1 << 28) - 16) <= 32) as u64;
            bad |= big | range | near;
            *o = q as f32;
        }
        if bad != 0 {
            for (o, &x) in o.iter_mut().zip(&x) {
                one(o, x);
            }
        }
    }
    for (o, &x) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
        one(o, x);
    }
}

struct HeadCtx<'a> {
    shape: &'a AttnShape,
    attn: &'a Attention,
    batch: usize,
}

/// f32 and f16 through one code path: the element type of the GEMMs.
trait FloatElem: Copy + Send + Sync + Default + 'static {
    /// `dst[i] = src[i]` as f32 (exact), for slices of equal length.
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = src[i]` rounded to nearest even, for slices of equal length.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    fn matmul(
        a: &[Self],
        b: &[Self],
        m: usize,
        n: usize,
        k: usize,
        rhs: Rhs,
        alpha: f32,
        c: &mut [Self],
    );
}

impl FloatElem for f32 {
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn matmul(
        a: &[f32],
        b: &[f32],
        m: usize,
        n: usize,
        k: usize,
        rhs: Rhs,
        alpha: f32,
        c: &mut [f32],
    ) {
        matmul_f32(a, b, m, n, k, rhs, alpha, c)
    }
}

/// The conversions of `half`'s slice methods: F16C on x86-64 and FCVT on aarch64 where the
/// CPU has them (checked at run time), the same IEEE rounding as one value at a time.
impl FloatElem for f16 {
    fn to_f32_slice(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn from_f32_slice(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
    fn matmul(
        a: &[f16],
        b: &[f16],
        m: usize,
        n: usize,
        k: usize,
        rhs: Rhs,
        alpha: f32,
        c: &mut [f16],
    ) {
        matmul_f16(a, b, m, n, k, rhs, alpha, c)
    }
}

impl HeadCtx<'_> {
    /// One head of the fp32 or fp16 pipeline. Returns false if a score overflowed.
    fn float_head<T: FloatElem>(
        &self,
        kernel: &dyn Kernel,
        scale: f32,
        q: &[T],
        k: &[T],
        v: &[T],
        out: &mut [f32],
    ) -> bool {
        let (lq, lk, d) = (self.shape.q_len, self.shape.kv_len, self.shape.head_dim);
        let mut s = vec![T::default(); lq * lk];
        T::matmul(q, k, lq, lk, d, Rhs::Transposed, scale, &mut s);
        let mut row = vec![0f32; lk];
        for i in 0..lq {
            let srow = &mut s[i * lk..(i + 1) * lk];
            T::to_f32_slice(srow, &mut row);
            if row.iter().any(|x| !x.is_finite()) {
                return false;
            }
            kernel.softmax_f32_row(&mut row, self.attn.valid_keys(self.shape, self.batch, i));
            T::from_f32_slice(&row, srow);
        }
        let mut o = vec![T::default(); lq * d];
        T::matmul(&s, v, lq, d, lk, Rhs::Plain, 1.0, &mut o);
        T::to_f32_slice(&o, out);
        true
    }

    /// One head of the int8 or IntAttention pipeline.
    #[allow(clippy::too_many_arguments)]
    fn int_head(
        &self,
        kernel: &dyn Kernel,
        softmax: &IntSoftmax,
        lut: &Lut,
        q: &[i8],
        k: &[i8],
        v: &[i8],
        v_scale: f32,
        out: &mut [f32],
    ) {
        let (lq, lk, d) = (self.shape.q_len, self.shape.kv_len, self.shape.head_dim);
        let mut s = vec![0i32; lq * lk];
        kernel.gemm_s8s8_nt(q, k, lq, lk, d, &mut s);
        let mut p = vec![0u8; lq * lk];
        // Per-row divisor of O32 (255 for P with scale 1/255, the row sum for Deferred).
        let mut divisor = vec![255u32; lq];
        let mut frow = vec![0f32; lk];
        for i in 0..lq {
            let valid = self.attn.valid_keys(self.shape, self.batch, i);
            let srow = &s[i * lk..(i + 1) * lk];
            let prow = &mut p[i * lk..(i + 1) * lk];
            divisor[i] = softmax.row(kernel, lut, srow, valid, prow, &mut frow);
        }
        let o32 = pv_product(kernel, &p, v, lq, lk, d);
        for i in 0..lq {
            output_row(
                &o32[i * d..(i + 1) * d],
                divisor[i],
                v_scale,
                &mut out[i * d..(i + 1) * d],
            );
        }
    }
}

/// `P[lq x lk] * V[lk x d]` exactly, in i64 (key ranges past the i32-safe depth are split).
pub(crate) fn pv_product(
    kernel: &dyn Kernel,
    p: &[u8],
    v: &[i8],
    lq: usize,
    lk: usize,
    d: usize,
) -> Vec<i64> {
    let mut acc = vec![0i64; lq * d];
    if lk <= MAX_K_U8S8 {
        let mut c = vec![0i32; lq * d];
        kernel.gemm_u8s8(p, v, lq, d, lk, &mut c);
        for (a, x) in acc.iter_mut().zip(c) {
            *a = x as i64;
        }
        return acc;
    }
    // Long key ranges: one query row at a time, keys in chunks that cannot overflow i32.
    let mut c = vec![0i32; d];
    for i in 0..lq {
        for start in (0..lk).step_by(MAX_K_U8S8) {
            let end = (start + MAX_K_U8S8).min(lk);
            kernel.gemm_u8s8(
                &p[i * lk + start..i * lk + end],
                &v[start * d..end * d],
                1,
                d,
                end - start,
                &mut c,
            );
            for (a, &x) in acc[i * d..(i + 1) * d].iter_mut().zip(&c) {
                *a += x as i64;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::output_row;
    use crate::reference::dequantize_output;
    use proptest::prelude::*;

    /// `output_row` must give the bits of `dequantize_output` entry by entry, whichever path
    /// (vector group, group redone, remainder) an entry takes.
    fn check<T: super::O32 + std::fmt::Debug>(o32: &[T], s_v: f32, div: u32) {
        for level in crate::simd::levels() {
            let mut got = vec![f32::NAN; o32.len()];
            super::output_row_at(level, o32, div, s_v, &mut got);
            for (i, (&x, &g)) in o32.iter().zip(&got).enumerate() {
                let want = dequantize_output(x.into(), s_v, div);
                assert!(
                    g.to_bits() == want.to_bits(),
                    "{level:?}, entry {i}: {x:?} * {s_v:e} / {div}: got {g:e}, want {want:e}"
                );
            }
        }
        let mut got = vec![f32::NAN; o32.len()];
        output_row(o32, div, s_v, &mut got);
        assert!(got
            .iter()
            .zip(o32)
            .all(|(g, &x)| g.to_bits() == dequantize_output(x.into(), s_v, div).to_bits()));
    }

    #[test]
    fn output_row_on_halfway_families_and_edges() {
        for s_v in [
            0.9f32 / 127.0,
            1.0 / 127.0,
            3.0 * 2f32.powi(-20),
            0.1,
            1e-44,
            3e38,
            0.0,
        ] {
            for div in [255u32, 3 * 255, 17 * 255, 256, 7, 1, 0, u32::MAX] {
                let row: Vec<i32> = (-1500..1500).map(|x| x * 255).collect();
                check(&row, s_v, div);
                let wide: Vec<i64> = (-1500i64..1500)
                    .map(|x| x * 255)
                    .chain([1 << 53, -(1 << 53) - 1, i64::MAX, i64::MIN, 0, 1, -1])
                    .collect();
                check(&wide, s_v, div);
                let extremes = [i32::MIN, i32::MAX, 0, -1, 1, 255, -255, 7, 9, 13, 17];
                check(&extremes, s_v, div);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn output_row_matches_the_reference(
            row in prop::collection::vec(any::<i32>(), 0..40),
            wide in prop::collection::vec(any::<i64>(), 0..40),
            s_v in prop_oneof![(0u32..0x7f80_0000).prop_map(f32::from_bits), 1e-4f32..0.05],
            div in prop_oneof![Just(255u32), 0u32..100_000, any::<u32>()],
        ) {
            check(&row, s_v, div);
            check(&wide, s_v, div);
        }
    }
}
