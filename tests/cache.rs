//! The KV cache against a scalar reference of its definition (docs/numerics.md, section 7),
//! written here from the text in wide integers: base scales fixed by a head's first non-zero
//! append, one power-of-two exponent per token, scores and P x V terms shifted by them. Every
//! kernel, one and three workers (key splits), decode and multi-token causal steps, GQA, all
//! three IndexSoftmax finishes; plus equality with per-call attention where the definitions
//! meet, truncation, errors and memory.

mod support;

use intattention::lut::{threshold_exact, threshold_paper_sim, Lut};
use intattention::reference::dequantize_output;
use intattention::*;

const C: f32 = 6.6;

/// `clamp(round_half_even(x / s), -127, 127)`, 0 for `s == 0`.
fn q8(x: f32, s: f32) -> i64 {
    if s == 0.0 {
        0
    } else {
        (x / s).round_ties_even().clamp(-127.0, 127.0) as i64
    }
}

/// One head of one sequence as the definition stores it: int8 rows and exponents.
#[derive(Clone, Default)]
struct RefHead {
    base_k: f32,
    /// One base, or one per channel; empty until a non-zero append.
    base_v: Vec<f32>,
    mean: Vec<f32>,
    v_mean: Vec<f32>,
    k: Vec<Vec<i64>>,
    v: Vec<Vec<i64>>,
    ek: Vec<u32>,
    ev: Vec<u32>,
}

/// `max |x| / 127`, 0 while everything is zero or subnormal.
fn base_of(rows: &[Vec<f32>]) -> f32 {
    let m = rows.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    if m < f32::MIN_POSITIVE {
        0.0
    } else {
        m / 127.0
    }
}

/// Section 6's V bases of rows: `M / 127` (`M` the largest magnitude), or per channel
/// `max(m_c, max(M / 64, MIN_POSITIVE)) / 127`; empty while `M` is zero or subnormal.
fn v_bases(rows: &[Vec<f32>], per_channel: bool) -> Vec<f32> {
    let big = rows.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    if big < f32::MIN_POSITIVE {
        return Vec::new();
    }
    if !per_channel {
        return vec![big / 127.0];
    }
    (0..rows[0].len())
        .map(|c| {
            let m_c = rows.iter().fold(0f32, |m, r| m.max(r[c].abs()));
            m_c.max((big / 64.0).max(f32::MIN_POSITIVE)) / 127.0
        })
        .collect()
}

/// The smallest `e` in 0..=15 with `round_half_even(|x[c]| / (base[c] 2^e)) <= 127` for every
/// channel (`base` of one entry serves them all); 0 while the base is not fixed.
fn exponent(x: &[f32], base: &[f32]) -> u32 {
    if base.is_empty() || base == [0.0] {
        return 0;
    }
    let b = |c: usize| if base.len() == 1 { base[0] } else { base[c] };
    (0..=15)
        .find(|&e| {
            x.iter()
                .enumerate()
                .all(|(c, v)| (v.abs() / (b(c) * 2f32.powi(e as i32))).round_ties_even() <= 127.0)
        })
        .unwrap_or(15)
}

/// f64 sums in blocks of 256 rows, added in order, divided by the row count.
fn block_mean(rows: &[Vec<f32>]) -> Vec<f32> {
    let d = rows[0].len();
    let mut total = vec![0f64; d];
    for block in rows.chunks(256) {
        let mut s = vec![0f64; d];
        for row in block {
            for (a, &x) in s.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        for (t, x) in total.iter_mut().zip(s) {
            *t += x;
        }
    }
    total
        .iter()
        .map(|&t| (t / rows.len() as f64) as f32)
        .collect()
}

fn minus(rows: &[Vec<f32>], mean: &[f32]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            if mean.is_empty() {
                r.clone()
            } else {
                r.iter().zip(mean).map(|(x, m)| x - m).collect()
            }
        })
        .collect()
}

