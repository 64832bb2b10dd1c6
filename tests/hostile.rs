//! The library's answers to hostile input (issue 14): shapes whose buffers cannot exist, logit
//! scales that overflow, outputs that do not fit f32 or f16, and what a failing `run_into`
//! leaves in the caller's buffer. Each must be a typed error, never an abort, a panic or a
//! silent NaN, infinity or zero. (The CLI's side, `.npy` files and output files, is in
//! cli/tests/cli.rs.)

mod support;

use intattention::*;
use support::{data, shape};

/// Q, K and V of one head with `len` positions of dimension 1: 12 MB of input whose score
/// matrix (`len^2` entries, 4 TB at a million) can never be allocated.
fn long_thin(len: usize) -> (AttnShape, Vec<f32>) {
    (shape(1, 1, 1, len, len, 1), data(1, len))
}

#[test]
fn a_score_matrix_that_cannot_exist_is_an_allocation_error() {
    // The schedules that hold a head's whole score matrix: the float pipelines and the
    // unfused integer schedule. (The fused schedule needs no such buffer; it would simply run
    // for as long as 10^12 multiply-accumulates take.) Under Linux's default overcommit
    // heuristic a 4 TB request fails at once, which must come back as an error naming the
    // buffer and its size rather than end the process.
    let (s, x) = long_thin(1_000_000);
    for (pipeline, schedule) in [
        (Pipeline::Fp32, Schedule::Auto),
        (Pipeline::Fp16, Schedule::Auto),
        (Pipeline::Int8, Schedule::Unfused),
        (Pipeline::IntAttention, Schedule::Unfused),
    ] {
        let e = Attention::new(pipeline)
            .with_schedule(schedule)
            .run(&s, &x, &x, &x)
            .unwrap_err();
        match &e {
            Error::Allocation { bytes, .. } => {
                assert!(*bytes >= 1_000_000_000_000, "{pipeline}: {e}")
            }
            Error::LimitExceeded { .. } => {}
            other => panic!("{pipeline} {schedule:?}: {other}"),
        }
        assert!(e.to_string().contains("bytes") || e.to_string().contains("limit"));
    }
}

#[test]
fn overflowing_logit_scales_are_errors_not_garbage() {
    let s = shape(1, 2, 1, 5, 7, 8);
    let q: Vec<f32> = data(2, s.q_elems()).iter().map(|x| x * 1e22).collect();
    let k: Vec<f32> = data(3, s.kv_elems()).iter().map(|x| x * 1e22).collect();
    let v = data(4, s.kv_elems());
    // int8: scores times s_q s_k scale overflow f32 (the float softmax would see infinities).
    for schedule in [Schedule::Auto, Schedule::Unfused] {
        let e = Attention::new(Pipeline::Int8)
            .with_schedule(schedule)
            .run(&s, &q, &k, &v)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Overflow {
                    arithmetic: "f32",
                    ..
                }
            ),
            "{schedule:?}: {e}"
        );
        assert!(e.to_string().contains("int8"), "{e}");
    }
    // A logit scale near f32::MAX on ordinary inputs: the same (at 1e38 the largest logits
    // of this data still fit f32, and the result is the softmax of those finite logits).
    let q = data(2, s.q_elems());
    let k = data(3, s.kv_elems());
    let e = Attention::new(Pipeline::Int8)
        .with_scale(3e38)
        .run(&s, &q, &k, &v)
        .unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    let ok = Attention::new(Pipeline::Int8)
        .with_scale(1e38)
        .run(&s, &q, &k, &v)
        .unwrap();
    assert!(ok.iter().all(|x| x.is_finite()));
    // fp32 with scores past f32: the error names fp32, not fp16.
    let big: Vec<f32> = data(5, s.q_elems()).iter().map(|x| x * 1e25).collect();
    let bigk: Vec<f32> = data(6, s.kv_elems()).iter().map(|x| x * 1e25).collect();
    let e = Attention::new(Pipeline::Fp32)
        .run(&s, &big, &bigk, &v)
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("fp32") && !text.contains("fp16"), "{text}");
    // IntAttention never overflows here: its threshold saturates and the result is the
    // hard maximum's value row, finite.
    let out = Attention::new(Pipeline::IntAttention)
        .run(&s, &big, &bigk, &v)
        .unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
}

