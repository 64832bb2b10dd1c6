//! The ACL backend against the crate's native code: every wrapped operation and the four
//! pipelines. Integer results must match bit for bit; float results within the tolerance each
//! test states. Built only when build.rs found ACL (`cfg(intattention_acl)`); under qemu, so
//! shapes stay small.
#![cfg(intattention_acl)]

use half::f16;
use intattention::acl::{self, DataType, Function, GemmOptions, Tensor, TensorDesc};
use intattention::kernels::Kernel;
use intattention::reference;
use intattention::{index_softmax, IndexSoftmaxParams, ScoreMask, SoftmaxVariant};
use intattention::{Attention, AttnShape, Pipeline, Quantization};
use intattention::{Error, QTensor};

/// Keys query `i` of batch row `b` sees: its key length, cut by the causal mask.
fn valid_keys(attn: &Attention, shape: &AttnShape, b: usize, i: usize) -> usize {
    let keys = attn.key_lens().map_or(shape.kv_len, |l| l[b]);
    if attn.causal() {
        keys.min((i + shape.kv_len + 1).saturating_sub(shape.q_len))
    } else {
        keys
    }
}

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec_f32(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * amp).collect()
    }
    fn vec_i8(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as u8 as i8).collect()
    }
    fn vec_u8(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn d2(dtype: DataType, r: usize, c: usize) -> TensorDesc {
    TensorDesc::new(dtype, &[r, c])
}

fn q2(dtype: DataType, r: usize, c: usize, scale: f32, offset: i32) -> TensorDesc {
    TensorDesc::quantized(dtype, &[r, c], scale, offset)
}

const STREAMED: GemmOptions = GemmOptions { b_constant: false };

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn build_info_names_the_acl_family() {
    let info = acl::build_info().unwrap();
    assert!(matches!(info.acl_major, 20 | 52), "{info:?}");
    // IndexSoftmax runs inside ACL exactly when ACL carries our patch.
    assert_eq!(info.index_softmax_in_tree, info.patched, "{info:?}");
}

/// A C++ exception on one of ACL's worker threads would end the process if it left the thread;
/// the shim's scheduler catches it there and the call that ran the kernel returns it as an
/// error, after every worker has finished. ACL keeps working afterwards.
#[test]
fn an_exception_on_an_acl_worker_thread_is_an_error() {
    for threads in [2, 4] {
        match acl::selftest_worker_exception(threads) {
            Err(Error::Acl(msg)) => assert!(
                msg.contains("thrown on an ACL worker thread") && msg.contains("[exception]"),
                "{msg}"
            ),
            other => panic!("{threads} threads: {other:?}"),
        }
    }
    assert!(matches!(
        acl::selftest_worker_exception(1),
        Err(Error::Acl(_))
    ));
    let a = Tensor::new(&q2(DataType::QAsymm8Signed, 4, 8, 1.0, 0)).unwrap();
    let b = Tensor::new(&q2(DataType::QAsymm8Signed, 8, 4, 1.0, 0)).unwrap();
    let d = Tensor::new(&d2(DataType::S32, 4, 4)).unwrap();
    let mut f = Function::gemm_lowp(&a, &b, &d, STREAMED).unwrap();
    a.write(&[1i8; 32]).unwrap();
    b.write(&[2i8; 32]).unwrap();
    f.run().unwrap();
    assert_eq!(d.to_vec::<i32>().unwrap(), vec![16; 16]);
}

#[test]
fn scheduler_thread_count_follows_requests() {
    assert_eq!(acl::scheduler_threads(1).unwrap(), 1);
    assert_eq!(acl::scheduler_threads(2).unwrap(), 2);
    assert!(acl::set_threads(usize::MAX).is_err());
}

/// f32 GEMM with alpha, run twice with a new B: a GEMM that packed B once would return the
/// first B's product the second time. Tolerance: 1e-5 relative to the largest |product|
/// (summation order differs from the naive loop; K = 19 terms of size <= 1).
#[test]
fn gemm_f32_rereads_b_on_every_run() {
    let (m, k, n) = (7, 19, 11);
    let a = Tensor::new(&d2(DataType::F32, m, k)).unwrap();
    let b = Tensor::new(&d2(DataType::F32, k, n)).unwrap();
    let d = Tensor::new(&d2(DataType::F32, m, n)).unwrap();
    let mut f = Function::gemm(&a, &b, &d, 0.25, STREAMED).unwrap();
    let mut rng = Rng::new(1);
    for _ in 0..2 {
        let av = rng.vec_f32(m * k, 1.0);
        let bv = rng.vec_f32(k * n, 1.0);
        a.write(&av).unwrap();
        b.write(&bv).unwrap();
        f.run().unwrap();
        let got = d.to_vec::<f32>().unwrap();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| av[i * k + t] as f64 * bv[t * n + j] as f64)
                    .sum();
                want[i * n + j] = (0.25 * s) as f32;
            }
        }
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            max_abs_diff(&got, &want) <= 1e-5 * scale,
            "{got:?} vs {want:?}"
        );
    }
}

