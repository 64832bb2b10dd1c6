//! Multi-head attention through the four pipelines: the configuration ([`Attention`]), the
//! calls that run it, and the schedules behind them.
//!
//! - [`engine`]: the integer pipelines' row-block schedule (fused, key-split for few rows),
//!   on per-call inputs and on a [`crate::KvCache`] alike.
//! - [`prep`]: what an integer call does before its blocks: scales, K smoothing, quantized
//!   and packed key chunks.
//! - [`unfused`]: the integer pipelines one head at a time over a whole score matrix, the
//!   behavioural reference of the engine.
//! - [`float`]: the fp32 and fp16 pipelines.

mod engine;
mod float;
mod mask;
mod plan;
mod prep;
mod rows;
mod shape;
mod unfused;
mod workspace;

use std::str::FromStr;

pub use shape::AttnShape;
pub use workspace::Workspace;

pub(crate) use engine::{run_integer, ChunkRef, IntInputs, KvSide, QSide, UnitRef};
pub(crate) use float::{
    finish as float_finish, fp16_range, gather, head as float_head, FloatPage, HeadError,
};
pub(crate) use mask::Visibility;
pub(crate) use prep::{column_maxima, non_finite_in, unit_mean, v_slice_scales};

use crate::error::{check_len, invalid, Error, Result};
use crate::exec::Executor;
use crate::kernels::Kernel;
use crate::lut::{DEFAULT_CLIP, DEFAULT_TABLE_BITS};
use crate::memory::{built_in, vec_built_by};
use crate::ops::quant::QTensor;
use crate::ops::softmax::{IndexSoftmaxParams, SoftmaxVariant};
use crate::pipeline::Pipeline;
use crate::tensor::TensorView;

/// How the integer pipelines walk a head. Every schedule gives the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// The fastest available (fused).
    #[default]
    Auto,
    /// Materialise the whole `Lq x Lk` score block per head (the behavioural reference).
    Unfused,
    /// Row blocks: scores, softmax and P x V per block of query rows, never an `Lq x Lk`
    /// buffer; keys split across workers when there are few query rows.
    Fused,
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Schedule::Auto),
            "unfused" => Ok(Schedule::Unfused),
            "fused" => Ok(Schedule::Fused),
            _ => invalid("schedule", s, "auto, unfused or fused"),
        }
    }
}

/// Which slices of a tensor share one int8 scale (docs/numerics.md, section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Granularity {
    /// One scale for the whole tensor a call receives (the contract's section 1).
    PerTensor,
    /// One scale per batch row and head.
    PerHead,
    /// One scale per row of a head (queries only; the threshold `T` becomes per row).
    PerRow,
}

impl FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "tensor" | "per-tensor" => Ok(Granularity::PerTensor),
            "head" | "per-head" => Ok(Granularity::PerHead),
            "row" | "per-row" => Ok(Granularity::PerRow),
            _ => invalid("granularity", s, "tensor, head or row"),
        }
    }
}

/// How the integer pipelines quantize Q, K and V (docs/numerics.md, sections 1 and 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Quantization {
    /// Scales of Q.
    pub q: Granularity,
    /// Scales of K and of V (per tensor or per head).
    pub kv: Granularity,
    /// Subtract the mean key of each head (over its valid keys) before quantizing K. Every
    /// softmax row is unchanged in exact arithmetic (each logit moves by the same `q . mean`),
    /// while the keys' int8 range no longer has to cover their common offset.
    pub smooth_k: bool,
    /// One V scale per column (head-dimension channel) of each K/V slice instead of one for
    /// the slice: the output's column `c` is multiplied by its own scale, which costs nothing
    /// in the integer products.
    pub v_per_channel: bool,
    /// Subtract the mean value of each head (per channel, over its valid keys) before
    /// quantizing V, and add it back to the output. Exact for the Deferred finish, whose
    /// weights sum to one; for the 8-bit finishes it also fills in the probability mass that
    /// their rounding loses.
    pub smooth_v: bool,
}

