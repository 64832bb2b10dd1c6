//! Strided inputs and the tensor-library bridges: a `[B, L, H, d]` buffer read through
//! strides, an ndarray view and a candle tensor all give the same bits as contiguous
//! `[B, H, L, d]` input. The bridges are features; `.ci/run` runs this file with them on.

mod support;

use intattention::{Attention, AttnShape, Pipeline, TensorView, Workspace};

/// `[B, H, L, d]` data transposed to `[B, L, H, d]`.
fn to_blhd(x: &[f32], b: usize, h: usize, l: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for bb in 0..b {
        for hh in 0..h {
            for ll in 0..l {
                let src = ((bb * h + hh) * l + ll) * d;
                let dst = ((bb * l + ll) * h + hh) * d;
                y[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    y
}

fn case() -> (AttnShape, Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = support::shape(2, 4, 2, 9, 33, 16);
    let q = support::data(1, s.q_elems());
    let k = support::data(2, s.kv_elems());
    let v = support::data(3, s.kv_elems());
    (s, q, k, v)
}

fn configs() -> Vec<Attention> {
    Pipeline::ALL
        .into_iter()
        .map(|p| Attention::new(p).with_causal(true))
        .collect()
}

#[test]
fn strided_blhd_views_equal_contiguous_inputs() {
    let (s, q, k, v) = case();
    let (qb, kb, vb) = (
        to_blhd(&q, s.batch, s.heads, s.q_len, s.head_dim),
        to_blhd(&k, s.batch, s.kv_heads, s.kv_len, s.head_dim),
        to_blhd(&v, s.batch, s.kv_heads, s.kv_len, s.head_dim),
    );
    for attn in configs() {
        let want = attn.run(&s, &q, &k, &v).unwrap();
        let mut got = vec![f32::NAN; s.q_elems()];
        attn.run_into(
            &mut Workspace::new(),
            TensorView::from_blhd(&qb, [s.batch, s.q_len, s.heads, s.head_dim]).unwrap(),
            TensorView::from_blhd(&kb, [s.batch, s.kv_len, s.kv_heads, s.head_dim]).unwrap(),
            TensorView::from_blhd(&vb, [s.batch, s.kv_len, s.kv_heads, s.head_dim]).unwrap(),
            &mut got,
        )
        .unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            attn.pipeline()
        );
    }
}

#[test]
fn strides_past_the_buffer_are_errors() {
    let x = vec![0f32; 100];
    assert!(TensorView::strided(&x, [1, 2, 5, 10], [100, 50, 10]).is_ok());
    assert!(TensorView::strided(&x, [1, 2, 5, 10], [100, 51, 10]).is_err());
    assert!(TensorView::strided(&x, [2, 2, 5, 10], [100, 50, 10]).is_err());
    assert!(TensorView::strided(&x, [1, 1, 1, 10], [usize::MAX, usize::MAX, 1]).is_ok());
    assert!(TensorView::strided(&x, [2, 1, 1, 10], [usize::MAX, 0, 0]).is_err());
    assert!(TensorView::new(&x, [1, 1, 10, 11]).is_err());
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_views_equal_slices() {
    use ndarray::{Array4, ArrayView4};
    let (s, q, k, v) = case();
    let dims = |h, l| (s.batch, h, l, s.head_dim);
    let qa = ArrayView4::from_shape(dims(s.heads, s.q_len), &q).unwrap();
    let ka = ArrayView4::from_shape(dims(s.kv_heads, s.kv_len), &k).unwrap();
    let va = ArrayView4::from_shape(dims(s.kv_heads, s.kv_len), &v).unwrap();
    // K through a permuted (non-standard) view: copied into standard layout on the way in.
    let kb = to_blhd(&k, s.batch, s.kv_heads, s.kv_len, s.head_dim);
    let kp = Array4::from_shape_vec((s.batch, s.kv_len, s.kv_heads, s.head_dim), kb).unwrap();
    let kp = kp.view().permuted_axes([0, 2, 1, 3]);
    for attn in configs() {
        let want = attn.run(&s, &q, &k, &v).unwrap();
        let got = intattention::interop::ndarray::run(&attn, qa, ka, va).unwrap();
        assert_eq!(got.as_slice().unwrap(), &want[..]);
        let got = intattention::interop::ndarray::run(&attn, qa, kp, va).unwrap();
        assert_eq!(got.as_slice().unwrap(), &want[..]);
    }
    // A wrong output shape is an error.
    let mut out = Array4::<f32>::zeros((1, 1, 1, 1));
    let e = intattention::interop::ndarray::run_into(
        &Attention::default(),
        &mut Workspace::new(),
        qa,
        ka,
        va,
        out.view_mut(),
    );
    assert!(e.is_err());
}

#[cfg(feature = "candle")]
#[test]
fn candle_custom_op_equals_slices() {
    use candle_core::{Device, Tensor};
    use intattention::interop::candle::CandleAttention;
    let (s, q, k, v) = case();
    let dev = Device::Cpu;
    let qt = Tensor::from_vec(q.clone(), (s.batch, s.heads, s.q_len, s.head_dim), &dev).unwrap();
    let kt =
        Tensor::from_vec(k.clone(), (s.batch, s.kv_heads, s.kv_len, s.head_dim), &dev).unwrap();
    let vt =
        Tensor::from_vec(v.clone(), (s.batch, s.kv_heads, s.kv_len, s.head_dim), &dev).unwrap();
    // V as a transposed candle view of a [B, L, H, d] tensor: strides, read in place.
    let vb = to_blhd(&v, s.batch, s.kv_heads, s.kv_len, s.head_dim);
    let vt2 = Tensor::from_vec(vb, (s.batch, s.kv_len, s.kv_heads, s.head_dim), &dev)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    assert!(!vt2.is_contiguous());
    for attn in configs() {
        let want = attn.run(&s, &q, &k, &v).unwrap();
        let op = CandleAttention::new(attn.clone());
        for vv in [&vt, &vt2] {
            let got = qt.apply_op3_no_bwd(&kt, vv, &op).unwrap();
            assert_eq!(got.dims(), &[s.batch, s.heads, s.q_len, s.head_dim]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{}", attn.pipeline());
        }
    }
    // Wrong dtype or rank: a candle error, not a panic.
    let bad = qt.to_dtype(candle_core::DType::F64).unwrap();
    assert!(bad
        .apply_op3_no_bwd(&kt, &vt, &CandleAttention::new(Attention::default()))
        .is_err());
    let flat = qt.flatten_all().unwrap();
    assert!(flat
        .apply_op3_no_bwd(&kt, &vt, &CandleAttention::new(Attention::default()))
        .is_err());
}
