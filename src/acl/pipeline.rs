//! The four pipelines of docs/numerics.md (section 5) on ACL, configured once per shape and run per
//! head.
//!
//! Per head (`Lq x d` Q, `Lk x d` K and V), every pipeline really transposes K (NETranspose)
//! before `Q x K^T`, and both GEMMs re-read B on every run (K and V change per head).
//!
//! | pipe    | Q x K^T                    | softmax                                          | P x V |
//! |---------|----------------------------|--------------------------------------------------|-------|
//! | fp32    | NEGEMM f32, alpha = scale  | [logits mask], NESoftmaxLayer                    | NEGEMM f32 |
//! | fp16    | NEGEMM f16, alpha = scale  | NECast to f32, [mask], NESoftmaxLayer, NECast to f16 | NEGEMM f16 |
//! | int8    | NEGEMMLowp s8 x s8 -> s32  | NECast to f32, logits (x s_q s_k scale, mask), NESoftmaxLayer, NEQuantizationLayer to u8 (1/255) | NEGEMMLowp -> s32 |
//! | intattn | NEGEMMLowp s8 x s8 -> s32  | IndexSoftmax -> u8, row sums (NEIndexSoftmaxLayer in a patched ACL, else the shim's kernel) | NEGEMMLowp -> s32 |
//!
//! P x V in the integer pipelines: ACL computes u8 x s8 wrongly (see `Function::gemm_lowp`),
//! so V enters as `V + 128` in QAsymm8 and `128 * rowsum(P)` is subtracted: the S32 result is
//! exactly `P x V`. With Deferred IndexSoftmax `rowsum(P)` is the row sum IndexSoftmax already
//! returns, so V carries offset 0 (ACL then skips its row reduction of P and its offset
//! contribution) and the subtraction happens here; elsewhere V carries offset 128 and ACL's
//! offset contribution subtracts it.
//!
//! IntAttention supports all three IndexSoftmax variants (Normalized is the paper's output,
//! Deferred the default), inside ACL when it carries our patch and through the shim's kernel
//! otherwise, and its output is bit-identical to the native pipeline.
//!
//! Quantization scales change with every call's data, while ACL fixes quantization info and
//! softmax beta at configure time: the tensors carry scale 1, the threshold T and the int8
//! logit scale are set on the shim kernels before each run, and the f32 output is scaled here.

use half::f16;

use super::functions::{Function, GemmOptions};
use super::tensor::{DataType, Tensor, TensorDesc};
use super::{param_err, Error, Result};
use crate::attention::{check_lens, head_slices, Attention, AttnShape, Quantization};
use crate::ops::quant::{check_finite, QTensor};
use crate::ops::softmax::{IndexSoftmaxParams, SoftmaxVariant};
use crate::pipeline::Pipeline;

/// The integer intermediates of one head, for bit-exact comparison with the native kernels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadTrace {
    /// `Lq x Lk` S32 scores `Q x K^T`.
    pub scores: Vec<i32>,
    /// `Lq x Lk` U8 probabilities (IndexSoftmax's output, or the int8 pipeline's quantized P).
    pub probs: Vec<u8>,
    /// IndexSoftmax's row sums of table values (Deferred IntAttention only; empty otherwise).
    pub row_sums: Vec<u32>,
    /// `Lq x d` S32 `P x V`.
    pub o32: Vec<i32>,
}

/// Attention on ACL for one configuration and shape.
pub struct AclAttention {
    attn: Attention,
    shape: AttnShape,
    graph: Graph,
}

enum Graph {
    Float(FloatGraph),
    Int(IntGraph),
}

struct FloatGraph {
    half: bool,
    q: Tensor<'static>,
    k: Tensor<'static>,
    v: Tensor<'static>,
    o: Tensor<'static>,
    /// Functions in run order.
    steps: Vec<Function<'static>>,
    /// Index into `steps` of the logits (mask) kernel, when masks are on.
    logits: Option<usize>,
}

struct IntGraph {
    q: Tensor<'static>,
    k: Tensor<'static>,
    v: Tensor<'static>,
    scores: Tensor<'static>,
    probs: Tensor<'static>,
    row_sums: Option<Tensor<'static>>,
    o32: Tensor<'static>,
    /// `128 * rowsum(P)` is subtracted here from ACL's `P x (V + 128)` (Deferred: the row sums
    /// are rowsum(P)), not by ACL's offset contribution.
    subtract_v_offset: bool,
    steps: Vec<Function<'static>>,
    /// Index into `steps` of IndexSoftmax or of the int8 logits kernel.
    softmax: usize,
}

