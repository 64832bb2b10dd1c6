//! Symmetric per-tensor int8 quantization (SPEC section 1).

use crate::aligned::Fresh;
use crate::error::{Error, Result};

/// An int8 tensor with its per-tensor scale: the real value of `data[i]` is `data[i] * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    pub data: Vec<i8>,
    pub scale: f32,
}

/// Returns the first non-finite element of `x` as an error naming `what`.
pub fn check_finite(what: &'static str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            what,
            index,
            value: x[index],
        }),
    }
}

/// The per-tensor scale `max|x| / 127` (0 for an all-zero tensor). Errors on NaN or infinity.
pub fn symmetric_scale(x: &[f32]) -> Result<f32> {
    let max_bits = max_abs_bits(x);
    if max_bits >= f32::INFINITY.to_bits() {
        check_finite("tensor to quantize", x)?;
    }
    Ok(f32::from_bits(max_bits) / 127.0)
}

/// The largest `|x|` as bits (infinity's bits or more when a NaN or infinity is present).
fn max_abs_bits(x: &[f32]) -> u32 {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 target.
        unsafe { neon::max_abs_bits(x) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    max_abs_bits_at(crate::simd::level(), x)
}

crate::simd::dispatch! {
    /// [`max_abs_bits_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    fn max_abs_bits_at(x: &[f32]) -> u32 => max_abs_bits_portable
}

#[inline(always)]
fn max_abs_bits_portable(x: &[f32]) -> u32 {
    // One pass over the bit patterns: for non-negative floats the bit order is the value order,
    // and |x| is finite exactly when its bits are below infinity's. An integer max reduction
    // vectorises where a float max (NaN-aware, order-dependent) would not. (A hand-unrolled
    // 16-lane array was turned into gathers across chunks by LLVM.)
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// Quantizes `x` with a given scale: `clamp(round_half_even(x / s), -127, 127)`, all zeros when
/// `s == 0`. `s` must come from [`symmetric_scale`] (or be at least as large), so that the clamp
/// only absorbs rounding at the ends of the range.
pub fn quantize_with_scale(x: &[f32], scale: f32, out: &mut [i8]) {
    debug_assert_eq!(x.len(), out.len());
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 target.
        unsafe { neon::quantize_with_scale(x, scale, out) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    quantize_at(crate::simd::level(), x, scale, out)
}

crate::simd::dispatch! {
    /// [`quantize_portable`] compiled for a given level (AVX2 / AVX-512 on x86-64).
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    fn quantize_at(x: &[f32], scale: f32, out: &mut [i8]) => quantize_portable
}

#[inline(always)]
fn quantize_portable(x: &[f32], scale: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        // After the magic addition the integer sits in the low mantissa bits (the exponent
        // is fixed for |v| <= 2^22), so its low byte is the two's complement i8: no float to
        // int conversion, which would not vectorise on baseline x86-64.
        let r = (v / scale).clamp(-127.0, 127.0) + MAGIC;
        *o = r.to_bits() as u8 as i8;
    }
}

/// NEON versions of the two passes (the portable loops do not vectorise well on aarch64: the
/// maximum came out as scalar code, and the magic-number rounding needs a narrowing chain that
/// FCVTNS + saturating narrows do in fewer instructions). Same results bit for bit: FCVTNS
/// rounds half to even like the magic addition, and clamping after rounding equals clamping
/// before it because the bounds are integers.
#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::*;

    /// See [`super::max_abs_bits`].
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn max_abs_bits(x: &[f32]) -> u32 {
        let mask = vdupq_n_u32(0x7fff_ffff);
        let mut m = [vdupq_n_u32(0); 4];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            // SAFETY: the chunk has 16 floats.
            let v = unsafe { vld1q_u32_x4(c.as_ptr().cast()) };
            m[0] = vmaxq_u32(m[0], vandq_u32(v.0, mask));
            m[1] = vmaxq_u32(m[1], vandq_u32(v.1, mask));
            m[2] = vmaxq_u32(m[2], vandq_u32(v.2, mask));
            m[3] = vmaxq_u32(m[3], vandq_u32(v.3, mask));
        }
        let all = vmaxq_u32(vmaxq_u32(m[0], m[1]), vmaxq_u32(m[2], m[3]));
        chunks
            .remainder()
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .fold(vmaxvq_u32(all), u32::max)
    }

    /// See [`super::quantize_with_scale`] (`scale != 0`).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_with_scale(x: &[f32], scale: f32, out: &mut [i8]) {
        let s = vdupq_n_f32(scale);
        let lo = vdupq_n_s8(-127);
        let mut ins = x.chunks_exact(16);
        let mut outs = out.chunks_exact_mut(16);
        for (c, o) in (&mut ins).zip(&mut outs) {
            // SAFETY: the chunk has 16 floats.
            let v = unsafe { vld1q_f32_x4(c.as_ptr()) };
            let r = |v| vcvtnq_s32_f32(vdivq_f32(v, s));
            let h0 = vqmovn_high_s32(vqmovn_s32(r(v.0)), r(v.1));
            let h1 = vqmovn_high_s32(vqmovn_s32(r(v.2)), r(v.3));
            let b = vmaxq_s8(vqmovn_high_s16(vqmovn_s16(h0), h1), lo);
            // SAFETY: the output chunk has 16 bytes.
            unsafe { vst1q_s8(o.as_mut_ptr(), b) };
        }
        super::quantize_portable(ins.remainder(), scale, outs.into_remainder());
    }
}