impl Quantization {
    /// The contract's section 1: one scale per tensor, no smoothing (the paper's scheme).
    pub const PER_TENSOR: Quantization = Quantization {
        q: Granularity::PerTensor,
        kv: Granularity::PerTensor,
        smooth_k: false,
        v_per_channel: false,
        smooth_v: false,
    };

    /// Per-row Q scales, per-head K scales, per-head and per-channel V scales with smoothed V:
    /// the most accurate scheme on real activations (docs/accuracy-study.md), and the default
    /// of IntAttention's Deferred finish.
    pub const FINE: Quantization = Quantization {
        q: Granularity::PerRow,
        kv: Granularity::PerHead,
        smooth_k: false,
        v_per_channel: true,
        smooth_v: true,
    };

    /// The same with Q scales of granularity `q`.
    pub fn with_q(mut self, q: Granularity) -> Self {
        self.q = q;
        self
    }

    /// The same with K and V scales of granularity `kv`.
    pub fn with_kv(mut self, kv: Granularity) -> Self {
        self.kv = kv;
        self
    }

    /// The same with K smoothing on or off.
    pub fn with_smooth_k(mut self, smooth_k: bool) -> Self {
        self.smooth_k = smooth_k;
        self
    }

    /// The same with per-channel V scales on or off.
    pub fn with_v_per_channel(mut self, on: bool) -> Self {
        self.v_per_channel = on;
        self
    }

    /// The same with V smoothing on or off.
    pub fn with_smooth_v(mut self, on: bool) -> Self {
        self.smooth_v = on;
        self
    }

    fn check(&self) -> Result<()> {
        if self.kv == Granularity::PerRow {
            return invalid(
                "K/V granularity",
                "per-row",
                "per-tensor or per-head (keys of one row must share a scale)",
            );
        }
        Ok(())
    }
}

impl Default for Quantization {
    fn default() -> Self {
        Quantization::PER_TENSOR
    }
}

/// An attention configuration: pipeline, softmax, masks, kernel and where the work runs.
/// Immutable once built; share it between threads and calls.
#[derive(Clone, Debug)]
pub struct Attention {
    pipeline: Pipeline,
    variant: SoftmaxVariant,
    /// `None`: the finish's default (see [`Attention::table_bits`]).
    table_bits: Option<u32>,
    clip: f32,
    scale: Option<f32>,
    causal: bool,
    key_lens: Option<Vec<usize>>,
    schedule: Schedule,
    block_rows: Option<usize>,
    kernel: Option<Kernel>,
    executor: Executor,
    /// `None`: the finish's default (see [`Attention::quantization`]).
    quantization: Option<Quantization>,
}

/// IndexSoftmax table bits of the Deferred finish unless set: 7 bits (128 entries) give the
/// finish about 0.5 points of relative error less than the contract's 5 on real activations
/// (docs/accuracy-study.md) for a few percent of time.
pub const DEFERRED_TABLE_BITS: u32 = 7;

impl Default for Attention {
    fn default() -> Self {
        Attention::new(Pipeline::IntAttention)
    }
}

impl Attention {
    /// A configuration with the defaults: Deferred IndexSoftmax with its accurate settings
    /// (b = 7 and [`Quantization::FINE`]; the other finishes and pipelines default to the
    /// paper's b = 5 and per-tensor scales), c = 6.6, scale 1/sqrt(d), no masks, the fastest
    /// kernel, the current rayon pool. [`Attention::with_paper_settings`] gives the published
    /// method's settings for every finish.
    pub fn new(pipeline: Pipeline) -> Self {
        Attention {
            pipeline,
            variant: SoftmaxVariant::Deferred,
            table_bits: None,
            clip: DEFAULT_CLIP,
            scale: None,
            causal: false,
            key_lens: None,
            schedule: Schedule::Auto,
            block_rows: None,
            kernel: None,
            executor: Executor::CurrentPool,
            quantization: None,
        }
    }

    /// The same with the published IntAttention's settings, whatever the finish: b = 5,
    /// c = 6.6 and per-tensor scales (the contract's defaults; docs/numerics.md section 3).
    pub fn with_paper_settings(self) -> Self {
        self.with_table_bits(DEFAULT_TABLE_BITS)
            .with_clip(DEFAULT_CLIP)
            .with_quantization(Quantization::PER_TENSOR)
    }