fn desc(dtype: DataType, rows: usize, cols: usize) -> TensorDesc {
    TensorDesc::new(dtype, &[rows, cols])
}

fn qdesc(dtype: DataType, rows: usize, cols: usize, scale: f32, offset: i32) -> TensorDesc {
    TensorDesc::quantized(dtype, &[rows, cols], scale, offset)
}

/// Streamed GEMM operands change on every run.
const STREAMED: GemmOptions = GemmOptions { b_constant: false };

impl AclAttention {
    /// Configures every ACL function for `shape` (nothing is allocated or run yet).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for integer pipelines with scales finer than per tensor
    /// (ACL quantizes per tensor); the checks of [`Attention::run`]; ACL's own errors.
    pub fn prepare(attn: &Attention, shape: &AttnShape) -> Result<Self> {
        attn.check(shape)?;
        // ACL's quantization info holds one scale per tensor.
        if attn.pipeline().is_integer() && attn.quantization() != Quantization::PER_TENSOR {
            return Err(Error::InvalidParameter {
                name: "quantization for the ACL backend",
                value: format!("{:?}", attn.quantization()),
                expected: "Quantization::PER_TENSOR (ACL quantizes per tensor; see \
                           Attention::with_paper_settings)",
            });
        }
        super::set_threads(attn.executor().workers())?;
        let graph = match attn.pipeline() {
            Pipeline::Fp32 => Graph::Float(FloatGraph::new(attn, shape, false)?),
            Pipeline::Fp16 => Graph::Float(FloatGraph::new(attn, shape, true)?),
            Pipeline::Int8 | Pipeline::IntAttention => Graph::Int(IntGraph::new(attn, shape)?),
        };
        Ok(AclAttention {
            attn: attn.clone(),
            shape: *shape,
            graph,
        })
    }

    /// The configuration it was prepared for.
    pub fn attention(&self) -> &Attention {
        &self.attn
    }

    /// The shape it was prepared for.
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }

    /// Runs on f32 inputs shaped as [`AttnShape`] says; the integer pipelines quantize each
    /// tensor per docs/numerics.md section 1 first, as the native pipelines do.
    pub fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        self.run_inner(q, k, v, None)
    }

    /// As [`AclAttention::run`], also returning every head's integer intermediates (integer
    /// pipelines only).
    pub fn run_traced(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<HeadTrace>)> {
        if !self.attn.pipeline().is_integer() {
            return param_err(format!(
                "traces exist for the integer pipelines, not {}",
                self.attn.pipeline()
            ));
        }
        let mut traces = Vec::new();
        let out = self.run_inner(q, k, v, Some(&mut traces))?;
        Ok((out, traces))
    }

    /// Runs an integer pipeline on int8 tensors the caller already holds (per-tensor scales).
    pub fn run_quantized(&mut self, q: &QTensor, k: &QTensor, v: &QTensor) -> Result<Vec<f32>> {
        self.run_quantized_inner(q, k, v, None)
    }

    fn run_inner(
        &mut self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        trace: Option<&mut Vec<HeadTrace>>,
    ) -> Result<Vec<f32>> {
        check_lens(&self.shape, q.len(), k.len(), v.len())?;
        match self.attn.pipeline() {
            Pipeline::Fp32 | Pipeline::Fp16 => {
                check_finite("Q", q)?;
                check_finite("K", k)?;
                check_finite("V", v)?;
                let Graph::Float(g) = &mut self.graph else {
                    unreachable!("float pipelines build float graphs")
                };
                g.run(&self.attn, &self.shape, q, k, v)
            }
            Pipeline::Int8 | Pipeline::IntAttention => {
                let (q, k, v) = (
                    QTensor::quantize(q)?,
                    QTensor::quantize(k)?,
                    QTensor::quantize(v)?,
                );
                self.run_quantized_inner(&q, &k, &v, trace)
            }
        }
    }

    fn run_quantized_inner(
        &mut self,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
        trace: Option<&mut Vec<HeadTrace>>,
    ) -> Result<Vec<f32>> {
        check_lens(&self.shape, q.data().len(), k.data().len(), v.data().len())?;
        for (name, t) in [("Q", q), ("K", k), ("V", v)] {
            if !t.scale().is_finite() || t.scale() < 0.0 {
                return param_err(format!("{name} scale must be finite and >= 0"));
            }
        }
        let Graph::Int(g) = &mut self.graph else {
            return param_err(format!(
                "run_quantized needs an integer pipeline, not {}",
                self.attn.pipeline()
            ));
        };
        g.run(&self.attn, &self.shape, q, k, v, trace)
    }
}

