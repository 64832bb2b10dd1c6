//! The fp32 and fp16 pipelines (docs/numerics.md, section 5): per query head, `S = scale Q
//! K^T` in the pipeline's type, an f32 softmax per row between casts, `O = P V`. The matrix
//! products go through the `gemm` crate (run-time dispatched AVX2/AVX-512/NEON micro-kernels,
//! faster than anything we would hand-write for floats, and it takes strided operands). Keys
//! come in pages (one page holding a whole head for per-call inputs, the cache's pages for a
//! float [`crate::KvCache`]), so both paths are the same code.

use std::sync::atomic::{AtomicBool, Ordering};

use gemm::{gemm, Parallelism};
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::mask::Visibility;
use super::{shape_of, Attention, AttnShape};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, KernelImpl};
use crate::memory::Fresh;
use crate::ops::quant::all_finite;
use crate::pipeline::Pipeline;
use crate::tensor::TensorView;

/// f32 and f16 through one code path: the element type of the products.
pub(crate) trait FloatElem: Copy + Send + Sync + Default + 'static {
    /// `dst[i] = src[i]` as f32 (exact), for slices of equal length.
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    /// `dst[i] = src[i]` rounded to nearest even, for slices of equal length.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    fn from_f32(x: f32) -> Self;
}

impl FloatElem for f32 {
    fn to_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32_slice(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32(x: f32) -> f32 {
        x
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
    fn from_f32(x: f32) -> f16 {
        f16::from_f32(x)
    }
}

/// `c = [c +] alpha * a[m x k] * op(b)`, with A rows `lda` apart and C rows `ldc` apart:
/// `op(b)` is `b` (`k x n` row-major) or, when `transposed`, the transpose of `b` (`n x k`
/// row-major). Single-threaded: the pipelines parallelise over heads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: FloatElem>(
    a: &[T],
    lda: usize,
    b: &[T],
    m: usize,
    n: usize,
    k: usize,
    transposed: bool,
    alpha: f32,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        lda >= k
            && (m == 0 || a.len() >= (m - 1) * lda + k)
            && b.len() >= k * n
            && ldc >= n
            && (m == 0 || c.len() >= (m - 1) * ldc + n),
        "matmul shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::default());
            }
        }
        return;
    }
    let (rhs_cs, rhs_rs) = if transposed {
        (k as isize, 1isize)
    } else {
        (1isize, n as isize)
    };
    // SAFETY: the assert above guarantees that every index the strides describe is in
    // bounds: a is m x k with row stride lda, b is k x n (or n x k read transposed), c has m
    // rows of n values `ldc` apart; c does not alias a or b (it is a distinct &mut).
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            T::from_f32(1.0),
            T::from_f32(alpha),
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Keys from `start` of one key/value head in the pipeline's type: `cap x d` rows of K and of
/// V (the keys past a row's visible ones are masked).
pub(crate) struct FloatPage<'a, T> {
    pub start: usize,
    pub cap: usize,
    pub k: &'a [T],
    pub v: &'a [T],
}

/// Why a float head failed.
pub(crate) enum HeadError {
    /// A scaled score overflowed the pipeline's type.
    Overflow,
    /// A buffer could not be allocated.
    Allocation,
}

/// One query head over its key pages: `q` holds `lq` rows of `d`, `valid(i)` keys are
/// visible to row `i`, the output rows go to `out` (`lq x d` f32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn head<T: FloatElem>(
    kernel: &dyn KernelImpl,
    q: &[T],
    pages: &[FloatPage<'_, T>],
    lq: usize,
    d: usize,
    scale: f32,
    valid: impl Fn(usize) -> usize,
    out: &mut [f32],
) -> std::result::Result<(), HeadError> {
    let ncols = pages.last().map_or(0, |p| p.start + p.cap);
    let mut s = Vec::new();
    s.try_reserve_exact(lq.saturating_mul(ncols))
        .map_err(|_| HeadError::Allocation)?;
    s.resize(lq * ncols, T::default());
    for p in pages {
        matmul(
            q,
            d,
            p.k,
            lq,
            p.cap,
            d,
            true,
            scale,
            &mut s[p.start..],
            ncols,
            false,
        );
    }
    let mut row = vec![0f32; ncols];
    for i in 0..lq {
        let srow = &mut s[i * ncols..(i + 1) * ncols];
        T::to_f32_slice(srow, &mut row);
        let n = valid(i);
        if !all_finite(&row[..n]) {
            return Err(HeadError::Overflow);
        }
        kernel.softmax_f32_row(&mut row, n);
        T::from_f32_slice(&row, srow);
    }
    let mut o = vec![T::default(); lq * d];
    for (n, p) in pages.iter().enumerate() {
        matmul(
            &s[p.start..],
            ncols,
            p.v,
            lq,
            d,
            p.cap,
            false,
            1.0,
            &mut o,
            d,
            n > 0,
        );
    }
    T::to_f32_slice(&o, out);
    Ok(())
}

