//! The integer pipelines one head at a time over the whole `Lq x Lk` score matrix: quantize
//! the head, Q K^T, a softmax per row, P x V, convert. The plainest schedule, kept as the
//! behavioural reference of [`super::engine`] (tests compare the two bit for bit), with the
//! same scales and the same per-row functions.

use std::sync::atomic::{AtomicBool, Ordering};

use super::engine::{setup, IntInputs, KvSide, QSide, Setup};
use super::prep::non_finite_in;
use super::rows::RowSoftmax;
use super::Attention;
use crate::error::{Error, Result};
use crate::exec::Par;
use crate::kernels::{KernelImpl, MAX_K_U8S8};
use crate::lut::MAX_ROW_LEN;
use crate::memory::{AlignedVec, Fresh};
use crate::ops::output::output_row_channels;
use crate::ops::quant::all_finite;
use crate::ops::quant::{divisors_of, max_abs_bits, quantize_with_divisors, quantize_with_scale};

/// Runs an integer pipeline unfused into `out` (shaped like Q); inputs are checked.
pub(crate) fn run(
    attn: &Attention,
    kernel: &dyn KernelImpl,
    par: Par,
    inputs: IntInputs<'_>,
    out: Fresh<'_, f32>,
) -> Result<()> {
    let Setup { shape, vis, scales } = setup(attn, par, &inputs)?;
    if shape.kv_len >= MAX_ROW_LEN {
        return Err(Error::LimitExceeded {
            what: "keys",
            value: shape.kv_len,
            limit: MAX_ROW_LEN - 1,
            reason: "IndexSoftmax rows are exact only below 2^24 keys",
        });
    }
    let rows = RowSoftmax::new(attn, shape.head_dim)?;
    let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
    let bad_q = AtomicBool::new(false);
    let overflow = AtomicBool::new(false);
    let bad_out = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let heads: Vec<(usize, Fresh<'_, f32>)> = out.chunks(lq * d).into_iter().enumerate().collect();
    par.for_each(heads, |(bh, o)| {
        let o = o.zeroed();
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        let g = h / shape.group();
        let u = b * shape.kv_heads + g;
        let alloc = || -> Option<(AlignedVec<i32>, AlignedVec<u8>)> {
            Some((
                AlignedVec::try_zeroed(lq.checked_mul(lk)?, "scores").ok()?,
                AlignedVec::try_zeroed(lq * lk, "probabilities").ok()?,
            ))
        };
        let Some((mut s, mut p)) = alloc() else {
            failed.store(true, Ordering::Relaxed);
            return;
        };
        // The head's int8 rows.
        let mut q8 = vec![0i8; lq * d];
        let mut s_q = vec![0f32; lq];
        for i in 0..lq {
            let dst = &mut q8[i * d..(i + 1) * d];
            s_q[i] = match inputs.q {
                QSide::Float(view) => {
                    let row = view.row(b, h, i);
                    let sq = scales.q.of(bh, &[], 0, || {
                        let m = max_abs_bits(row);
                        if m >= f32::INFINITY.to_bits() {
                            bad_q.store(true, Ordering::Relaxed);
                        }
                        m
                    });
                    quantize_with_scale(row, sq, dst);
                    sq
                }
                QSide::Int { t, .. } => {
                    dst.copy_from_slice(&t.data()[(bh * lq + i) * d..(bh * lq + i + 1) * d]);
                    t.scale()
                }
            };
        }
        let (mut k8, mut v8) = (vec![0i8; lk * d], vec![0i8; lk * d]);
        match inputs.kv {
            KvSide::Float { k, v } => {
                let us = scales.unit(u, d);
                let mut tmp = vec![0f32; d];
                let mut div = Vec::new();
                divisors_of(us.v, d, &mut div);
                // Row `x` minus `mean` (when smoothed), quantized with `scales`.
                let mut quantize =
                    |x: &[f32], mean: Option<&[f32]>, scales: &[f32], dst: &mut [i8]| {
                        let x = match mean {
                            Some(mean) => {
                                for ((t, &e), &mu) in tmp.iter_mut().zip(x).zip(mean) {
                                    *t = e - mu;
                                }
                                &tmp[..]
                            }
                            None => x,
                        };
                        match scales {
                            [s] => quantize_with_scale(x, *s, dst),
                            _ => quantize_with_divisors(x, &div, dst),
                        }
                    };
                for j in 0..lk {
                    let dst = &mut k8[j * d..(j + 1) * d];
                    quantize(k.row(b, g, j), us.k_mean, &[us.k], dst);
                    let dst = &mut v8[j * d..(j + 1) * d];
                    quantize(v.row(b, g, j), us.v_mean, us.v, dst);
                }
            }
            KvSide::Int { k, v, .. } => {
                k8.copy_from_slice(&k.data()[u * lk * d..(u + 1) * lk * d]);
                v8.copy_from_slice(&v.data()[u * lk * d..(u + 1) * lk * d]);
            }
            KvSide::Cached(_) => unreachable!("cached calls use the engine"),
        }
        kernel.gemm_s8s8_nt(&q8, &k8, lq, lk, d, &mut s);
        let mut divisor = vec![255u32; lq];
        let mut frow = Vec::new();
        for i in 0..lq {
            let param = rows.param(s_q[i], scales.k[u]);
            let (div, ok) = rows.row(
                kernel,
                &s[i * lk..(i + 1) * lk],
                vis.valid(b, i),
                &mut p[i * lk..(i + 1) * lk],
                param,
                |_| 0,
                &mut frow,
            );
            if !ok {
                overflow.store(true, Ordering::Relaxed);
            }
            divisor[i] = div;
        }
        let o32 = pv_product(kernel, &p, &v8, lq, lk, d);
        let mut bad = false;
        for i in 0..lq {
            let orow = &mut o[i * d..(i + 1) * d];
            let us = scales.unit(u, d);
            let mean = us.v_mean.unwrap_or(&[]);
            output_row_channels(&o32[i * d..(i + 1) * d], divisor[i], us.v, mean, orow);
            bad |= !all_finite(orow);
        }
        if bad {
            bad_out.store(true, Ordering::Relaxed);
        }
    });
    if failed.into_inner() {
        return Err(Error::Allocation {
            what: "the unfused schedule's score matrix of a head",
            bytes: lq.saturating_mul(lk).saturating_mul(5),
        });
    }
    if bad_q.into_inner() {
        if let QSide::Float(q) = inputs.q {
            if let Some(e) = non_finite_in(&q, "Q") {
                return Err(e);
            }
        }
    }
    if overflow.into_inner() {
        return Err(Error::Overflow {
            what: "the int8 pipeline's logits (scores times the logit scale)",
            arithmetic: "f32",
            hint: "scale the inputs or the logit scale down, or use the intattn pipeline",
        });
    }
    if bad_out.into_inner() {
        return Err(Error::NonFiniteOutput {
            pipeline: attn.pipeline(),
            index: 0,
            value: f32::INFINITY,
        });
    }
    Ok(())
}

/// `P[lq x lk] * V[lk x d]` exactly, in i64 (key ranges past the i32-safe depth are split).
fn pv_product(
    kernel: &dyn KernelImpl,
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