/// F16 needs an ACL built for Armv8.2-A. Where ACL rejects it, the error must be ACL's
/// reason; where it runs, results must be within f16 precision (2^-10 relative, K = 8).
#[test]
fn gemm_f16_runs_or_reports_why_not() {
    let (m, k, n) = (4, 8, 5);
    let a = Tensor::new(&d2(DataType::F16, m, k)).unwrap();
    let b = Tensor::new(&d2(DataType::F16, k, n)).unwrap();
    let d = Tensor::new(&d2(DataType::F16, m, n)).unwrap();
    match Function::gemm(&a, &b, &d, 1.0, STREAMED) {
        Err(Error::Acl(msg)) => assert!(msg.contains("F16"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(mut f) => {
            let mut rng = Rng::new(2);
            let av: Vec<f16> = rng
                .vec_f32(m * k, 1.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let bv: Vec<f16> = rng
                .vec_f32(k * n, 1.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            a.write(&av).unwrap();
            b.write(&bv).unwrap();
            f.run().unwrap();
            let got = d.to_vec::<f16>().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let s: f32 = (0..k)
                        .map(|t| av[i * k + t].to_f32() * bv[t * n + j].to_f32())
                        .sum();
                    assert!((got[i * n + j].to_f32() - s).abs() <= 8.0 * 2f32.powi(-10));
                }
            }
        }
    }
}

/// Q x K^T on ACL: NETranspose, then s8 x s8 -> s32, every i8 value (-128 included).
#[test]
fn gemm_lowp_s8s8_with_transposed_k_is_exact() {
    let (lq, lk, d) = (9, 13, 24);
    let mut rng = Rng::new(3);
    let qv = rng.vec_i8(lq * d);
    let mut kv = rng.vec_i8(lk * d);
    kv[0] = -128;
    let s8 = DataType::QAsymm8Signed;
    let q = Tensor::new(&q2(s8, lq, d, 1.0, 0)).unwrap();
    let k = Tensor::new(&q2(s8, lk, d, 1.0, 0)).unwrap();
    let kt = Tensor::new(&q2(s8, d, lk, 1.0, 0)).unwrap();
    let s = Tensor::new(&d2(DataType::S32, lq, lk)).unwrap();
    let mut tr = Function::transpose(&k, &kt).unwrap();
    let mut mm = Function::gemm_lowp(&q, &kt, &s, STREAMED).unwrap();
    for round in 0..2 {
        let kv_round: Vec<i8> = kv.iter().map(|&x| x.wrapping_add(round)).collect();
        q.write(&qv).unwrap();
        k.write(&kv_round).unwrap();
        tr.run().unwrap();
        mm.run().unwrap();
        let mut want = vec![0i32; lq * lk];
        reference::gemm_s8s8_nt(&qv, &kv_round, lq, lk, d, &mut want);
        assert_eq!(s.to_vec::<i32>().unwrap(), want, "round {round}");
        let mut kt_want = vec![0i8; lk * d];
        for (j, row) in kv_round.chunks(d).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                kt_want[c * lk + j] = x;
            }
        }
        assert_eq!(kt.to_vec::<i8>().unwrap(), kt_want);
    }
}

