//! What the integration tests share: one deterministic generator for bulk data, and helpers
//! that build the values a test needs in one line. Each test crate includes it with
//! `mod support;` and uses what it needs.

#![allow(dead_code)]

use intattention::{AttnShape, Executor, QTensor};

/// Small deterministic generator (splitmix64) for bulk data: much faster than generating
/// thousands of elements one by one through proptest.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in `[-1, 1)`.
    pub fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }

    /// `n` i8 over the whole range, -128 included.
    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() >> 56) as u8 as i8).collect()
    }

    /// `n` bytes, a quarter of them the extremes (0, 127, 128, 255 as u8: 0, 127, -128, -1 as
    /// i8), where saturating SIMD tricks fail.
    pub fn bytes_with_extremes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let r = (self.next() >> 32) as u32;
                if r & 3 == 0 {
                    [0u8, 127, 128, 255][(r >> 8) as usize % 4]
                } else {
                    (r >> 16) as u8
                }
            })
            .collect()
    }
}

/// `n` floats in `[-1, 1)` from `seed`.
pub fn data(seed: u64, n: usize) -> Vec<f32> {
    Rng(seed).f32s(n)
}

/// An int8 tensor of `n` full-range values (-128 included) with `scale`.
pub fn qtensor(seed: u64, n: usize, scale: f32) -> QTensor {
    QTensor::from_parts(Rng(seed).i8s(n), scale).unwrap()
}

/// A shape with every dimension given.
pub fn shape(b: usize, h: usize, kvh: usize, lq: usize, lk: usize, d: usize) -> AttnShape {
    AttnShape::new(b, h, lq, d)
        .with_kv_heads(kvh)
        .with_kv_len(lk)
}

/// An executor of `n` threads (1: the calling thread alone).
pub fn threads(n: usize) -> Executor {
    if n == 1 {
        Executor::CallingThread
    } else {
        Executor::with_threads(n).unwrap()
    }
}

/// [`intattention::Attention::run_into`] on contiguous inputs of `shape` with a fresh
/// workspace.
pub fn run_into(
    attn: &intattention::Attention,
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> intattention::Result<()> {
    use intattention::TensorView;
    let qd = [shape.batch, shape.heads, shape.q_len, shape.head_dim];
    let kd = [shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim];
    attn.run_into(
        &mut intattention::Workspace::new(),
        TensorView::new(q, qd)?,
        TensorView::new(k, kd)?,
        TensorView::new(v, kd)?,
        out,
    )
}