impl RefHead {
    fn append(&mut self, k: &[Vec<f32>], v: &[Vec<f32>], quant: Quantization) {
        if self.k.is_empty() {
            if quant.smooth_k {
                self.mean = block_mean(k);
            }
            if quant.smooth_v {
                self.v_mean = block_mean(v);
            }
        }
        let k = minus(k, &self.mean);
        let v = minus(v, &self.v_mean);
        if self.base_k == 0.0 {
            self.base_k = base_of(&k);
        }
        if self.base_v.is_empty() {
            self.base_v = v_bases(&v, quant.v_per_channel);
        }
        for r in &k {
            let e = exponent(r, &[self.base_k]);
            let s = self.base_k * 2f32.powi(e as i32);
            self.k.push(r.iter().map(|&x| q8(x, s)).collect());
            self.ek.push(e);
        }
        for r in &v {
            let e = exponent(r, &self.base_v);
            let s = |c: usize| match self.base_v.len() {
                0 => 0.0,
                1 => self.base_v[0] * 2f32.powi(e as i32),
                _ => self.base_v[c] * 2f32.powi(e as i32),
            };
            self.v
                .push(r.iter().enumerate().map(|(c, &x)| q8(x, s(c))).collect());
            self.ev.push(e);
        }
    }

    /// The output scale of channel `c` (0 while the base is not fixed).
    fn v_scale(&self, c: usize) -> f32 {
        match self.base_v.len() {
            0 => 0.0,
            1 => self.base_v[0],
            _ => self.base_v[c],
        }
    }
}

/// IntAttention of the query rows `q` (already int8, row `i` with scale `s_q[i]`) over a
/// reference head,
/// query `i` seeing keys `0..valid(i)`: the contract's IndexSoftmax on shifted scores.
fn ref_attention(
    head: &RefHead,
    q: &[Vec<i64>],
    s_q: &[f32],
    valid: impl Fn(usize) -> usize,
    variant: SoftmaxVariant,
    d: usize,
) -> Vec<f32> {
    let lut = Lut::new(5, C).unwrap();
    let table = lut.entries();
    let n1 = (table.len() - 1) as i64;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = Vec::new();
    for (i, qi) in q.iter().enumerate() {
        let t = match variant {
            SoftmaxVariant::PaperSim => threshold_paper_sim(C, s_q[i], head.base_k, scale),
            _ => threshold_exact(C, s_q[i], head.base_k, scale),
        }
        .unwrap() as i64;
        let n = valid(i);
        let s: Vec<i64> = (0..n)
            .map(|j| qi.iter().zip(&head.k[j]).map(|(a, b)| a * b).sum::<i64>() << head.ek[j])
            .collect();
        let mut p = vec![0i64; n];
        let mut sum = 0i64;
        if let Some(&m) = s.iter().max() {
            for j in 0..n {
                let dd = (m - s[j]).min(t);
                let idx = match variant {
                    SoftmaxVariant::PaperSim => ((dd * n1) as f32 / t as f32).trunc() as i64,
                    _ => (2 * dd * n1 + t) / (2 * t),
                };
                p[j] = table[idx.min(n1) as usize] as i64;
                sum += p[j];
            }
        }
        let div = match variant {
            SoftmaxVariant::Deferred => sum,
            SoftmaxVariant::Normalized => {
                for x in p.iter_mut() {
                    *x = if sum == 0 {
                        0
                    } else {
                        (510 * *x + sum) / (2 * sum)
                    };
                }
                255
            }
            _ => {
                for x in p.iter_mut() {
                    *x = if sum == 0 {
                        0
                    } else {
                        ((*x * 255) as f32 / sum as f32).round_ties_even() as i64
                    };
                }
                255
            }
        };
        for c in 0..d {
            let o32: i128 = (0..n)
                .map(|j| (p[j] as i128 * head.v[j][c] as i128) << head.ev[j])
                .sum();
            let div = if sum == 0 { 0 } else { div as u32 };
            let o = dequantize_output(o32 as i64, head.v_scale(c), div);
            // Smoothed V: the mean comes back where the weights sum to something.
            out.push(if head.v_mean.is_empty() || div == 0 {
                o
            } else {
                o + head.v_mean[c]
            });
        }
    }
    out
}