#[test]
fn outputs_that_do_not_fit_are_errors() {
    let s = shape(1, 1, 1, 3, 4, 8);
    let max = vec![f32::MAX; s.q_elems().max(s.kv_elems())];
    let (q, kv) = (&max[..s.q_elems()], &max[..s.kv_elems()]);
    // Every input f32::MAX, per-tensor scales: O = O32 s_v / divisor rounds past f32::MAX
    // (s_v = MAX / 127 and P sums that are not exact multiples): an error naming the pipeline
    // and the first bad element, never an infinity returned as a result.
    for variant in [SoftmaxVariant::Deferred, SoftmaxVariant::Normalized] {
        let e = Attention::new(Pipeline::IntAttention)
            .with_variant(variant)
            .with_paper_settings()
            .run(&s, q, kv, kv)
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::NonFiniteOutput {
                    pipeline: Pipeline::IntAttention,
                    index: 0,
                    ..
                }
            ),
            "{variant}: {e}"
        );
    }
    // The default (smoothed V): V minus its mean is 0, so the output is the mean, MAX, exactly.
    let out = Attention::new(Pipeline::IntAttention)
        .run(&s, q, kv, kv)
        .unwrap();
    assert!(out.iter().all(|&x| x == f32::MAX));
    // fp32 and int8 overflow in their scores or logits first; fp16 refuses values outside f16.
    let e = Attention::new(Pipeline::Fp32)
        .run(&s, q, kv, kv)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Overflow {
                arithmetic: "f32",
                ..
            }
        ),
        "{e}"
    );
    let e = Attention::new(Pipeline::Int8)
        .run(&s, q, kv, kv)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Overflow {
                arithmetic: "f32",
                ..
            }
        ),
        "{e}"
    );
    let e = Attention::new(Pipeline::Fp16)
        .run(&s, q, kv, kv)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { .. }), "{e}");
    // fp16 with every value at f16's largest finite value. Where P x V is summed in f32 (x86)
    // the weights sum to one and the output is 65504; where it is summed in f16 (aarch64 with
    // FP16 arithmetic) the sum passes 65504 and rounds to infinity: then the call must say so.
    let v: Vec<f32> = vec![65504.0; s.kv_elems()];
    let (q16, k16) = (data(7, s.q_elems()), data(8, s.kv_elems()));
    match Attention::new(Pipeline::Fp16).run(&s, &q16, &k16, &v) {
        Ok(out) => assert!(out.iter().all(|&x| x == 65504.0), "{out:?}"),
        Err(Error::NonFiniteOutput {
            pipeline: Pipeline::Fp16,
            index,
            value,
        }) => {
            // f32 sums cannot overflow here: only f16 arithmetic (aarch64) gets this far.
            let f16_sums = cfg!(target_arch = "aarch64");
            assert!(f16_sums && index < s.q_elems() && value.is_infinite());
        }
        Err(e) => panic!("{e}"),
    }
}

/// `run_into` writes nothing before its checks pass, and leaves zeros (never partial results)
/// when a call fails after it started.
#[test]
fn a_failing_call_leaves_zeros_in_run_into_buffers() {
    let s = shape(1, 1, 1, 2, 3, 4);
    let q = data(9, s.q_elems());
    let k = data(10, s.kv_elems());
    // Q times 1e22 makes the int8 pipeline overflow after its checks passed: the call has
    // started, and must leave every value of the caller's buffer zero.
    let big: Vec<f32> = q.iter().map(|x| x * 1e22).collect();
    let bigk: Vec<f32> = k.iter().map(|x| x * 1e22).collect();
    let v = data(11, s.kv_elems());
    let mut ws = Workspace::new();
    let mut out = vec![f32::NAN; s.q_elems()];
    let attn = Attention::new(Pipeline::Int8);
    fn views(x: &[f32], l: usize) -> TensorView<'_, f32> {
        TensorView::new(x, [1, 1, l, 4]).unwrap()
    }
    let r = attn.run_into(
        &mut ws,
        views(&big, 2),
        views(&bigk, 3),
        views(&v, 3),
        &mut out,
    );
    assert!(matches!(r, Err(Error::Overflow { .. })), "{r:?}");
    assert!(out.iter().all(|&x| x == 0.0 && x.is_sign_positive()));
    // The same buffer then takes a good call's result, equal to run's.
    attn.run_into(&mut ws, views(&q, 2), views(&k, 3), views(&v, 3), &mut out)
        .unwrap();
    assert_eq!(out, attn.run(&s, &q, &k, &v).unwrap());
    // A NaN input is found by the call's first pass over the inputs, after it started: zeros
    // again. (Shapes, lengths and parameters are checked before: `tests/attention_semantics.rs`
    // shows those leave the buffer as it was.)
    let mut nan = q.clone();
    nan[1] = f32::NAN;
    let e = attn
        .run_into(
            &mut ws,
            views(&nan, 2),
            views(&k, 3),
            views(&v, 3),
            &mut out,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFinite {
                tensor: "Q",
                index: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        out.iter().all(|&x| x == 0.0),
        "a failed call left partial results"
    );
}