    /// Whether the accurate defaults apply (IntAttention's Deferred finish).
    fn accurate_defaults(&self) -> bool {
        self.pipeline == Pipeline::IntAttention && self.variant == SoftmaxVariant::Deferred
    }

    /// The same configuration for another pipeline.
    pub fn with_pipeline(mut self, p: Pipeline) -> Self {
        self.pipeline = p;
        self
    }

    /// The same configuration with IndexSoftmax finish `v` (IntAttention only).
    pub fn with_variant(mut self, v: SoftmaxVariant) -> Self {
        self.variant = v;
        self
    }

    /// The same with IndexSoftmax table bits `b`, 4..=8 (IntAttention only; checked when a
    /// call runs).
    pub fn with_table_bits(mut self, b: u32) -> Self {
        self.table_bits = Some(b);
        self
    }

    /// The same with IndexSoftmax clip `c` in logit units (IntAttention only).
    pub fn with_clip(mut self, c: f32) -> Self {
        self.clip = c;
        self
    }

    /// The same with logit scale `s` instead of `1/sqrt(head_dim)`.
    pub fn with_scale(mut self, s: f32) -> Self {
        self.scale = Some(s);
        self
    }

    /// The same with the causal mask on or off: key `j` is masked for query `i` when `j > i +
    /// (kv_len - q_len)` (for a cached sequence of `len` tokens, when `j > i + (len - q_len)`).
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// The same with a valid key length per batch row (key padding); `None` removes it.
    pub fn with_key_lens(mut self, lens: impl Into<Option<Vec<usize>>>) -> Self {
        self.key_lens = lens.into();
        self
    }

    /// The same with schedule `s` for the integer pipelines (the float pipelines always run
    /// one head at a time).
    pub fn with_schedule(mut self, s: Schedule) -> Self {
        self.schedule = s;
        self
    }

    /// The same with `rows` query rows per row block of the fused schedule instead of a
    /// choice from the cache sizes and the worker count. For tuning and measuring: every
    /// choice gives the same bits.
    pub fn with_block_rows(mut self, rows: usize) -> Self {
        self.block_rows = Some(rows);
        self
    }

    /// The same on kernel `kernel` instead of [`Kernel::best`].
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// The same running where `executor` says (default: the current rayon pool).
    pub fn with_executor(mut self, executor: Executor) -> Self {
        self.executor = executor;
        self
    }

    /// The same quantizing Q, K and V as `q` says (integer pipelines).
    pub fn with_quantization(mut self, q: Quantization) -> Self {
        self.quantization = Some(q);
        self
    }

    /// The pipeline.
    pub fn pipeline(&self) -> Pipeline {
        self.pipeline
    }

    /// The IndexSoftmax finish.
    pub fn variant(&self) -> SoftmaxVariant {
        self.variant
    }

    /// IndexSoftmax table bits: as set, else [`DEFERRED_TABLE_BITS`] for IntAttention's
    /// Deferred finish and the contract's 5 otherwise.
    pub fn table_bits(&self) -> u32 {
        self.table_bits.unwrap_or(if self.accurate_defaults() {
            DEFERRED_TABLE_BITS
        } else {
            DEFAULT_TABLE_BITS
        })
    }

    /// IndexSoftmax clip.
    pub fn clip(&self) -> f32 {
        self.clip
    }