/// Data whose magnitude grows with the token: later tokens need exponents (3 x growth per
/// 100 tokens, so a 700-token sequence spans several powers of two).
fn token(seed: u64, j: usize, d: usize, grow: bool) -> Vec<f32> {
    let amp = if grow {
        3f32.powf(j as f32 / 100.0)
    } else {
        1.0
    };
    support::data(seed.wrapping_mul(1000) + j as u64, d)
        .into_iter()
        .map(|x| x * amp + 0.3)
        .collect()
}

struct Case {
    lens: Vec<usize>,
    heads: usize,
    kv_heads: usize,
    d: usize,
    lq: usize,
    grow: bool,
    quant: Quantization,
}

/// Builds the cache (in appends of uneven sizes) and the reference, runs `lq` causal queries
/// per sequence, and compares bit for bit.
fn check(case: &Case, kernel: Kernel, threads: usize, variant: SoftmaxVariant) {
    let (g, d, h) = (case.kv_heads, case.d, case.heads);
    let attn = Attention::new(Pipeline::IntAttention)
        .with_variant(variant)
        .with_causal(true)
        .with_kernel(kernel)
        .with_executor(support::threads(threads))
        .with_table_bits(5)
        .with_quantization(case.quant);
    let mut cache = KvCache::new(&attn, case.lens.len(), g, d).unwrap();
    let mut refs = vec![vec![RefHead::default(); g]; case.lens.len()];
    for (b, &len) in case.lens.iter().enumerate() {
        // Appends of 37, then 300, then one token at a time past 400.
        let mut at = 0;
        while at < len {
            let n = match at {
                0 => 37.min(len),
                _ if at < 400 => 300.min(len - at),
                _ => 1,
            };
            let mut kf = Vec::new();
            let mut vf = Vec::new();
            for (gg, head) in refs[b].iter_mut().enumerate() {
                let k: Vec<Vec<f32>> = (at..at + n)
                    .map(|j| token(b as u64 * 100 + gg as u64, j, d, case.grow))
                    .collect();
                let v: Vec<Vec<f32>> = (at..at + n)
                    .map(|j| token(b as u64 * 100 + gg as u64 + 50, j, d, case.grow))
                    .collect();
                head.append(&k, &v, case.quant);
                kf.extend(k.concat());
                vf.extend(v.concat());
            }
            cache
                .append(
                    b,
                    TensorView::new(&kf, [1, g, n, d]).unwrap(),
                    TensorView::new(&vf, [1, g, n, d]).unwrap(),
                )
                .unwrap();
            at += n;
        }
    }
    assert_eq!(cache.lens(), case.lens);
    let q = support::data(7, case.lens.len() * h * case.lq * d);
    let max = |x: &[f32]| x.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
    let s_tensor = max(&q);
    let mut got = vec![f32::NAN; q.len()];
    let qv = TensorView::new(&q, [case.lens.len(), h, case.lq, d]).unwrap();
    attn.run_cached(&mut Workspace::new(), &cache, qv, &mut got)
        .unwrap();
    for (b, &len) in case.lens.iter().enumerate() {
        for hh in 0..h {
            let at = (b * h + hh) * case.lq * d;
            let head_q = &q[at..at + case.lq * d];
            let s_q: Vec<f32> = head_q
                .chunks(d)
                .map(|r| match case.quant.q {
                    Granularity::PerRow => max(r),
                    Granularity::PerHead => max(head_q),
                    _ => s_tensor,
                })
                .collect();
            let rows: Vec<Vec<i64>> = head_q
                .chunks(d)
                .zip(&s_q)
                .map(|(r, &s)| r.iter().map(|&x| q8(x, s)).collect())
                .collect();
            let head = &refs[b][hh / (h / g)];
            let want = ref_attention(head, &rows, &s_q, |i| len - case.lq + i + 1, variant, d);
            for (i, (w, gt)) in want.iter().zip(&got[at..at + case.lq * d]).enumerate() {
                assert!(
                    w.to_bits() == gt.to_bits(),
                    "{} {variant} {threads} threads seq {b} head {hh} entry {i}: got {gt:e}, \
                     want {w:e} (lens {:?}, grow {}, {:?})",
                    kernel.name(),
                    case.lens,
                    case.grow,
                    case.quant
                );
            }
        }
    }
}