/// The fp32 or fp16 pipeline on f32 views into `out` (shaped like Q).
pub(crate) fn run(
    attn: &Attention,
    kernel: Kernel,
    q: TensorView<'_, f32>,
    k: TensorView<'_, f32>,
    v: TensorView<'_, f32>,
    out: Fresh<'_, f32>,
) -> Result<()> {
    let shape = shape_of(q.dims(), k.dims(), v.dims())?;
    let vis = Visibility {
        q_len: shape.q_len,
        keys: match attn.key_lens() {
            Some(l) => l.to_vec(),
            None => vec![shape.kv_len; shape.batch],
        },
        causal_len: vec![shape.kv_len; shape.batch],
        causal: attn.causal(),
    };
    for (view, name) in [(&q, "Q"), (&k, "K"), (&v, "V")] {
        if let Some(e) = super::prep::non_finite_in(view, name) {
            return Err(e);
        }
        if attn.pipeline() == Pipeline::Fp16 {
            fp16_range(view, name)?;
        }
    }
    attn.executor().run(|par| match attn.pipeline() {
        Pipeline::Fp16 => heads::<f16>(attn, kernel.imp(), par, &shape, &vis, &q, &k, &v, out),
        _ => heads::<f32>(attn, kernel.imp(), par, &shape, &vis, &q, &k, &v, out),
    })
}

/// Rejects values outside the f16 range (they would become infinities).
pub(crate) fn fp16_range(view: &TensorView<'_, f32>, name: &'static str) -> Result<()> {
    let [b_n, h_n, l, _] = view.dims();
    for b in 0..b_n {
        for h in 0..h_n {
            for i in 0..l {
                let row = view.row(b, h, i);
                if let Some(c) = row.iter().position(|x| x.abs() > f16::MAX.to_f32()) {
                    return Err(Error::InvalidParameter {
                        name,
                        value: format!("{} at flat index {}", row[c], view.flat_index(b, h, i, c)),
                        expected:
                            "values inside the f16 range (|x| <= 65504) for the fp16 pipeline",
                    });
                }
            }
        }
    }
    Ok(())
}

/// Rows `0..n` of head `(b, h)` of a view, converted to `T`, row-major.
pub(crate) fn gather<T: FloatElem>(
    view: &TensorView<'_, f32>,
    b: usize,
    h: usize,
    n: usize,
) -> Vec<T> {
    let d = view.dims()[3];
    let mut v = vec![T::default(); n * d];
    for i in 0..n {
        T::from_f32_slice(view.row(b, h, i), &mut v[i * d..(i + 1) * d]);
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn heads<T: FloatElem>(
    attn: &Attention,
    kernel: &dyn KernelImpl,
    par: crate::exec::Par,
    shape: &AttnShape,
    vis: &Visibility,
    q: &TensorView<'_, f32>,
    k: &TensorView<'_, f32>,
    v: &TensorView<'_, f32>,
    out: Fresh<'_, f32>,
) -> Result<()> {
    let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
    let scale = attn.softmax_scale(d);
    let overflow = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let bad_out = AtomicBool::new(false);
    let tasks: Vec<(usize, Fresh<'_, f32>)> = out.chunks(lq * d).into_iter().enumerate().collect();
    par.for_each(tasks, |(bh, o)| {
        let o = o.zeroed();
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        let g = h / shape.group();
        let qh = gather::<T>(q, b, h, lq);
        let kh = gather::<T>(k, b, g, lk);
        let vh = gather::<T>(v, b, g, lk);
        let page = FloatPage {
            start: 0,
            cap: lk,
            k: &kh,
            v: &vh,
        };
        match head(kernel, &qh, &[page], lq, d, scale, |i| vis.valid(b, i), o) {
            Ok(()) => {
                if !all_finite(o) {
                    bad_out.store(true, Ordering::Relaxed);
                }
            }
            Err(HeadError::Overflow) => overflow.store(true, Ordering::Relaxed),
            Err(HeadError::Allocation) => failed.store(true, Ordering::Relaxed),
        }
    });
    finish(
        attn.pipeline(),
        shape,
        failed.into_inner(),
        overflow.into_inner(),
        bad_out.into_inner(),
    )
}

/// The error, if any, of a float call from what its heads reported.
pub(crate) fn finish(
    pipeline: Pipeline,
    shape: &AttnShape,
    failed: bool,
    overflow: bool,
    bad_out: bool,
) -> Result<()> {
    if failed {
        return Err(Error::Allocation {
            what: "a head's score matrix",
            bytes: shape.q_len.saturating_mul(shape.kv_len).saturating_mul(4),
        });
    }
    if overflow {
        return Err(match pipeline {
            Pipeline::Fp16 => Error::Overflow {
                what: "the fp16 pipeline's scaled scores",
                arithmetic: "f16",
                hint: "use fp32 or an integer pipeline",
            },
            _ => Error::Overflow {
                what: "the fp32 pipeline's scaled scores",
                arithmetic: "f32",
                hint: "scale the inputs or the logit scale down",
            },
        });
    }
    if bad_out {
        return Err(Error::NonFiniteOutput {
            pipeline,
            index: 0,
            value: f32::INFINITY,
        });
    }
    Ok(())
}