    /// The logit scale given, if any (see [`Attention::softmax_scale`]).
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }

    /// Whether the causal mask is on.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The key padding lengths, if any.
    pub fn key_lens(&self) -> Option<&[usize]> {
        self.key_lens.as_deref()
    }

    /// The schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The row-block override, if any.
    pub fn block_rows(&self) -> Option<usize> {
        self.block_rows
    }

    /// The kernel the calls run on.
    pub fn kernel(&self) -> Kernel {
        self.kernel.unwrap_or_else(Kernel::best)
    }

    /// Where the calls run.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The quantization scheme: as set, else [`Quantization::FINE`] for IntAttention's
    /// Deferred finish and [`Quantization::PER_TENSOR`] otherwise.
    pub fn quantization(&self) -> Quantization {
        self.quantization.unwrap_or(if self.accurate_defaults() {
            Quantization::FINE
        } else {
            Quantization::PER_TENSOR
        })
    }

    /// The logit scale in use for a head dimension.
    pub fn softmax_scale(&self, head_dim: usize) -> f32 {
        self.scale
            .unwrap_or_else(|| 1.0 / (head_dim.max(1) as f32).sqrt())
    }

    /// The checks of every call that do not depend on the data.
    pub(crate) fn check(&self, shape: &AttnShape) -> Result<()> {
        shape.validate()?;
        if let Some(s) = self.scale {
            if !s.is_finite() || s <= 0.0 {
                return invalid("scale", s, "finite and > 0");
            }
        }
        if self.block_rows == Some(0) {
            return invalid("block_rows", 0, "at least 1");
        }
        if let Some(lens) = &self.key_lens {
            check_len("key_lens", shape.batch, lens.len())?;
            if let Some((b, &l)) = lens.iter().enumerate().find(|(_, &l)| l > shape.kv_len) {
                return Err(Error::KeyLenTooLong {
                    batch: b,
                    len: l,
                    kv_len: shape.kv_len,
                });
            }
        }
        self.quantization().check()?;
        if self.pipeline == Pipeline::IntAttention {
            IndexSoftmaxParams::new(1, self.variant)?
                .with_table_bits(self.table_bits())?
                .with_clip(self.clip)?;
        }
        Ok(())
    }

    /// Runs attention on contiguous f32 inputs (`[batch, heads, len, head_dim]`, shapes as
    /// [`AttnShape`] says) and returns the f32 output shaped like Q. Each call makes its own
    /// scratch memory; a loop of calls should hold a [`Workspace`] and use
    /// [`Attention::run_into`].
    ///
    /// # Errors
    /// Bad shapes or lengths, parameters out of range, NaN or infinite inputs, scores that
    /// overflow the pipeline's arithmetic, a non-finite output, or memory that cannot be had:
    /// see [`Error`]. Nothing is returned on error.
    pub fn run(&self, shape: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        self.check(shape)?;
        let (q, k, v) = views(shape, q, k, v)?;
        self.run_with(&mut Workspace::new(), q, k, v)
    }

    /// Attention on strided f32 views with scratch memory from `ws`, returning a new output
    /// vector (`[batch, heads, q_len, head_dim]`). Same bits as [`Attention::run`].
    ///
    /// # Errors
    /// As [`Attention::run`].
    pub fn run_with(
        &self,
        ws: &mut Workspace,
        q: TensorView<'_, f32>,
        k: TensorView<'_, f32>,
        v: TensorView<'_, f32>,
    ) -> Result<Vec<f32>> {
        let shape = shape_of(q.dims(), k.dims(), v.dims())?;
        self.check(&shape)?;
        let storage = output_storage(shape.q_elems())?;
        let (out, done) = vec_built_by(storage, shape.q_elems(), |o| {
            self.dispatch(ws, Inputs::Float { q, k, v }, o)
        });
        done.map_err(|e| locate(e, &out)).map(|()| out)
    }

    /// Attention on strided f32 views into a caller's output (`[batch, heads, q_len,
    /// head_dim]` contiguous; every value is overwritten), with scratch memory from `ws`, so
    /// that a loop of calls allocates nothing once the workspace has grown. Same bits as
    /// [`Attention::run`].
    ///
    /// # Errors
    /// As [`Attention::run`], and [`Error::LengthMismatch`] for an output of the wrong length.
    /// Errors found before the call starts (shapes, parameters, the output's length) leave
    /// `out` as it was; after that, an error leaves every value of `out` zero.
    pub fn run_into(
        &self,
        ws: &mut Workspace,
        q: TensorView<'_, f32>,
        k: TensorView<'_, f32>,
        v: TensorView<'_, f32>,
        out: &mut [f32],
    ) -> Result<()> {
        let shape = shape_of(q.dims(), k.dims(), v.dims())?;
        self.check(&shape)?;
        check_len("output", shape.q_elems(), out.len())?;
        let r = built_in(out, |o| self.dispatch(ws, Inputs::Float { q, k, v }, o))
            .map_err(|e| locate(e, out));
        if r.is_err() {
            out.fill(0.0);
        }
        r
    }

    /// Runs an integer pipeline on int8 tensors the caller already holds (contiguous, any i8
    /// values, -128 included, one scale each).
    ///
    /// # Errors
    /// As [`Attention::run`], and [`Error::PipelineMismatch`] for a float pipeline.
    pub fn run_quantized(
        &self,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
    ) -> Result<Vec<f32>> {
        self.check_quantized(shape, q, k, v)?;
        let mut ws = Workspace::new();
        let storage = output_storage(shape.q_elems())?;
        let (out, done) = vec_built_by(storage, shape.q_elems(), |o| {
            self.dispatch(
                &mut ws,
                Inputs::Quantized {
                    shape: *shape,
                    q,
                    k,
                    v,
                },
                o,
            )
        });
        done.map_err(|e| locate(e, &out)).map(|()| out)
    }

    /// [`Attention::run_quantized`] into a caller's output with a caller's workspace.
    ///
    /// # Errors
    /// As [`Attention::run_quantized`]; errors after the checks leave `out` zero, as for
    /// [`Attention::run_into`].
    pub fn run_quantized_into(
        &self,
        ws: &mut Workspace,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_quantized(shape, q, k, v)?;
        check_len("output", shape.q_elems(), out.len())?;
        let r = built_in(out, |o| {
            self.dispatch(
                ws,
                Inputs::Quantized {
                    shape: *shape,
                    q,
                    k,
                    v,
                },
                o,
            )
        })
        .map_err(|e| locate(e, out));
        if r.is_err() {
            out.fill(0.0);
        }
        r
    }

    fn check_quantized(
        &self,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
    ) -> Result<()> {
        self.check(shape)?;
        check_len("Q", shape.q_elems(), q.data().len())?;
        check_len("K", shape.kv_elems(), k.data().len())?;
        check_len("V", shape.kv_elems(), v.data().len())?;
        if !self.pipeline.is_integer() {
            return Err(Error::PipelineMismatch {
                operation: "run_quantized",
                pipeline: self.pipeline,
            });
        }
        Ok(())
    }

    /// Every pipeline on checked inputs, on this configuration's executor.
    fn dispatch(
        &self,
        ws: &mut Workspace,
        inputs: Inputs<'_>,
        out: crate::memory::Fresh<'_, f32>,
    ) -> Result<()> {
        let kernel = self.kernel();
        match (self.pipeline, inputs) {
            (Pipeline::Fp32 | Pipeline::Fp16, Inputs::Float { q, k, v }) => {
                float::run(self, kernel, q, k, v, out)
            }
            (_, Inputs::Float { q, k, v }) => run_integer(
                self,
                ws,
                kernel,
                IntInputs {
                    q: QSide::Float(q),
                    kv: KvSide::Float { k, v },
                },
                out,
            ),
            (_, Inputs::Quantized { shape, q, k, v }) => run_integer(
                self,
                ws,
                kernel,
                IntInputs {
                    q: QSide::Int { shape, t: q },
                    kv: KvSide::Int { k, v },
                },
                out,
            ),
        }
    }
}