impl crate::backend::AttentionRunner for AclAttention {
    fn backend(&self) -> crate::backend::Backend {
        crate::backend::Backend::Acl
    }
    fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        AclAttention::run(self, q, k, v)
    }
}

fn is_masked(attn: &Attention) -> bool {
    attn.causal() || attn.key_lens().is_some()
}

/// Valid key counts of every query row of batch row `b`.
fn row_limits(attn: &Attention, shape: &AttnShape, b: usize) -> Vec<usize> {
    (0..shape.q_len)
        .map(|i| attn.valid_keys(shape, b, i))
        .collect()
}

impl FloatGraph {
    fn new(attn: &Attention, shape: &AttnShape, half: bool) -> Result<Self> {
        let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
        let et = if half { DataType::F16 } else { DataType::F32 };
        let q = Tensor::new(&desc(et, lq, d))?;
        let k = Tensor::new(&desc(et, lk, d))?;
        let kt = Tensor::new(&desc(et, d, lk))?;
        let v = Tensor::new(&desc(et, lk, d))?;
        let s = Tensor::new(&desc(et, lq, lk))?;
        let p = Tensor::new(&desc(et, lq, lk))?;
        let o = Tensor::new(&desc(et, lq, d))?;
        let scale = attn.softmax_scale(d);
        let mut steps = vec![
            Function::transpose(&k, &kt)?,
            Function::gemm(&q, &kt, &s, scale, STREAMED)?,
        ];
        let mut logits = None;
        if half {
            // f16 scores -> f32 softmax -> f16 probabilities (docs/numerics.md section 5, fp16).
            let s32 = Tensor::new(&desc(DataType::F32, lq, lk))?;
            let p32 = Tensor::new(&desc(DataType::F32, lq, lk))?;
            steps.push(Function::cast(&s, &s32)?);
            if is_masked(attn) {
                logits = Some(steps.len());
                steps.push(Function::logits(&s32)?);
            }
            steps.push(Function::softmax(&s32, &p32, 1.0)?);
            steps.push(Function::cast(&p32, &p)?);
        } else {
            if is_masked(attn) {
                logits = Some(steps.len());
                steps.push(Function::logits(&s)?);
            }
            steps.push(Function::softmax(&s, &p, 1.0)?);
        }
        steps.push(Function::gemm(&p, &v, &o, 1.0, STREAMED)?);
        Ok(FloatGraph {
            half,
            q,
            k,
            v,
            o,
            steps,
            logits,
        })
    }

    fn run(
        &mut self,
        attn: &Attention,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<Vec<f32>> {
        let (q16, k16, v16);
        if self.half {
            q16 = to_f16("Q", q)?;
            k16 = to_f16("K", k)?;
            v16 = to_f16("V", v)?;
        } else {
            (q16, k16, v16) = (Vec::new(), Vec::new(), Vec::new());
        }
        let per_head = shape.q_len * shape.head_dim;
        let mut out = vec![0f32; shape.q_elems()];
        let mut o16 = vec![f16::ZERO; if self.half { per_head } else { 0 }];
        let mut last_batch = None;
        for (bh, o) in out.chunks_mut(per_head).enumerate() {
            let b = bh / shape.heads;
            if self.half {
                let (qh, kh, vh) = head_slices(shape, bh, &q16, &k16, &v16);
                self.q.write(qh)?;
                self.k.write(kh)?;
                self.v.write(vh)?;
            } else {
                let (qh, kh, vh) = head_slices(shape, bh, q, k, v);
                self.q.write(qh)?;
                self.k.write(kh)?;
                self.v.write(vh)?;
            }
            if let Some(i) = self.logits {
                if last_batch != Some(b) {
                    self.steps[i].set_row_limits(Some(&row_limits(attn, shape, b)))?;
                    last_batch = Some(b);
                }
            }
            for f in &mut self.steps {
                f.run()?;
            }
            if self.half {
                self.o.read(&mut o16)?;
                for (dst, src) in o.iter_mut().zip(&o16) {
                    *dst = src.to_f32();
                }
            } else {
                self.o.read(o)?;
            }
            zero_masked_rows(attn, shape, b, o);
        }
        if let Some(i) = out.iter().position(|x| !x.is_finite()) {
            return Err(Error::Acl(format!(
                "{} pipeline on ACL: non-finite output at {i} (the scaled scores overflow f16?); \
                 use fp32 or an integer pipeline",
                attn.pipeline()
            )));
        }
        Ok(out)
    }
}

/// The element ranges of flat head `bh`'s Q and of its K/V head (grouped-query attention
/// shares one K/V head among `heads / kv_heads` query heads), as in `head_slices`.
fn head_ranges(shape: &AttnShape, bh: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let (b, h) = (bh / shape.heads, bh % shape.heads);
    let kv = b * shape.kv_heads + h / (shape.heads / shape.kv_heads);
    let qn = shape.q_len * shape.head_dim;
    let kn = shape.kv_len * shape.head_dim;
    (bh * qn..(bh + 1) * qn, kv * kn..(kv + 1) * kn)
}

/// Rows with no valid key give zeros (docs/numerics.md section 2: a fully masked row
/// gives an output of zeros).
fn zero_masked_rows(attn: &Attention, shape: &AttnShape, b: usize, o: &mut [f32]) {
    if !is_masked(attn) {
        return;
    }
    for (i, row) in o.chunks_mut(shape.head_dim).enumerate() {
        if attn.valid_keys(shape, b, i) == 0 {
            row.fill(0.0);
        }
    }
}

// The three helpers below stay out of line so that the ARM proxy's per-symbol profile
// (docs/arm-proxy.md) charges their instructions to them rather than to the caller.

/// V + 128 as u8 (flipping the sign bit adds 128 to every i8, -128 included).
#[inline(never)]
fn shifted_v(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| (x as u8) ^ 0x80).collect()
}