/// 1.5 * 2^23: adding it to |v| <= 2^22 leaves only integer bits, and IEEE addition rounds half
/// to even, so this is SPEC's round_half_even without a per-element `rintf` call (plain
/// `f32::round_ties_even` is one on baseline x86-64, which made quantization a third of the
/// IntAttention run time). Clamping before rounding gives the same result as SPEC's
/// round-then-clamp because the bounds are integers and rounding is monotone.
const MAGIC: f32 = 12_582_912.0;

/// The quantizer's rounding as a float, for the tests that check it against `round_ties_even`.
#[cfg(test)]
fn round_half_even_small(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// SPEC section 1: `s = max|x| / 127`, `q = clamp(round_half_even(x / s), -127, 127)`.
///
/// An all-zero tensor is valid and gives all-zero `q` with scale 0. A NaN or an infinity is an
/// error.
pub fn quantize_symmetric(x: &[f32]) -> Result<(Vec<i8>, f32)> {
    let scale = symmetric_scale(x)?;
    let mut q = vec![0i8; x.len()];
    quantize_with_scale(x, scale, &mut q);
    Ok((q, scale))
}

impl QTensor {
    /// Quantizes a float tensor per SPEC section 1.
    pub fn quantize(x: &[f32]) -> Result<Self> {
        let (data, scale) = quantize_symmetric(x)?;
        Ok(QTensor { data, scale })
    }

    /// [`QTensor::quantize`] spread over the current rayon pool, with identical results (the
    /// maximum and every element are computed exactly as in the serial version). The pipelines
    /// use it so that quantizing a large Q, K, V does not run on one core while the rest idle.
    pub fn quantize_parallel(x: &[f32]) -> Result<Self> {
        let [t] = Self::quantize_all_parallel([x])?;
        Ok(t)
    }

    /// [`QTensor::quantize`] of several tensors at once on the current rayon pool: one parallel
    /// pass takes the maxima of all of them, one quantizes all of them, so Q, K and V share two
    /// waits instead of six (with one head on 16 workers, quantizing them one by one took a
    /// fifth of the run). Identical results to quantizing each alone.
    pub fn quantize_all_parallel<const N: usize>(xs: [&[f32]; N]) -> Result<[Self; N]> {
        Self::quantize_all_parallel_in(std::array::from_fn(|_| Vec::new()), xs)
    }

    /// [`QTensor::quantize_all_parallel`] into the given vectors (cleared first, reallocated
    /// only when too small), so that a caller can reuse their memory.
    ///
    /// Both passes read every input once, from memory when the inputs are not in cache. So
    /// the chunks of the first pass (maxima) go one at a time to whichever worker asks next
    /// (faster cores take more), each worker notes its chunks, and in the second pass every
    /// worker quantizes its own chunks first, whose inputs are still in its L2, before helping
    /// with the others'. Device Xeon, L = 4096, d = 128, caches flushed between runs: 0.13-0.15
    /// against 0.20-0.22 ms on 16 threads, 0.21 against 0.31 ms on 8, with each pass split
    /// by rayon's work stealing (which hands a chunk to any worker).
    pub fn quantize_all_parallel_in<const N: usize>(
        storage: [Vec<i8>; N],
        xs: [&[f32]; N],
    ) -> Result<[Self; N]> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        const CHUNK: usize = 1 << 14;
        let chunks: Vec<(usize, &[f32])> = xs
            .iter()
            .enumerate()
            .flat_map(|(t, x)| x.chunks(CHUNK).map(move |c| (t, c)))
            .collect();
        // Pass 1, on every worker of the current pool: (its chunks, its maxima per tensor).
        let next = AtomicUsize::new(0);
        let taken: Vec<(Vec<usize>, [u32; N])> = rayon::broadcast(|_| {
            let mut mine = Vec::new();
            let mut max_bits = [0u32; N];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(t, c)) = chunks.get(i) else { break };
                max_bits[t] = max_bits[t].max(max_abs_bits(c));
                mine.push(i);
            }
            (mine, max_bits)
        });
        let mut max_bits = [0u32; N];
        for (_, m) in &taken {
            for t in 0..N {
                max_bits[t] = max_bits[t].max(m[t]);
            }
        }
        let mut scales = [0f32; N];
        for t in 0..N {
            if max_bits[t] >= f32::INFINITY.to_bits() {
                check_finite("tensor to quantize", xs[t])?;
            }
            scales[t] = f32::from_bits(max_bits[t]) / 127.0;
        }
        // Pass 2: the output chunk of input chunk i is `pieces[i]`, taken by whoever claims i
        // (each index is claimed once through its owner's cursor). Made in place by the
        // workers: no serial zeroing of fresh buffers on this thread.
        let (data, ()) = crate::aligned::vecs_built_by(storage, xs.map(|x| x.len()), |parts| {
            let pieces: Vec<Mutex<Option<Fresh<i8>>>> = parts
                .into_iter()
                .flat_map(|p| p.chunks(CHUNK))
                .map(|p| Mutex::new(Some(p)))
                .collect();
            debug_assert_eq!(pieces.len(), chunks.len());
            let cursors: Vec<AtomicUsize> = taken.iter().map(|_| AtomicUsize::new(0)).collect();
            rayon::broadcast(|ctx| {
                let workers = taken.len();
                for owner in (0..workers).map(|k| (ctx.index() + k) % workers) {
                    let list = &taken[owner].0;
                    while let Some(&i) = list.get(cursors[owner].fetch_add(1, Ordering::Relaxed)) {
                        let piece = pieces[i].lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some(piece) = piece {
                            let (t, c) = chunks[i];
                            quantize_with_scale(c, scales[t], piece.zeroed());
                        }
                    }
                }
            });
        });
        let mut data = data.into_iter();
        Ok(std::array::from_fn(|t| QTensor {
            data: data.next().expect("one buffer per tensor"),
            scale: scales[t],
        }))
    }

    /// Wraps int8 data a caller already holds. The scale must be finite and non-negative.
    pub fn from_parts(data: Vec<i8>, scale: f32) -> Result<Self> {
        if !scale.is_finite() || scale < 0.0 {
            return Err(Error::Param(format!(
                "quantization scale must be finite and >= 0, got {scale}"
            )));
        }
        Ok(QTensor { data, scale })
    }

    pub fn dequantize(&self) -> Vec<f32> {
        self.data.iter().map(|&q| q as f32 * self.scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tensor_is_valid() {
        let (q, s) = quantize_symmetric(&[0.0; 7]).unwrap();
        assert_eq!(s, 0.0);
        assert!(q.iter().all(|&v| v == 0));
    }

    #[test]
    fn max_maps_to_127_and_ties_go_to_even() {
        let (q, s) = quantize_symmetric(&[-2.54, 2.54, 0.01, 0.03, -0.05]).unwrap();
        assert_eq!(s, 2.54f32 / 127.0);
        assert_eq!(q[0], -127);
        assert_eq!(q[1], 127);
        // 0.01 / 0.02 = 0.5 -> 0 (even), 0.03 / 0.02 = 1.5 -> 2, -0.05/0.02 = -2.5 -> -2
        let expect: Vec<i8> = [0.01f32, 0.03, -0.05]
            .iter()
            .map(|&v| (v / s).round_ties_even() as i8)
            .collect();
        assert_eq!(&q[2..], &expect[..]);
    }

    #[test]
    fn ties_to_even_exactly() {
        // scale 1.0: max 127
        let (q, s) = quantize_symmetric(&[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]).unwrap();
        assert_eq!(s, 1.0);
        assert_eq!(q, vec![127, 0, 2, 2, 0, -2]);
    }

    #[test]
    fn never_produces_minus_128() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.731).sin() * 3.3)
            .collect();
        let (q, _) = quantize_symmetric(&x).unwrap();
        assert!(q.iter().all(|&v| v >= -127));
    }

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        // Every multiple of 1/64 in [-130, 130] (all ties included) and a sweep of odd values.
        for i in -130 * 64..=130 * 64 {
            let v = i as f32 / 64.0;
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
        for i in 0..100_000 {
            let v = (i as f32 * 0.001_273_1).sin() * 127.0;
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn quantizer_equals_spec_formula() {
        let x: Vec<f32> = (0..50_000)
            .map(|i| match i % 5 {
                0 => (i as f32 * 0.731).sin() * 3.3,
                1 => (i % 255) as f32 - 127.0 + 0.5,
                2 => -((i % 300) as f32) * 0.5,
                3 => 1e-30 * i as f32,
                _ => (i as f32).sqrt(),
            })
            .collect();
        let (q, s) = quantize_symmetric(&x).unwrap();
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, max / 127.0);
        for (&v, &got) in x.iter().zip(&q) {
            let want = (v / s).round_ties_even().clamp(-127.0, 127.0) as i8;
            assert_eq!(got, want, "{v}");
        }
        let e = quantize_symmetric(&[0.0, -0.0, 3.0, f32::NAN, 1.0]).unwrap_err();
        assert!(matches!(e, Error::NonFinite { index: 3, .. }), "{e}");
    }

    #[test]
    fn parallel_quantizer_is_identical() {
        let x: Vec<f32> = (0..300_001)
            .map(|i| (i as f32 * 0.37).sin() * 5.0)
            .collect();
        assert_eq!(
            QTensor::quantize_parallel(&x).unwrap(),
            QTensor::quantize(&x).unwrap()
        );
        let mut y = x.clone();
        y[200_000] = f32::NAN;
        assert!(matches!(
            QTensor::quantize_parallel(&y),
            Err(Error::NonFinite { index: 200_000, .. })
        ));
        assert_eq!(QTensor::quantize_parallel(&[]).unwrap().scale, 0.0);
        // Several at once: each as if alone (different lengths and scales, one empty), and a
        // NaN in the second reported at its own index.
        let z: Vec<f32> = x[..70_000].iter().map(|v| v * 0.01).collect();
        let all = QTensor::quantize_all_parallel([&x[..], &z[..], &[]]).unwrap();
        assert_eq!(all[0], QTensor::quantize(&x).unwrap());
        assert_eq!(all[1], QTensor::quantize(&z).unwrap());
        assert_eq!(all[2], QTensor::quantize(&[]).unwrap());
        assert!(matches!(
            QTensor::quantize_all_parallel([&x[..], &y[..]]),
            Err(Error::NonFinite { index: 200_000, .. })
        ));
        // Into dirty storage, larger or smaller than needed, on pools of several sizes (the
        // chunks a worker takes in one pass are the ones it starts with in the next).
        for threads in [1, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let storage = [vec![77i8; 400_000], vec![-5i8; 10], Vec::with_capacity(3)];
            let all = pool
                .install(|| QTensor::quantize_all_parallel_in(storage, [&x[..], &z[..], &[]]))
                .unwrap();
            assert_eq!(all[0], QTensor::quantize(&x).unwrap(), "{threads} threads");
            assert_eq!(all[1], QTensor::quantize(&z).unwrap(), "{threads} threads");
            assert!(all[2].data.is_empty());
        }
        // Called from inside the pool's own tasks, many at once (each pass is a broadcast to
        // every worker, which the callers' workers run while they wait).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let want = QTensor::quantize(&z).unwrap();
        pool.install(|| {
            use rayon::prelude::*;
            (0..12).into_par_iter().for_each(|_| {
                let [a] = QTensor::quantize_all_parallel([&z[..]]).unwrap();
                assert_eq!(a, want);
            })
        });
    }

    #[test]
    fn nan_and_inf_are_errors() {
        assert!(matches!(
            quantize_symmetric(&[1.0, f32::NAN]),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert!(quantize_symmetric(&[f32::INFINITY]).is_err());
        assert!(quantize_symmetric(&[f32::NEG_INFINITY, 0.0]).is_err());
    }

    /// The dispatched passes (NEON on aarch64) against the portable loops, element for element,
    /// on random tensors, exact ties, the clamp edges, zeros, subnormals, NaN and infinities.
    fn check_passes(x: &[f32]) {
        assert_eq!(max_abs_bits(x), max_abs_bits_portable(x), "max of {x:?}");
        for level in crate::simd::levels() {
            assert_eq!(
                max_abs_bits_at(level, x),
                max_abs_bits_portable(x),
                "{level:?}"
            );
        }
        if !x.iter().all(|v| v.is_finite()) {
            // Never quantized (the library rejects them first); NaN payloads would differ.
            return;
        }
        let scale = f32::from_bits(max_abs_bits_portable(x)) / 127.0;
        for s in [scale, scale * 0.5, 1.0, 1e-40, 3e38] {
            if s == 0.0 {
                continue;
            }
            let (mut a, mut b) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            quantize_with_scale(x, s, &mut a);
            quantize_portable(x, s, &mut b);
            assert_eq!(a, b, "scale {s:e} of {x:?}");
            for level in crate::simd::levels() {
                quantize_at(level, x, s, &mut a);
                assert_eq!(a, b, "{level:?}, scale {s:e} of {x:?}");
            }
        }
    }

    #[test]
    fn dispatched_passes_match_portable_ones_on_edges() {
        let mut edge = vec![
            0.0f32,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            126.5,
            -126.5,
            127.0,
            -127.0,
            127.49,
            -127.6,
            1e-45,
            -1e-45,
            1e-38,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        for n in [0, 1, 15, 16, 17, 33, 64] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 - 8.0) * 0.5).collect();
            check_passes(&x);
            check_passes(&edge[..n.min(edge.len())]);
        }
        check_passes(&edge);
        edge.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        // Non-finite values: max_abs_bits must see them wherever they sit.
        for at in 0..edge.len() {
            let mut y = vec![1.0f32; 40];
            y[at % 40] = edge[at];
            check_passes(&y);
        }
    }

    proptest::proptest! {
        #[test]
        fn dispatched_passes_match_portable_ones(
            x in proptest::collection::vec(proptest::num::f32::ANY, 0..100),
            y in proptest::collection::vec(-1000.0f32..1000.0, 0..100),
        ) {
            check_passes(&x);
            check_passes(&y);
        }
    }
}