/// The inputs of one call before dispatch.
#[derive(Clone, Copy)]
enum Inputs<'a> {
    Float {
        q: TensorView<'a, f32>,
        k: TensorView<'a, f32>,
        v: TensorView<'a, f32>,
    },
    Quantized {
        shape: AttnShape,
        q: &'a QTensor,
        k: &'a QTensor,
        v: &'a QTensor,
    },
}

/// Contiguous views of the three inputs of `shape`.
fn views<'a>(
    shape: &AttnShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
) -> Result<(
    TensorView<'a, f32>,
    TensorView<'a, f32>,
    TensorView<'a, f32>,
)> {
    let named = |t: &'static str, data: &'a [f32], dims: [usize; 4]| {
        TensorView::new(data, dims).map_err(|e| match e {
            Error::LengthMismatch {
                expected, found, ..
            } => Error::LengthMismatch {
                tensor: t,
                expected,
                found,
            },
            e => e,
        })
    };
    let qd = [shape.batch, shape.heads, shape.q_len, shape.head_dim];
    let kd = [shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim];
    Ok((named("Q", q, qd)?, named("K", k, kd)?, named("V", v, kd)?))
}

/// The shape three views describe, or the dimension where they disagree.
pub(crate) fn shape_of(q: [usize; 4], k: [usize; 4], v: [usize; 4]) -> Result<AttnShape> {
    let [b, h, lq, d] = q;
    let [kb, kh, lk, kd] = k;
    let mismatch = |tensor, dim, expected, found| Error::DimensionMismatch {
        tensor,
        dim,
        expected,
        found,
    };
    if kb != b {
        return Err(mismatch("K", "batch", b, kb));
    }
    if kd != d {
        return Err(mismatch("K", "head_dim", d, kd));
    }
    for (i, name) in ["batch", "kv_heads", "kv_len", "head_dim"]
        .iter()
        .enumerate()
    {
        if v[i] != k[i] {
            return Err(mismatch("V", name, k[i], v[i]));
        }
    }
    let shape = AttnShape {
        batch: b,
        heads: h,
        kv_heads: kh,
        q_len: lq,
        kv_len: lk,
        head_dim: d,
    };
    Ok(shape)
}