/// P x V = P x (V + 128) - 128 rowsum(P), modulo 2^32 like ACL's own arithmetic: exact whenever
/// P x V fits i32 (docs/numerics.md section 4).
#[inline(never)]
fn subtract_v_offset(o32: &mut [i32], row_sums: &[u32], d: usize) {
    for (row, &sum) in o32.chunks_mut(d).zip(row_sums) {
        let correction = sum.wrapping_mul(128) as i32;
        for x in row {
            *x = x.wrapping_sub(correction);
        }
    }
}

/// docs/numerics.md section 4 through the native pipeline's own output conversion (one rounding,
/// vectorised), so that outputs match bit for bit: divided by the row sums (Deferred) or 255.
#[inline(never)]
fn output_rows(o: &mut [f32], o32: &[i32], row_sums: Option<&[u32]>, v_scale: f32, d: usize) {
    for (i, (orow, o32row)) in o.chunks_mut(d).zip(o32.chunks(d)).enumerate() {
        let div = row_sums.map_or(255, |s| s[i]);
        crate::ops::output::output_row(o32row, div, v_scale, orow);
    }
}

fn to_f16(what: &'static str, x: &[f32]) -> Result<Vec<f16>> {
    check_finite(what, x)?;
    if let Some(i) = x.iter().position(|v| v.abs() > f16::MAX.to_f32()) {
        return Err(Error::Acl(format!(
            "{what}[{i}] = {} is outside the f16 range (|x| <= 65504)",
            x[i]
        )));
    }
    Ok(x.iter().map(|&v| f16::from_f32(v)).collect())
}