#[test]
fn cache_equals_its_scalar_reference() {
    let cases = [
        // Decode: one token per sequence, GQA 4:1, exponents from growing magnitudes.
        Case {
            lens: vec![700, 257, 1],
            heads: 8,
            kv_heads: 2,
            d: 32,
            lq: 1,
            grow: true,
            quant: Quantization::PER_TENSOR,
        },
        // Several causal queries over a cache, smoothed keys, no exponents.
        Case {
            lens: vec![520, 300],
            heads: 2,
            kv_heads: 2,
            d: 64,
            lq: 5,
            grow: false,
            quant: Quantization::PER_TENSOR.with_smooth_k(true),
        },
        // Both, odd sizes.
        Case {
            lens: vec![613],
            heads: 3,
            kv_heads: 1,
            d: 7,
            lq: 3,
            grow: true,
            quant: Quantization::PER_TENSOR.with_smooth_k(true),
        },
        // The fine scheme: per-channel V bases with smoothed V, per-row Q, exponents.
        Case {
            lens: vec![450, 3],
            heads: 4,
            kv_heads: 2,
            d: 16,
            lq: 2,
            grow: true,
            quant: Quantization::FINE,
        },
        // Per-channel V without smoothing, smoothed K, decode.
        Case {
            lens: vec![401],
            heads: 2,
            kv_heads: 1,
            d: 9,
            lq: 1,
            grow: true,
            quant: Quantization::FINE
                .with_smooth_v(false)
                .with_smooth_k(true)
                .with_q(Granularity::PerTensor),
        },
    ];
    for kernel in Kernel::available() {
        for case in &cases {
            for threads in [1, 3] {
                for variant in SoftmaxVariant::ALL {
                    check(case, kernel, threads, variant);
                }
            }
        }
    }
}

/// Where the definitions meet (one prefill append, so every exponent is 0 and the base scales
/// are the per-head scales of a per-call run), the cache gives the per-call bits in the integer
/// pipelines with per-head K/V scales; the float pipelines agree to their precision.
#[test]
fn one_prefill_append_equals_per_call_attention() {
    let (b, h, g, d) = (2, 8, 2, 32);
    for lq in [1, 6] {
        let len = 300;
        let shape = support::shape(b, h, g, lq, len, d);
        let q = support::data(1, shape.q_elems());
        let k = support::data(2, shape.kv_elems());
        let v = support::data(3, shape.kv_elems());
        for pipeline in Pipeline::ALL {
            let per_head = Quantization::PER_TENSOR.with_kv(Granularity::PerHead);
            for quant in [
                per_head,
                per_head.with_smooth_k(true),
                Quantization::FINE,
                Quantization::FINE.with_smooth_k(true).with_smooth_v(false),
            ] {
                let attn = Attention::new(pipeline)
                    .with_causal(true)
                    .with_quantization(quant);
                let want = attn.run(&shape, &q, &k, &v).unwrap();
                let mut cache = KvCache::new(&attn, b, g, d).unwrap();
                for s in 0..b {
                    let n = g * len * d;
                    cache
                        .append(
                            s,
                            TensorView::new(&k[s * n..(s + 1) * n], [1, g, len, d]).unwrap(),
                            TensorView::new(&v[s * n..(s + 1) * n], [1, g, len, d]).unwrap(),
                        )
                        .unwrap();
                }
                let mut got = vec![0f32; want.len()];
                let qv = TensorView::new(&q, [b, h, lq, d]).unwrap();
                attn.run_cached(&mut Workspace::new(), &cache, qv, &mut got)
                    .unwrap();
                if pipeline.is_integer() {
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, w)| a.to_bits() == w.to_bits()),
                        "{pipeline} lq {lq} {quant:?}"
                    );
                } else {
                    // Float pages sum P x V page by page: the same products, another order.
                    let tol = if pipeline == Pipeline::Fp16 {
                        2e-3
                    } else {
                        1e-6
                    };
                    for (a, w) in got.iter().zip(&want) {
                        assert!((a - w).abs() <= tol, "{pipeline} lq {lq}: {a} vs {w}");
                    }
                }
            }
        }
    }
}