/// ACL computes u8 x s8 wrongly (checked on 20.08 under qemu: every entry wrong); the shim
/// refuses the combination with a message that says what to do instead.
#[test]
fn gemm_lowp_refuses_mixed_signedness() {
    let a = Tensor::new(&q2(DataType::QAsymm8, 3, 4, 1.0 / 255.0, 0)).unwrap();
    let b = Tensor::new(&q2(DataType::QAsymm8Signed, 4, 5, 1.0, 0)).unwrap();
    let d = Tensor::new(&d2(DataType::S32, 3, 5)).unwrap();
    match Function::gemm_lowp(&a, &b, &d, STREAMED) {
        Err(Error::Acl(msg)) => assert!(msg.contains("signedness"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("u8 x s8 was accepted"),
    }
}

/// P x V as the pipelines run it: V + 128 in QAsymm8 with offset 128, every u8 and i8 value.
#[test]
fn gemm_lowp_u8_times_shifted_v_is_exact() {
    let (m, k, n) = (6, 300, 10);
    let mut rng = Rng::new(4);
    let mut p = rng.vec_u8(m * k);
    let mut v = rng.vec_i8(k * n);
    p[0] = 255;
    v[0] = -128;
    v[1] = 127;
    let a = Tensor::new(&q2(DataType::QAsymm8, m, k, 1.0 / 255.0, 0)).unwrap();
    let b = Tensor::new(&q2(DataType::QAsymm8, k, n, 1.0, 128)).unwrap();
    let d = Tensor::new(&d2(DataType::S32, m, n)).unwrap();
    let mut f = Function::gemm_lowp(&a, &b, &d, STREAMED).unwrap();
    for round in 0..2u8 {
        let pr: Vec<u8> = p.iter().map(|&x| x.wrapping_add(round)).collect();
        a.write(&pr).unwrap();
        b.write(&v.iter().map(|&x| (x as u8) ^ 0x80).collect::<Vec<u8>>())
            .unwrap();
        f.run().unwrap();
        let mut want = vec![0i32; m * n];
        reference::gemm_u8s8(&pr, &v, m, n, k, &mut want);
        assert_eq!(d.to_vec::<i32>().unwrap(), want, "round {round}");
    }
}

/// NESoftmaxLayer against the scalar f32 softmax: ACL's exp is a polynomial (relative error
/// about 1e-6), so probabilities may differ by 2e-6 absolute.
#[test]
fn softmax_f32_matches_reference() {
    let (r, c) = (5, 37);
    let mut rng = Rng::new(5);
    let x = rng.vec_f32(r * c, 8.0);
    let i = Tensor::new(&d2(DataType::F32, r, c)).unwrap();
    let o = Tensor::new(&d2(DataType::F32, r, c)).unwrap();
    let mut f = Function::softmax(&i, &o, 0.5).unwrap();
    i.write(&x).unwrap();
    f.run().unwrap();
    let got = o.to_vec::<f32>().unwrap();
    let mut want: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    for row in want.chunks_mut(c) {
        reference::softmax_f32_row(row, c);
    }
    assert!(
        max_abs_diff(&got, &want) <= 2e-6,
        "{}",
        max_abs_diff(&got, &want)
    );
}

/// Masked logits: -inf past each row's limit gives exact zeros after ACL's softmax, the scale
/// is applied, and a fully masked row stays finite.
#[test]
fn logits_mask_and_scale_feed_softmax() {
    let (r, c) = (4, 9);
    let mut rng = Rng::new(6);
    let x = rng.vec_f32(r * c, 3.0);
    let s = Tensor::new(&d2(DataType::F32, r, c)).unwrap();
    let p = Tensor::new(&d2(DataType::F32, r, c)).unwrap();
    let mut lg = Function::logits(&s).unwrap();
    let mut sm = Function::softmax(&s, &p, 1.0).unwrap();
    let limits = [9, 3, 0, 1];
    lg.set_row_limits(Some(&limits)).unwrap();
    lg.set_logit_scale(0.7).unwrap();
    assert!(lg.set_row_limits(Some(&[1, 2])).is_err());
    assert!(lg.set_row_limits(Some(&[10, 0, 0, 0])).is_err());
    assert!(lg.set_threshold(5).is_err());
    s.write(&x).unwrap();
    lg.run().unwrap();
    sm.run().unwrap();
    let got = p.to_vec::<f32>().unwrap();
    for (i, &lim) in limits.iter().enumerate() {
        let row = &got[i * c..(i + 1) * c];
        assert!(row.iter().all(|v| v.is_finite()));
        if lim == 0 {
            continue; // the caller zeroes this row's output
        }
        let mut want: Vec<f32> = x[i * c..(i + 1) * c].iter().map(|v| v * 0.7).collect();
        reference::softmax_f32_row(&mut want, lim);
        assert!(
            max_abs_diff(row, &want) <= 2e-6,
            "row {i}: {row:?} vs {want:?}"
        );
        assert!(row[lim..].iter().all(|&v| v == 0.0));
    }
}

/// Casts and (de)quantization: S32 -> F32 exact below 2^24; dequantization exact; F32 ->
/// QAsymm8 with scale 1/255, which depends on the ACL version (both quantize with
/// round-half-to-even, but not of the same product):
///
/// - ACL 20.08 walks each row of 8 separately, shorter than its 16-wide vector loop, so every
///   element takes the scalar path `round(x / s)`: bit-exact with the native int8 pipeline's
///   `round(x * 255)` (checked equal for these inputs).
/// - ACL 52.x merges the 8 x 8 tensor into one 64-element row, so elements take the vector path
///   `round(x * f32(1 / s))`. `f32(1 / s)` is not 255 exactly (1/255 is not exact in f32), and at
///   an exact tie the product lands on either side: 1.5/255 gives 1.49999988 and quantizes to 1
///   where `x / s` gives 2. ACL's arithmetic, not a binding error: every element must equal one
///   of the two ACL formulas and be at most 1 from the native value.
#[test]
fn cast_quantize_dequantize_match_native_arithmetic() {
    let n = 64;
    let mut rng = Rng::new(7);
    let si: Vec<i32> = (0..n)
        .map(|_| (rng.next() % (1 << 24)) as i32 - (1 << 23))
        .collect();
    let a = Tensor::new(&d2(DataType::S32, 8, 8)).unwrap();
    let b = Tensor::new(&d2(DataType::F32, 8, 8)).unwrap();
    let mut cast = Function::cast(&a, &b).unwrap();
    a.write(&si).unwrap();
    cast.run().unwrap();
    let want: Vec<f32> = si.iter().map(|&x| x as f32).collect();
    assert_eq!(b.to_vec::<f32>().unwrap(), want);

    let mut probs: Vec<f32> = (0..n).map(|_| (rng.f32() + 1.0) / 2.0).collect();
    // Exact ties of x * 255 and the ends of the range.
    probs[0] = 0.5 / 255.0;
    probs[1] = 1.5 / 255.0;
    probs[2] = 1.0;
    probs[3] = 0.0;
    let pf = Tensor::new(&d2(DataType::F32, 8, 8)).unwrap();
    let pq = Tensor::new(&q2(DataType::QAsymm8, 8, 8, 1.0 / 255.0, 0)).unwrap();
    let mut quant = Function::quantize(&pf, &pq).unwrap();
    pf.write(&probs).unwrap();
    quant.run().unwrap();
    let got = pq.to_vec::<u8>().unwrap();
    let q = |v: f32| v.round_ties_even().clamp(0.0, 255.0) as u8;
    let s = 1.0f32 / 255.0;
    let native: Vec<u8> = probs.iter().map(|&f| q(f * 255.0)).collect();
    let scalar_path: Vec<u8> = probs.iter().map(|&f| q(f / s)).collect();
    let vector_path: Vec<u8> = probs.iter().map(|&f| q(f * (1.0 / s))).collect();
    match acl::build_info().unwrap().acl_major {
        20 => {
            assert_eq!(
                scalar_path, native,
                "x / s and x * 255 agree on these inputs"
            );
            assert_eq!(got, native, "20.08: the scalar path, bit-exact");
        }
        _ => {
            for (i, &g) in got.iter().enumerate() {
                assert!(
                    g == scalar_path[i] || g == vector_path[i],
                    "52.x [{i}] x = {}: {g} is neither x / s ({}) nor x * f32(1/s) ({})",
                    probs[i],
                    scalar_path[i],
                    vector_path[i]
                );
                assert!(g.abs_diff(native[i]) <= 1, "[{i}] {g} vs {}", native[i]);
            }
            // The tie that differs, so that the statement above stays checked.
            assert_eq!((vector_path[1], scalar_path[1]), (1, 2));
        }
    }

    let qi = rng.vec_i8(n);
    let qt = Tensor::new(&q2(DataType::QAsymm8Signed, 8, 8, 0.03, 0)).unwrap();
    let df = Tensor::new(&d2(DataType::F32, 8, 8)).unwrap();
    let mut deq = Function::dequantize(&qt, &df).unwrap();
    qt.write(&qi).unwrap();
    deq.run().unwrap();
    let want: Vec<f32> = qi.iter().map(|&x| x as f32 * 0.03).collect();
    assert!(max_abs_diff(&df.to_vec::<f32>().unwrap(), &want) <= 1e-6);
}

/// IndexSoftmax as the shim's ACL kernel, bit for bit against the crate's `index_softmax`, for
/// every variant and table size, with prefix masks, a fully masked row and extreme scores.
#[test]
fn index_softmax_kernel_is_bit_exact() {
    let (rows, cols) = (6, 70);
    let mut rng = Rng::new(8);
    let mut scores: Vec<i32> = (0..rows * cols)
        .map(|_| (rng.next() % 20001) as i32 - 10000)
        .collect();
    scores[3] = i32::MIN;
    scores[4] = i32::MAX;
    scores[cols + 5] = i32::MIN;
    let limits = [70usize, 1, 0, 35, 69, 70];
    let s = Tensor::new(&d2(DataType::S32, rows, cols)).unwrap();
    let p = Tensor::new(&q2(DataType::QAsymm8, rows, cols, 1.0 / 255.0, 0)).unwrap();
    let sums = Tensor::new(&TensorDesc::new(DataType::U32, &[rows])).unwrap();
    s.write(&scores).unwrap();
    for variant in SoftmaxVariant::ALL {
        for bits in 4..=8 {
            let params = IndexSoftmaxParams::new(1, variant)
                .unwrap()
                .with_table_bits(bits)
                .unwrap();
            let mut f = Function::index_softmax(&s, &p, Some(&sums), &params).unwrap();
            for t in [1, 777, 5000, 1 << 30] {
                f.set_threshold(t).unwrap();
                let params = IndexSoftmaxParams::new(t, variant)
                    .unwrap()
                    .with_table_bits(bits)
                    .unwrap();
                for masked in [false, true] {
                    f.set_row_limits(masked.then_some(&limits[..])).unwrap();
                    f.run().unwrap();
                    let mut want = vec![0u8; rows * cols];
                    let mask = if masked {
                        ScoreMask::Prefix(&limits)
                    } else {
                        ScoreMask::None
                    };
                    let want_sums =
                        index_softmax(&scores, rows, cols, &params, mask, &mut want).unwrap();
                    let ctx = format!("{variant} b={bits} T={t} masked={masked}");
                    assert_eq!(p.to_vec::<u8>().unwrap(), want, "{ctx}");
                    assert_eq!(sums.to_vec::<u32>().unwrap(), want_sums.as_slice(), "{ctx}");
                }
            }
            assert!(f.set_threshold(0).is_err());
            assert!(f.set_threshold((1 << 30) + 1).is_err());
        }
    }
}

#[test]
fn index_softmax_rejects_bad_configurations() {
    let s = Tensor::new(&d2(DataType::S32, 2, 3)).unwrap();
    let p = Tensor::new(&d2(DataType::U8, 2, 3)).unwrap();
    let wrong = Tensor::new(&d2(DataType::U8, 3, 2)).unwrap();
    let f32s = Tensor::new(&d2(DataType::F32, 2, 3)).unwrap();
    let deferred = IndexSoftmaxParams::new(100, SoftmaxVariant::Deferred).unwrap();
    let normalized = IndexSoftmaxParams::new(100, SoftmaxVariant::Normalized).unwrap();
    for r in [
        Function::index_softmax(&s, &p, None, &deferred),
        Function::index_softmax(&s, &wrong, None, &normalized),
        Function::index_softmax(&f32s, &p, None, &normalized),
    ] {
        assert!(matches!(r, Err(Error::Acl(_))));
    }
    assert!(Function::index_softmax(&s, &p, None, &normalized).is_ok());
}

/// A borrowed slice is the tensor's memory: ACL reads the caller's data from it, data written
/// through the tensor lands in it, and it is the caller's again once the tensor is gone.
#[test]
fn borrowed_tensors_use_the_callers_memory() {
    let (m, k, n) = (4, 32, 8);
    let mut rng = Rng::new(9);
    let av = rng.vec_i8(m * k);
    let bv = rng.vec_i8(k * n);
    let mut a = av.clone();
    let mut b = vec![0i8; k * n];
    let out = {
        let ta = Tensor::borrowed(&q2(DataType::QAsymm8Signed, m, k, 1.0, 0), &mut a).unwrap();
        let tb = Tensor::borrowed(&q2(DataType::QAsymm8Signed, k, n, 1.0, 0), &mut b).unwrap();
        let td = Tensor::new(&d2(DataType::S32, m, n)).unwrap();
        assert!(ta.layout().unwrap().imported);
        // B constant: ACL's assembly path, which pads neither A nor B.
        let mut f = Function::gemm_lowp(&ta, &tb, &td, GemmOptions { b_constant: true }).unwrap();
        tb.write(&bv).unwrap();
        f.run().unwrap();
        td.to_vec::<i32>().unwrap()
    };
    assert_eq!(b, bv);
    let mut want = vec![0i32; m * n];
    let mut bt = vec![0i8; k * n];
    for t in 0..k {
        for j in 0..n {
            bt[j * k + t] = bv[t * n + j];
        }
    }
    reference::gemm_s8s8_nt(&av, &bt, m, n, k, &mut want);
    assert_eq!(out, want);

    let mut short = vec![0f32; 5];
    assert!(Tensor::borrowed(&d2(DataType::F32, 2, 3), &mut short).is_err());
    let mut wrong_type = vec![0i32; 6];
    assert!(Tensor::borrowed(&d2(DataType::F32, 2, 3), &mut wrong_type).is_err());
}

/// A function that would pad a borrowed tensor (20.08's non-assembly f32 GEMM pads its
/// operands) must fail to configure with ACL's reason, never read or write past the slice.
#[test]
fn borrowed_tensors_are_never_padded() {
    let (m, k, n) = (3, 4, 5);
    let mut a = vec![0.5f32; m * k];
    let ta = Tensor::borrowed(&d2(DataType::F32, m, k), &mut a).unwrap();
    let tb = Tensor::new(&d2(DataType::F32, k, n)).unwrap();
    let td = Tensor::new(&d2(DataType::F32, m, n)).unwrap();
    match Function::gemm(&ta, &tb, &td, 1.0, STREAMED) {
        Err(Error::Acl(msg)) => assert!(msg.contains("Padding"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(mut f) => {
            tb.write(&vec![1.0f32; k * n]).unwrap();
            f.run().unwrap();
            assert!(td.to_vec::<f32>().unwrap().iter().all(|&x| x == 2.0));
        }
    }
    assert!(ta.layout().unwrap().dense);
}

#[test]
fn tensors_check_types_and_lengths() {
    let t = Tensor::new(&d2(DataType::S32, 2, 2)).unwrap();
    assert!(t.write(&[1i32, 2, 3]).is_err());
    assert!(t.write(&[1u32, 2, 3, 4]).is_err());
    assert!(Tensor::new(&TensorDesc::new(DataType::QAsymm8, &[2])).is_err());
    assert!(Tensor::new(&TensorDesc::quantized(DataType::QAsymm8, &[2], 0.0, 0)).is_err());
    assert!(Tensor::new(&TensorDesc::new(DataType::F32, &[])).is_err());
    assert!(Tensor::new(&TensorDesc::new(DataType::F32, &[1, 0])).is_err());
}

fn inputs(shape: &AttnShape, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    (
        rng.vec_f32(shape.q_elems(), 2.0),
        rng.vec_f32(shape.kv_elems(), 2.0),
        rng.vec_f32(shape.kv_elems(), 1.5),
    )
}

fn gqa_shape() -> AttnShape {
    AttnShape::new(2, 4, 17, 16)
        .with_kv_heads(2)
        .with_kv_len(33)
}

/// IntAttention on ACL equals the native pipeline bit for bit, in every IndexSoftmax variant,
/// with and without causal and key-padding masks, and its intermediates equal the native
/// kernels' (scores, IndexSoftmax output, P x V).
#[test]
fn intattention_pipeline_is_bit_exact_with_native() {
    let shape = gqa_shape();
    let (q, k, v) = inputs(&shape, 10);
    for variant in SoftmaxVariant::ALL {
        for masked in [false, true] {
            let mut attn = Attention::new(Pipeline::IntAttention)
                .with_quantization(Quantization::PER_TENSOR)
                .with_variant(variant);
            if masked {
                attn = attn.with_causal(true).with_key_lens(vec![33, 5]);
            }
            let native = attn.run(&shape, &q, &k, &v).unwrap();
            let mut runner = acl::AclAttention::prepare(&attn, &shape).unwrap();
            let (got, traces) = runner.run_traced(&q, &k, &v).unwrap();
            assert_eq!(got, native, "{variant} masked={masked}");
            // A second run reuses the configured functions.
            assert_eq!(runner.run(&q, &k, &v).unwrap(), native);
            check_traces(&attn, &shape, &q, &k, &v, &traces);
        }
    }
}

/// Recomputes every head's intermediates with the crate's public operations.
fn check_traces(
    attn: &Attention,
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    traces: &[acl::HeadTrace],
) {
    let (q, k, v) = (
        QTensor::quantize(q).unwrap(),
        QTensor::quantize(k).unwrap(),
        QTensor::quantize(v).unwrap(),
    );
    let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
    assert_eq!(traces.len(), shape.batch * shape.heads);
    for (bh, t) in traces.iter().enumerate() {
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        let kv = b * shape.kv_heads + h / (shape.heads / shape.kv_heads);
        let qh = &q.data()[bh * lq * d..(bh + 1) * lq * d];
        let kh = &k.data()[kv * lk * d..(kv + 1) * lk * d];
        let vh = &v.data()[kv * lk * d..(kv + 1) * lk * d];
        let mut s = vec![0i32; lq * lk];
        Kernel::generic()
            .gemm_s8s8_nt(qh, kh, lq, lk, d, &mut s)
            .unwrap();
        assert_eq!(t.scores, s, "scores of head {bh}");
        if attn.pipeline() == Pipeline::IntAttention {
            let params = IndexSoftmaxParams::from_scales(
                q.scale(),
                k.scale(),
                attn.softmax_scale(d),
                attn.table_bits(),
                attn.clip(),
                attn.variant(),
            )
            .unwrap();
            let lens: Vec<usize> = (0..lq).map(|i| valid_keys(attn, shape, b, i)).collect();
            let mut p = vec![0u8; lq * lk];
            let sums =
                index_softmax(&s, lq, lk, &params, ScoreMask::Prefix(&lens), &mut p).unwrap();
            assert_eq!(t.probs, p, "P of head {bh}");
            if attn.variant() == SoftmaxVariant::Deferred {
                assert_eq!(t.row_sums, sums.as_slice(), "row sums of head {bh}");
            } else {
                assert!(t.row_sums.is_empty());
            }
        }
        let mut o = vec![0i32; lq * d];
        Kernel::generic()
            .gemm_u8s8(&t.probs, vh, lq, d, lk, &mut o)
            .unwrap();
        assert_eq!(t.o32, o, "P x V of head {bh}");
    }
}

/// The int8 baseline: scores and P x V are exact; P comes from ACL's f32 softmax and
/// quantization, which may put a probability on the other side of a rounding boundary.
/// Tolerance: at most 1 in a few P entries, so the output within 1e-3 of V's range.
#[test]
fn int8_pipeline_matches_native() {
    let shape = gqa_shape();
    let (q, k, v) = inputs(&shape, 11);
    for masked in [false, true] {
        let mut attn = Attention::new(Pipeline::Int8);
        if masked {
            attn = attn.with_causal(true).with_key_lens(vec![20, 33]);
        }
        let native = attn.run(&shape, &q, &k, &v).unwrap();
        let mut runner = acl::AclAttention::prepare(&attn, &shape).unwrap();
        let (got, traces) = runner.run_traced(&q, &k, &v).unwrap();
        let err = max_abs_diff(&got, &native);
        assert!(err <= 1.5e-3, "masked={masked}: max |ACL - native| = {err}");
        check_traces(&attn, &shape, &q, &k, &v, &traces);
    }
}

/// fp32: ACL's GEMMs sum in another order and its exp is a polynomial: within 1e-5 of the
/// native output (|V| <= 1.5, so about 1e-5 relative).
#[test]
fn fp32_pipeline_matches_native() {
    let shape = gqa_shape();
    let (q, k, v) = inputs(&shape, 12);
    for masked in [false, true] {
        let mut attn = Attention::new(Pipeline::Fp32);
        if masked {
            attn = attn.with_causal(true).with_key_lens(vec![0, 30]);
        }
        let native = attn.run(&shape, &q, &k, &v).unwrap();
        let mut runner = acl::AclAttention::prepare(&attn, &shape).unwrap();
        let got = runner.run(&q, &k, &v).unwrap();
        let err = max_abs_diff(&got, &native);
        assert!(err <= 1e-5, "masked={masked}: max |ACL - native| = {err}");
    }
}

/// fp16 needs an ACL built for Armv8.2-A (Debian's 20.08 is not): then `prepare` says so.
/// Where it runs: within 1e-2 of native (f16 has 11 significant bits; both round P and O).
#[test]
fn fp16_pipeline_runs_or_reports_why_not() {
    let shape = AttnShape::new(1, 2, 16, 8);
    let (q, k, v) = inputs(&shape, 13);
    let attn = Attention::new(Pipeline::Fp16);
    match acl::AclAttention::prepare(&attn, &shape) {
        Err(Error::Acl(msg)) => assert!(msg.contains("F16"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(mut runner) => {
            let native = attn.run(&shape, &q, &k, &v).unwrap();
            let got = runner.run(&q, &k, &v).unwrap();
            assert!(max_abs_diff(&got, &native) <= 1e-2);
        }
    }
}

#[test]
fn pipelines_reject_bad_input() {
    let shape = AttnShape::new(1, 1, 8, 4);
    let attn = Attention::new(Pipeline::IntAttention).with_quantization(Quantization::PER_TENSOR);
    let mut runner = acl::AclAttention::prepare(&attn, &shape).unwrap();
    let mut q = vec![0.5f32; shape.q_elems()];
    let k = vec![0.25f32; shape.kv_elems()];
    let v = vec![1.0f32; shape.kv_elems()];
    assert!(runner.run(&q[1..], &k, &v).is_err());
    q[3] = f32::NAN;
    assert!(matches!(
        runner.run(&q, &k, &v),
        Err(Error::NonFinite { .. })
    ));
    // All-zero Q: uniform attention, the mean of V's rows (exactly, V is constant).
    let zeros = vec![0f32; shape.q_elems()];
    let out = runner.run(&zeros, &k, &v).unwrap();
    assert!(
        out.iter().all(|&x| (x - 1.0).abs() <= 1.0 / 127.0),
        "{out:?}"
    );
    let bad = Attention::new(Pipeline::IntAttention)
        .with_quantization(Quantization::PER_TENSOR)
        .with_key_lens(vec![9]);
    assert!(acl::AclAttention::prepare(&bad, &shape).is_err());
    assert!(intattention::backend::prepare(intattention::Backend::Acl, &attn, &shape).is_ok());
}

/// Callers' int8 tensors with every i8 value, -128 included, through both integer pipelines:
/// IntAttention bit-exact, int8 within the tolerance of `int8_pipeline_matches_native`.
#[test]
fn run_quantized_accepts_every_i8_value() {
    let shape = AttnShape::new(1, 2, 24, 16);
    let mut rng = Rng::new(14);
    let mut q = rng.vec_i8(shape.q_elems());
    let mut k = rng.vec_i8(shape.kv_elems());
    let mut v = rng.vec_i8(shape.kv_elems());
    q[0] = -128;
    k[1] = -128;
    v[2] = -128;
    let (q, k, v) = (
        QTensor::from_parts(q, 0.02).unwrap(),
        QTensor::from_parts(k, 0.03).unwrap(),
        QTensor::from_parts(v, 0.01).unwrap(),
    );
    for pipe in [Pipeline::IntAttention, Pipeline::Int8] {
        let attn = Attention::new(pipe)
            .with_quantization(Quantization::PER_TENSOR)
            .with_causal(true);
        let native = attn.run_quantized(&shape, &q, &k, &v).unwrap();
        let got = acl::AclAttention::prepare(&attn, &shape)
            .unwrap()
            .run_quantized(&q, &k, &v)
            .unwrap();
        if pipe == Pipeline::IntAttention {
            assert_eq!(got, native);
        } else {
            assert!(max_abs_diff(&got, &native) <= 1.5e-3);
        }
    }
    let fp32 = Attention::new(Pipeline::Fp32);
    let mut runner = acl::AclAttention::prepare(&fp32, &shape).unwrap();
    assert!(runner.run_quantized(&q, &k, &v).is_err());
}