/// Room for an output of `len` values, reserved fallibly (the values are written by the
/// workers that compute them, [`vec_built_by`]).
fn output_storage(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::Allocation {
        what: "the output",
        bytes: len.saturating_mul(4),
    })?;
    Ok(v)
}

/// A non-finite output error with the first offending entry of `out` filled in (workers only
/// flag that they wrote one).
pub(crate) fn locate(e: Error, out: &[f32]) -> Error {
    match e {
        Error::NonFiniteOutput { pipeline, .. } => {
            let index = out.iter().position(|x| !x.is_finite()).unwrap_or(0);
            Error::NonFiniteOutput {
                pipeline,
                index,
                value: out.get(index).copied().unwrap_or(f32::NAN),
            }
        }
        e => e,
    }
}

/// Checks that contiguous Q, K and V buffers have the lengths of `shape` (the ACL backend
/// takes contiguous inputs).
#[cfg_attr(not(intattention_acl), allow(dead_code))]
pub(crate) fn check_lens(shape: &AttnShape, q: usize, k: usize, v: usize) -> Result<()> {
    check_len("Q", shape.q_elems(), q)?;
    check_len("K", shape.kv_elems(), k)?;
    check_len("V", shape.kv_elems(), v)
}

/// The Q, K and V slices of flat head index `bh = b * heads + h` of contiguous inputs.
#[cfg_attr(not(intattention_acl), allow(dead_code))]
pub(crate) fn head_slices<'a, T>(
    shape: &AttnShape,
    bh: usize,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
) -> (&'a [T], &'a [T], &'a [T]) {
    let (b, h) = (bh / shape.heads, bh % shape.heads);
    let kv = b * shape.kv_heads + h / shape.group();
    let qn = shape.q_len * shape.head_dim;
    let kn = shape.kv_len * shape.head_dim;
    (
        &q[bh * qn..(bh + 1) * qn],
        &k[kv * kn..(kv + 1) * kn],
        &v[kv * kn..(kv + 1) * kn],
    )
}

impl Attention {
    /// How many keys query row `i` of batch row `b` attends to (always keys `0..n`) for
    /// inputs of `shape`: the key padding and the causal limit.
    pub fn valid_keys(&self, shape: &AttnShape, b: usize, i: usize) -> usize {
        let mut n = shape.kv_len;
        if let Some(lens) = &self.key_lens {
            n = n.min(lens[b]);
        }
        if self.causal {
            n = n.min((i + shape.kv_len + 1).saturating_sub(shape.q_len));
        }
        n
    }
}