/// Truncating drops tokens as if they had never been appended (the scales stay those of the
/// first append), and appending the same tokens again gives the same bits; truncating to 0
/// resets the sequence.
#[test]
fn truncate_rolls_back_and_reset_empties() {
    let (g, d) = (2, 16);
    let attn = Attention::new(Pipeline::IntAttention).with_causal(true);
    let tokens = |seed: u64, n: usize| support::data(seed, g * n * d);
    fn view(x: &[f32], n: usize) -> TensorView<'_, f32> {
        TensorView::new(x, [1, 2, n, 16]).unwrap()
    }
    let (k0, v0) = (tokens(1, 300), tokens(2, 300));
    let (k1, v1) = (tokens(3, 5), tokens(4, 5));
    let q = support::data(9, 4 * d);
    let qv = TensorView::new(&q, [1, 4, 1, d]).unwrap();
    let run = |c: &KvCache| {
        let mut o = vec![0f32; 4 * d];
        attn.run_cached(&mut Workspace::new(), c, qv, &mut o)
            .unwrap();
        o
    };
    let mut a = KvCache::new(&attn, 1, g, d).unwrap();
    a.append(0, view(&k0, 300), view(&v0, 300)).unwrap();
    let before = run(&a);
    let bytes = a.bytes();
    a.append(0, view(&k1, 5), view(&v1, 5)).unwrap();
    let after = run(&a);
    assert_ne!(before, after);
    a.truncate(0, 300).unwrap();
    assert_eq!(a.len(0).unwrap(), 300);
    assert_eq!(run(&a), before);
    assert_eq!(
        a.bytes(),
        bytes,
        "the page past 300 tokens is kept only while used"
    );
    a.append(0, view(&k1, 5), view(&v1, 5)).unwrap();
    assert_eq!(run(&a), after);
    // Past a page boundary and back.
    a.truncate(0, 200).unwrap();
    assert!(a.bytes() < bytes);
    assert!(a.truncate(0, 201).is_err());
    a.reset(0).unwrap();
    assert_eq!(a.len(0).unwrap(), 0);
    assert!(a.is_empty());
    a.append(0, view(&k0, 300), view(&v0, 300)).unwrap();
    assert_eq!(run(&a), before);
}

#[test]
fn cache_errors_leave_it_unchanged() {
    let (g, d) = (2, 8);
    let attn = Attention::new(Pipeline::IntAttention).with_causal(true);
    let mut cache = KvCache::new(&attn, 2, g, d).unwrap();
    let x = support::data(1, g * 4 * d);
    fn view(x: &[f32]) -> TensorView<'_, f32> {
        TensorView::new(x, [1, 2, 4, 8]).unwrap()
    }
    cache.append(0, view(&x), view(&x)).unwrap();
    // Out of range, wrong shapes, NaN: errors, nothing appended.
    assert!(matches!(
        cache.append(2, view(&x), view(&x)),
        Err(Error::SequenceOutOfRange {
            seq: 2,
            sequences: 2
        })
    ));
    let bad = support::data(1, 3 * 4 * d);
    assert!(cache
        .append(0, TensorView::new(&bad, [1, 3, 4, d]).unwrap(), view(&x))
        .is_err());
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    assert!(matches!(
        cache.append(1, view(&x), view(&nan)),
        Err(Error::NonFinite {
            tensor: "V",
            index: 5,
            ..
        })
    ));
    assert_eq!(cache.lens(), vec![4, 0]);
    // Queries: a causal step needs as many cached tokens as queries, in every sequence.
    let q = support::data(2, 2 * 4 * 3 * d);
    let qv = TensorView::new(&q, [2, 4, 3, d]).unwrap();
    let mut out = vec![7f32; q.len()];
    let e = attn.run_cached(&mut Workspace::new(), &cache, qv, &mut out);
    assert!(
        matches!(e, Err(Error::CacheTooShort { seq: 1, .. })),
        "{e:?}"
    );
    assert!(out.iter().all(|&x| x == 7.0), "checked before any write");
    // Another pipeline, another kernel family, a wrong batch or head dimension.
    let fp32 = Attention::new(Pipeline::Fp32);
    let q1 = support::data(2, 2 * 4 * d);
    let q1v = TensorView::new(&q1, [2, 4, 1, d]).unwrap();
    let mut o1 = vec![0f32; q1.len()];
    assert!(matches!(
        fp32.run_cached(&mut Workspace::new(), &cache, q1v, &mut o1),
        Err(Error::CacheMismatch {
            what: "pipeline",
            ..
        })
    ));
    if let Some(other) = Kernel::available().into_iter().find(|k| {
        k.name() != attn.kernel().name() && k.name() != "avx512vnni" && k.name() != "avx512vbmi"
    }) {
        let e =
            attn.clone()
                .with_kernel(other)
                .run_cached(&mut Workspace::new(), &cache, q1v, &mut o1);
        assert!(
            matches!(e, Err(Error::CacheMismatch { what: "kernel", .. })),
            "{e:?}"
        );
    }
    let qw = support::data(2, 3 * 4 * d);
    let qwv = TensorView::new(&qw, [3, 4, 1, d]).unwrap();
    let mut ow = vec![0f32; qw.len()];
    assert!(attn
        .run_cached(&mut Workspace::new(), &cache, qwv, &mut ow)
        .is_err());
    assert!(cache.truncate(5, 0).is_err());
    assert!(KvCache::new(&attn, 0, g, d).is_err());
}