impl IntGraph {
    fn new(attn: &Attention, shape: &AttnShape) -> Result<Self> {
        let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
        let s8 = DataType::QAsymm8Signed;
        let q = Tensor::new(&qdesc(s8, lq, d, 1.0, 0))?;
        let k = Tensor::new(&qdesc(s8, lk, d, 1.0, 0))?;
        let kt = Tensor::new(&qdesc(s8, d, lk, 1.0, 0))?;
        // V + 128 as u8. Deferred IndexSoftmax returns rowsum(P): the 128 is taken back out in
        // `run`; otherwise V's offset makes ACL's offset contribution take it out.
        let subtract_v_offset =
            attn.pipeline() == Pipeline::IntAttention && attn.variant() == SoftmaxVariant::Deferred;
        let v_offset = if subtract_v_offset { 0 } else { 128 };
        let v = Tensor::new(&qdesc(DataType::QAsymm8, lk, d, 1.0, v_offset))?;
        let scores = Tensor::new(&desc(DataType::S32, lq, lk))?;
        let probs = Tensor::new(&qdesc(DataType::QAsymm8, lq, lk, 1.0 / 255.0, 0))?;
        let o32 = Tensor::new(&desc(DataType::S32, lq, d))?;
        let mut steps = vec![
            Function::transpose(&k, &kt)?,
            Function::gemm_lowp(&q, &kt, &scores, STREAMED)?,
        ];
        let mut row_sums = None;
        let softmax;
        if attn.pipeline() == Pipeline::IntAttention {
            // T is set per run from the scales; 1 is a placeholder that passes validation.
            let params = IndexSoftmaxParams::new(1, attn.variant())?
                .with_table_bits(attn.table_bits())?
                .with_clip(attn.clip())?;
            // Row sums only where they are needed (Deferred divides by them): without them,
            // a patched ACL can run Normalized IndexSoftmax itself.
            if attn.variant() == SoftmaxVariant::Deferred {
                row_sums = Some(Tensor::new(&TensorDesc::new(DataType::U32, &[lq]))?);
            }
            softmax = steps.len();
            steps.push(Function::index_softmax(
                &scores,
                &probs,
                row_sums.as_ref(),
                &params,
            )?);
        } else {
            // int8 (docs/numerics.md section 5): dequantize to f32, f32 softmax, quantize P to u8
            // with scale 1/255. The dequantization scale s_q s_k scale changes per call: the logits
            // kernel applies it (and the masks) after an exact S32 -> F32 cast.
            let sf = Tensor::new(&desc(DataType::F32, lq, lk))?;
            let pf = Tensor::new(&desc(DataType::F32, lq, lk))?;
            steps.push(Function::cast(&scores, &sf)?);
            softmax = steps.len();
            steps.push(Function::logits(&sf)?);
            steps.push(Function::softmax(&sf, &pf, 1.0)?);
            steps.push(Function::quantize(&pf, &probs)?);
        }
        steps.push(Function::gemm_lowp(&probs, &v, &o32, STREAMED)?);
        Ok(IntGraph {
            q,
            k,
            v,
            scores,
            probs,
            row_sums,
            o32,
            subtract_v_offset,
            steps,
            softmax,
        })
    }

    fn run(
        &mut self,
        attn: &Attention,
        shape: &AttnShape,
        q: &QTensor,
        k: &QTensor,
        v: &QTensor,
        mut trace: Option<&mut Vec<HeadTrace>>,
    ) -> Result<Vec<f32>> {
        let scale = attn.softmax_scale(shape.head_dim);
        let index_params = if attn.pipeline() == Pipeline::IntAttention {
            let p = IndexSoftmaxParams::from_scales(
                q.scale(),
                k.scale(),
                scale,
                attn.table_bits(),
                attn.clip(),
                attn.variant(),
            )?;
            self.steps[self.softmax].set_threshold(p.threshold())?;
            Some(p)
        } else {
            let logit_scale = (q.scale() as f64 * k.scale() as f64 * scale as f64) as f32;
            self.steps[self.softmax].set_logit_scale(logit_scale)?;
            None
        };
        let deferred = index_params.is_some_and(|p| p.variant() == SoftmaxVariant::Deferred);
        let (lq, d) = (shape.q_len, shape.head_dim);
        let v_shifted = shifted_v(v.data());
        let mut out = vec![0f32; shape.q_elems()];
        let mut o32 = vec![0i32; lq * d];
        let mut sums = vec![0u32; lq];
        let mut last_batch = None;
        for (bh, o) in out.chunks_mut(lq * d).enumerate() {
            let b = bh / shape.heads;
            let (qr, kvr) = head_ranges(shape, bh);
            self.q.write(&q.data()[qr])?;
            self.k.write(&k.data()[kvr.clone()])?;
            self.v.write(&v_shifted[kvr])?;
            if is_masked(attn) && last_batch != Some(b) {
                self.steps[self.softmax].set_row_limits(Some(&row_limits(attn, shape, b)))?;
                last_batch = Some(b);
            }
            for f in &mut self.steps {
                f.run()?;
            }
            self.o32.read(&mut o32)?;
            if let Some(t) = &self.row_sums {
                t.read(&mut sums)?;
            }
            if self.subtract_v_offset {
                subtract_v_offset(&mut o32, &sums, d);
            }
            output_rows(o, &o32, deferred.then_some(&sums[..]), v.scale(), d);
            if attn.pipeline() == Pipeline::Int8 {
                zero_masked_rows(attn, shape, b, o);
            }
            if let Some(traces) = trace.as_deref_mut() {
                traces.push(HeadTrace {
                    scores: self.scores.to_vec()?,
                    probs: self.probs.to_vec()?,
                    row_sums: if self.row_sums.is_some() {
                        sums.clone()
                    } else {
                        Vec::new()
                    },
                    o32: o32.clone(),
                });
            }
        }
        Ok(out)
    }
}