/// A 32k-token cache of 8 KV heads x d = 128 (K and V) holds 64 MiB of int8 payload; the
/// pages, exponents and padding may add at most 3 % (1-byte layouts; the avx2 kernel's i16
/// layout doubles the payload by design).
#[test]
fn memory_of_a_32k_token_cache() {
    let (g, d, len) = (8, 128, 32 * 1024);
    for kernel in Kernel::available() {
        if kernel.name() == "avx2" {
            continue;
        }
        let attn = Attention::new(Pipeline::IntAttention).with_kernel(kernel);
        let mut cache = KvCache::new(&attn, 1, g, d).unwrap();
        let chunk = 4096;
        let x = support::data(1, g * chunk * d);
        for _ in 0..len / chunk {
            let v = TensorView::new(&x, [1, g, chunk, d]).unwrap();
            cache.append(0, v, v).unwrap();
        }
        let payload = 2 * g * len * d;
        let bytes = cache.bytes();
        assert!(
            bytes as f64 <= payload as f64 * 1.03,
            "{}: {bytes} bytes for a {payload}-byte payload",
            kernel.name()
        );
    }
}

/// The int8 pipeline (float softmax) over a cache with exponents stays within its precision
/// of float64 attention (its softmax is not bit-defined, so no exact reference applies).
#[test]
fn int8_pipeline_over_a_cache_with_exponents_is_close_to_float() {
    let (g, h, d, len) = (1, 2, 16, 500);
    let attn = Attention::new(Pipeline::Int8).with_causal(true);
    let mut cache = KvCache::new(&attn, 1, g, d).unwrap();
    let keys: Vec<Vec<f32>> = (0..len).map(|j| token(1, j, d, true)).collect();
    let vals: Vec<Vec<f32>> = (0..len).map(|j| token(2, j, d, true)).collect();
    for j in 0..len {
        let k = TensorView::new(&keys[j], [1, 1, 1, d]).unwrap();
        let v = TensorView::new(&vals[j], [1, 1, 1, d]).unwrap();
        cache.append(0, k, v).unwrap();
    }
    let q: Vec<f32> = support::data(3, h * d).iter().map(|x| x * 0.05).collect();
    let mut out = vec![0f32; h * d];
    attn.run_cached(
        &mut Workspace::new(),
        &cache,
        TensorView::new(&q, [1, h, 1, d]).unwrap(),
        &mut out,
    )
    .unwrap();
    for hh in 0..h {
        let qh = &q[hh * d..(hh + 1) * d];
        let logits: Vec<f64> = keys
            .iter()
            .map(|k| {
                qh.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        let sum: f64 = w.iter().sum();
        for c in 0..d {
            let want: f64 = (0..len).map(|j| w[j] * vals[j][c] as f64).sum::<f64>() / sum;
            let got = out[hh * d + c] as f64;
            let vmax = vals.iter().map(|r| r[c].abs()).fold(0f32, f32::max) as f64;
            assert!(
                (got - want).abs() <= 0.05 * vmax,
                "head {hh} col {c}: {got} vs {want}"
            );
        }
    }
}
