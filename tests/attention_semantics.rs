//! Attention semantics through the public pipelines: masks (causal with Lq != Lk, key padding),
//! grouped-query head mapping, fully masked rows, bad input, and the IntAttention output checked
//! bit for bit against two independent computations written here: one in plain i64 arithmetic
//! straight from docs/numerics.md sections 2-4, one composed from the public operations (gemm_s8s8_nt,
//! index_softmax, gemm_u8s8). Every kernel this CPU can run and every schedule is checked.

mod support;

use intattention::kernels::MAX_K_U8S8;
use intattention::lut::{threshold_exact, threshold_paper_sim, Lut};
use intattention::*;
use proptest::prelude::*;

const ALL_SCHEDULES: [Schedule; 3] = [Schedule::Unfused, Schedule::Fused, Schedule::Auto];

// ---------------------------------------------------------------------------------------------
// Independent pieces
// ---------------------------------------------------------------------------------------------

/// `x` as `m 2^e` with an integer mantissa (finite, non-negative).
fn parts(x: f32) -> (u128, i32) {
    let b = x.to_bits();
    let exp = ((b >> 23) & 0xff) as i32;
    if exp == 0 {
        ((b & 0x7f_ffff) as u128, -149)
    } else {
        (((b & 0x7f_ffff) | 0x80_0000) as u128, exp - 150)
    }
}

/// docs/numerics.md section 4's `O32 s_v / div` as the f32 nearest to the exact value (ties to even), by
/// exact integer division; `div == 0` (fully masked row) gives 0.
fn spec_output(o32: i64, s_v: f32, div: u64) -> f32 {
    if div == 0 || o32 == 0 || s_v == 0.0 {
        return 0.0;
    }
    let (m, e) = parts(s_v);
    let (num, den) = (o32.unsigned_abs() as u128 * m, div as u128);
    // k = floor(log2(num / den)), so the value lies in [2^(k+e), 2^(k+e+1)).
    let bl = |x: u128| 128 - x.leading_zeros() as i32;
    let mut k = bl(num) - bl(den);
    let below = |k: i32| {
        if k >= 0 {
            num < den << k
        } else {
            num << -k < den
        }
    };
    if below(k) {
        k -= 1;
    }
    // The result's ulp: 24 significant bits, but never below f32's smallest subnormal.
    let ulp = (k + e - 23).max(-149);
    // q = num 2^(e - ulp) / den, rounded to nearest even.
    let sh = e - ulp;
    let (n2, d2) = if sh >= 0 {
        (num << sh, den)
    } else {
        (num, den << -sh)
    };
    let (mut q, r) = (n2 / d2, n2 % d2);
    if 2 * r > d2 || (2 * r == d2 && q % 2 == 1) {
        q += 1;
    }
    let mag = (q as f64 * 2f64.powi(ulp)) as f32;
    if o32 < 0 {
        -mag
    } else {
        mag
    }
}

/// Whether query `i` sees key `j`: docs/numerics.md section 2's causal rule and key padding.
fn visible(causal: bool, key_len: usize, lq: usize, lk: usize, i: usize, j: usize) -> bool {
    let causal_masked = causal && (j as i64) > i as i64 + (lk as i64 - lq as i64);
    j < key_len && !causal_masked
}

/// The configuration of one check.
#[derive(Clone, Debug)]
struct Case {
    shape: AttnShape,
    causal: bool,
    key_lens: Option<Vec<usize>>,
    variant: SoftmaxVariant,
    scale: Option<f32>,
}

impl Case {
    /// The contract's configuration (the paper's settings: b = 5, per-tensor scales).
    fn attention(&self, pipeline: Pipeline) -> Attention {
        let mut a = Attention::new(pipeline)
            .with_variant(self.variant)
            .with_paper_settings()
            .with_causal(self.causal);
        if let Some(l) = &self.key_lens {
            a = a.with_key_lens(l.clone());
        }
        if let Some(s) = self.scale {
            a = a.with_scale(s);
        }
        a
    }

    fn key_len(&self, b: usize) -> usize {
        self.key_lens.as_ref().map_or(self.shape.kv_len, |l| l[b])
    }

    fn softmax_scale(&self) -> f32 {
        self.scale
            .unwrap_or(1.0 / (self.shape.head_dim as f32).sqrt())
    }

    /// The IndexSoftmax threshold for these scales (the variant's rule).
    fn threshold(&self, s_q: f32, s_k: f32) -> i32 {
        let s = self.softmax_scale();
        match self.variant {
            SoftmaxVariant::PaperSim => threshold_paper_sim(6.6, s_q, s_k, s).unwrap(),
            _ => threshold_exact(6.6, s_q, s_k, s).unwrap(),
        }
    }
}

/// IntAttention in plain i64 arithmetic, straight from docs/numerics.md sections 2-4 (Normalized and
/// Deferred). Query head `h` reads key/value head `h / (heads / kv_heads)`.
fn direct_i64(c: &Case, q: &QTensor, k: &QTensor, v: &QTensor) -> Vec<f32> {
    let s = c.shape;
    let (lq, lk, d) = (s.q_len, s.kv_len, s.head_dim);
    let t = c.threshold(q.scale(), k.scale()) as i64;
    let lut = Lut::new(5, 6.6).unwrap();
    let lut = lut.entries();
    let n1 = (lut.len() - 1) as i64;
    let mut out = vec![f32::NAN; s.q_elems()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qb = ((b * s.heads + h) * lq) * d;
            let kb = ((b * s.kv_heads + kvh) * lk) * d;
            for i in 0..lq {
                let keep: Vec<bool> = (0..lk)
                    .map(|j| visible(c.causal, c.key_len(b), lq, lk, i, j))
                    .collect();
                let scores: Vec<i64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|x| {
                                q.data()[qb + i * d + x] as i64 * k.data()[kb + j * d + x] as i64
                            })
                            .sum()
                    })
                    .collect();
                let m = (0..lk).filter(|&j| keep[j]).map(|j| scores[j]).max();
                let mut e = vec![0i64; lk];
                if let Some(m) = m {
                    for j in (0..lk).filter(|&j| keep[j]) {
                        let dd = (m - scores[j]).min(t);
                        e[j] = lut[((2 * dd * n1 + t) / (2 * t)) as usize] as i64;
                    }
                }
                let sum: i64 = e.iter().sum();
                let (p, div): (Vec<i64>, i64) = match c.variant {
                    SoftmaxVariant::Normalized => (
                        e.iter()
                            .map(|&x| {
                                if sum == 0 {
                                    0
                                } else {
                                    (510 * x + sum) / (2 * sum)
                                }
                            })
                            .collect(),
                        255,
                    ),
                    SoftmaxVariant::Deferred => (e, sum),
                    _ => unreachable!("PaperSim is covered by the composed reference"),
                };
                for x in 0..d {
                    let o32: i64 = (0..lk)
                        .map(|j| p[j] * v.data()[kb + j * d + x] as i64)
                        .sum();
                    let div = if sum == 0 { 0 } else { div as u64 };
                    out[qb + i * d + x] = spec_output(o32, v.scale(), div);
                }
            }
        }
    }
    out
}

/// IntAttention composed from the public operations, every variant: scores by
/// `gemm_s8s8_nt`, the mask as a dense keep-matrix from the contract's rule, `index_softmax`,
/// P x V by `gemm_u8s8`, then docs/numerics.md section 4's output formula.
fn composed(c: &Case, q: &QTensor, k: &QTensor, v: &QTensor) -> Vec<f32> {
    let s = c.shape;
    let (lq, lk, d) = (s.q_len, s.kv_len, s.head_dim);
    assert!(lk <= MAX_K_U8S8);
    let params = IndexSoftmaxParams::new(c.threshold(q.scale(), k.scale()), c.variant).unwrap();
    let mut out = vec![f32::NAN; s.q_elems()];
    for b in 0..s.batch {
        let keep: Vec<bool> = (0..lq * lk)
            .map(|x| visible(c.causal, c.key_len(b), lq, lk, x / lk, x % lk))
            .collect();
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qh = &q.data()[(b * s.heads + h) * lq * d..][..lq * d];
            let kh = &k.data()[(b * s.kv_heads + kvh) * lk * d..][..lk * d];
            let vh = &v.data()[(b * s.kv_heads + kvh) * lk * d..][..lk * d];
            let mut scores = vec![0i32; lq * lk];
            intattention::ops::gemm::gemm_s8s8_nt(qh, kh, lq, lk, d, &mut scores).unwrap();
            let mut p = vec![0u8; lq * lk];
            let sums =
                index_softmax(&scores, lq, lk, &params, ScoreMask::Dense(&keep), &mut p).unwrap();
            let mut o32 = vec![0i32; lq * d];
            intattention::ops::gemm::gemm_u8s8(&p, vh, lq, d, lk, &mut o32).unwrap();
            let o = &mut out[(b * s.heads + h) * lq * d..][..lq * d];
            for i in 0..lq {
                let row_sum = sums.as_slice()[i] as u64;
                let div = match c.variant {
                    SoftmaxVariant::Deferred => row_sum,
                    _ if row_sum == 0 => 0,
                    _ => 255,
                };
                for x in 0..d {
                    o[i * d + x] = spec_output(o32[i * d + x] as i64, v.scale(), div);
                }
            }
        }
    }
    out
}

/// Float attention in f64 with the same masks (rows with no visible key give 0).
fn float_reference(c: &Case, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let s = c.shape;
    let (lq, lk, d) = (s.q_len, s.kv_len, s.head_dim);
    let scale = c.softmax_scale() as f64;
    let mut out = vec![0f64; s.q_elems()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let kvh = h / (s.heads / s.kv_heads);
            let qb = (b * s.heads + h) * lq * d;
            let kb = (b * s.kv_heads + kvh) * lk * d;
            for i in 0..lq {
                let keep: Vec<usize> = (0..lk)
                    .filter(|&j| visible(c.causal, c.key_len(b), lq, lk, i, j))
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                let logits: Vec<f64> = keep
                    .iter()
                    .map(|&j| {
                        scale
                            * (0..d)
                                .map(|x| q[qb + i * d + x] as f64 * k[kb + j * d + x] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for x in 0..d {
                    out[qb + i * d + x] = keep
                        .iter()
                        .zip(&w)
                        .map(|(&j, &wj)| wj * v[kb + j * d + x] as f64)
                        .sum::<f64>()
                        / total;
                }
            }
        }
    }
    out
}

/// Deterministic data in [-1, 1).
fn data(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn qdata(seed: u64, n: usize) -> Vec<i8> {
    data(seed, n)
        .iter()
        .map(|&x| (x * 128.0).floor().clamp(-128.0, 127.0) as i8)
        .collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(!g.is_nan(), "{what}: NaN at {i}");
        assert!(g == w, "{what}: index {i}: got {g:e}, want {w:e}");
    }
}

/// Runs the integer pipeline on every kernel, schedule and two thread counts; all must give
/// exactly `want`.
fn check_int_everywhere(c: &Case, q: &QTensor, k: &QTensor, v: &QTensor, want: &[f32]) {
    for kernel in Kernel::available() {
        for schedule in ALL_SCHEDULES {
            for threads in [1, 2] {
                let a = c
                    .attention(Pipeline::IntAttention)
                    .with_schedule(schedule)
                    .with_executor(support::threads(threads));
                let got = a
                    .with_kernel(kernel)
                    .run_quantized(&c.shape, q, k, v)
                    .unwrap();
                let what = format!(
                    "{} {:?} {} threads, kernel {}: {:?}",
                    c.variant,
                    schedule,
                    threads,
                    kernel.name(),
                    c
                );
                assert_bits_eq(&got, want, &what);
            }
        }
    }
    // The process-wide kernel through the plain entry point.
    let got = c
        .attention(Pipeline::IntAttention)
        .run_quantized(&c.shape, q, k, v)
        .unwrap();
    assert_bits_eq(&got, want, "run_quantized");
}

fn shape(batch: usize, heads: usize, kv_heads: usize, lq: usize, lk: usize, d: usize) -> AttnShape {
    support::shape(batch, heads, kv_heads, lq, lk, d)
}

fn qtensors(s: &AttnShape, seed: u64) -> (QTensor, QTensor, QTensor) {
    // Scales of the kind quantize_symmetric gives, plus -128 which it never gives.
    let mut qd = qdata(seed, s.q_elems());
    let mut kd = qdata(seed + 1, s.kv_elems());
    let mut vd = qdata(seed + 2, s.kv_elems());
    qd[0] = i8::MIN;
    kd[0] = i8::MIN;
    vd[0] = i8::MIN;
    (
        QTensor::from_parts(qd, 0.75 / 127.0).unwrap(),
        QTensor::from_parts(kd, 1.3 / 127.0).unwrap(),
        QTensor::from_parts(vd, 0.9 / 127.0).unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// IntAttention bit for bit
// ---------------------------------------------------------------------------------------------

fn semantic_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for variant in SoftmaxVariant::ALL {
        // Self-attention, causal, GQA 4 -> 2.
        cases.push(Case {
            shape: shape(2, 4, 2, 9, 9, 8),
            causal: true,
            key_lens: None,
            variant,
            scale: None,
        });
        // Cross-attention Lq < Lk with key padding, one batch row fully padded.
        cases.push(Case {
            shape: shape(3, 2, 1, 5, 13, 7),
            causal: false,
            key_lens: Some(vec![13, 0, 4]),
            variant,
            scale: Some(0.2),
        });
        // Causal with Lq > Lk: the first Lq - Lk rows see nothing. Plus padding.
        cases.push(Case {
            shape: shape(2, 3, 3, 7, 4, 5),
            causal: true,
            key_lens: Some(vec![4, 2]),
            variant,
            scale: None,
        });
        // Decode: one query against a long cache, causal (it sees every key).
        cases.push(Case {
            shape: shape(1, 2, 1, 1, 37, 16),
            causal: true,
            key_lens: Some(vec![30]),
            variant,
            scale: None,
        });
        // Odd sizes, head_dim 1.
        cases.push(Case {
            shape: shape(1, 1, 1, 3, 5, 1),
            causal: false,
            key_lens: None,
            variant,
            scale: None,
        });
    }
    cases
}

#[test]
fn intattention_equals_direct_i64_spec_formula_with_minus_128_inputs() {
    for (n, c) in semantic_cases().iter().enumerate() {
        if c.variant == SoftmaxVariant::PaperSim {
            continue;
        }
        let (q, k, v) = qtensors(&c.shape, 100 + n as u64);
        let want = direct_i64(c, &q, &k, &v);
        assert_bits_eq(&composed(c, &q, &k, &v), &want, "composed vs direct");
        check_int_everywhere(c, &q, &k, &v, &want);
    }
}

#[test]
fn intattention_every_variant_equals_the_public_ops_composition() {
    for (n, c) in semantic_cases().iter().enumerate() {
        // Float inputs, quantized by the pipeline; the reference quantizes the same way.
        let qf = data(200 + n as u64, c.shape.q_elems());
        let kf = data(300 + n as u64, c.shape.kv_elems());
        let vf = data(400 + n as u64, c.shape.kv_elems());
        let (q, k, v) = (
            QTensor::quantize(&qf).unwrap(),
            QTensor::quantize(&kf).unwrap(),
            QTensor::quantize(&vf).unwrap(),
        );
        let want = composed(c, &q, &k, &v);
        for schedule in ALL_SCHEDULES {
            let got = c
                .attention(Pipeline::IntAttention)
                .with_schedule(schedule)
                .run(&c.shape, &qf, &kf, &vf)
                .unwrap();
            assert_bits_eq(&got, &want, &format!("run {schedule:?} {c:?}"));
        }
        check_int_everywhere(c, &q, &k, &v, &want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn intattention_random_configurations_match_the_spec(
        batch in 1usize..3,
        kv_heads in 1usize..3,
        group in 1usize..3,
        lq in 1usize..12,
        lk in 1usize..20,
        d in prop_oneof![1usize..6, Just(16), Just(17), Just(33)],
        causal in any::<bool>(),
        pad in prop::collection::vec(0usize..25, 2),
        variant in prop_oneof![Just(SoftmaxVariant::Normalized), Just(SoftmaxVariant::Deferred)],
        seed in any::<u64>(),
    ) {
        let c = Case {
            shape: shape(batch, kv_heads * group, kv_heads, lq, lk, d),
            causal,
            key_lens: Some(pad[..batch].iter().map(|&l| l.min(lk)).collect()),
            variant,
            scale: None,
        };
        let (q, k, v) = qtensors(&c.shape, seed);
        let want = direct_i64(&c, &q, &k, &v);
        let got = c.attention(Pipeline::IntAttention).run_quantized(&c.shape, &q, &k, &v).unwrap();
        prop_assert!(got.iter().zip(&want).all(|(a, b)| a == b), "{:?}", c);
        let fused = c.attention(Pipeline::IntAttention).with_schedule(Schedule::Fused)
            .run_quantized(&c.shape, &q, &k, &v).unwrap();
        prop_assert!(fused.iter().zip(&want).all(|(a, b)| a == b), "fused {:?}", c);
    }
}

#[test]
fn output_rounding_is_correct_on_halfway_cases() {
    // s_v = f32(0.9) / f32(127) = 3804597 / 2^29, and 3804597 = 3 * 1268199.
    // Three keys with equal scores: Normalized P = round_half_up(255 / 3) = 85 each, and a V
    // column summing to 100 gives O32 = 8500, so O = 8500 s_v / 255 = (100 / 3) s_v
    // = 100 * 1268199 / 2^29 = 31704975 / 2^27. 31704975 is odd and needs 25 bits: the value
    // lies exactly halfway between two f32 (0x3e71e3c7, 0x3e71e3c8) and must round to the even
    // one. Evaluating 8500 * (s_v / 255) in f64 lands on the odd one.
    // Deferred gives the same value: P = 255, sum = 765, O32 = 25500, 25500 s_v / 765.
    let s_v = 0.9f32 / 127.0;
    assert_eq!(s_v.to_bits(), 0x3be8_36d4);
    let shape = shape(1, 1, 1, 1, 3, 2);
    let q = QTensor::from_parts(vec![0, 0], 0.01).unwrap();
    let k = QTensor::from_parts(vec![1, 2, 3, 4, 5, 6], 0.01).unwrap();
    let v = QTensor::from_parts(vec![33, -33, 33, -33, 34, -34], s_v).unwrap();
    for variant in [SoftmaxVariant::Normalized, SoftmaxVariant::Deferred] {
        let c = Case {
            shape,
            causal: false,
            key_lens: None,
            variant,
            scale: None,
        };
        let want = direct_i64(&c, &q, &k, &v);
        assert_eq!(want[0].to_bits(), 0x3e71_e3c8, "{variant}");
        assert_eq!(want[1].to_bits(), 0xbe71_e3c8, "{variant}");
        check_int_everywhere(&c, &q, &k, &v, &want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn dequantize_output_is_the_correctly_rounded_quotient(
        o32 in prop_oneof![
            -100_000i64..100_000,
            -(1i64 << 40)..(1i64 << 40),
            any::<i64>(),
            (-3000i64..3000).prop_map(|x| x * 255),
        ],
        s_v in prop_oneof![
            (0u32..0x7f80_0000).prop_map(f32::from_bits),
            1e-4f32..0.05,
            (1u32..1 << 24).prop_map(|m| (m * 3) as f32 * 2f32.powi(-30)),
        ],
        div in prop_oneof![Just(255u32), 0u32..100_000, any::<u32>()],
    ) {
        // The pipelines' output conversion (its f64 fast path included) is checked against
        // this function bit for bit by the crate's unit tests (ops::output).
        use intattention::reference::dequantize_output;
        let want = spec_output(o32, s_v, div as u64);
        let got = dequantize_output(o32, s_v, div);
        prop_assert!(got == want, "{} * {:e} / {}: got {:e}, want {:e}", o32, s_v, div, got, want);
    }
}

#[test]
fn dequantize_output_on_dense_halfway_families() {
    // Scales whose mantissas share factors with 255 = 3 * 5 * 17 or with small row sums make
    // O32 s_v / divisor land exactly halfway between two f32 often; sweep such families.
    for s_v in [
        0.9f32 / 127.0,
        1.0 / 127.0,
        0.75 / 127.0,
        3.0 * 2f32.powi(-20),
        0.1,
    ] {
        for div in [255u32, 3 * 255, 5 * 255, 17 * 255, 256, 7] {
            for x in -3000i64..3000 {
                let o32 = x * 255;
                let got = intattention::reference::dequantize_output(o32, s_v, div);
                assert!(
                    got == spec_output(o32, s_v, div as u64),
                    "{o32} * {s_v:e} / {div}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Masks in every pipeline
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_q_gives_uniform_weights_over_the_visible_keys_in_every_pipeline() {
    // With Q = 0 every visible key gets the same weight: row i's output is the mean of the V rows
    // it sees. This checks the causal rule (j > i + Lk - Lq masked), key padding and GQA
    // against a direct count, in all four pipelines.
    for (s, causal, lens) in [
        (shape(1, 2, 1, 4, 6, 3), true, vec![6]),
        (shape(2, 2, 2, 6, 3, 4), true, vec![3, 2]),
        (shape(2, 4, 2, 1, 9, 5), false, vec![9, 5]),
        (shape(2, 1, 1, 3, 5, 2), false, vec![0, 5]),
    ] {
        let c = Case {
            shape: s,
            causal,
            key_lens: Some(lens),
            variant: SoftmaxVariant::Deferred,
            scale: None,
        };
        let q = vec![0.0f32; s.q_elems()];
        let k = data(7, s.kv_elems());
        let v = data(8, s.kv_elems());
        let (lq, lk, d) = (s.q_len, s.kv_len, s.head_dim);
        let (vq, vs) = quantize_symmetric(&v).unwrap();
        for pipeline in Pipeline::ALL {
            let out = c.attention(pipeline).run(&s, &q, &k, &v).unwrap();
            for b in 0..s.batch {
                for h in 0..s.heads {
                    let kvh = h / (s.heads / s.kv_heads);
                    let vb = (b * s.kv_heads + kvh) * lk * d;
                    for i in 0..lq {
                        let seen: Vec<usize> = (0..lk)
                            .filter(|&j| visible(causal, c.key_len(b), lq, lk, i, j))
                            .collect();
                        for x in 0..d {
                            let got = out[((b * s.heads + h) * lq + i) * d + x];
                            if seen.is_empty() {
                                assert_eq!(got, 0.0, "{pipeline} fully masked row");
                                continue;
                            }
                            let n = seen.len() as f64;
                            let mean =
                                seen.iter().map(|&j| v[vb + j * d + x] as f64).sum::<f64>() / n;
                            // How close each pipeline must be to the float mean: fp32 to f32
                            // rounding; fp16 to f16 inputs and weights; int8 to V's quantization
                            // step plus P = round(255 / n) / 255 per key.
                            let tol = match pipeline {
                                Pipeline::Fp32 => 1e-6,
                                Pipeline::Fp16 => 2e-3,
                                Pipeline::Int8 => vs as f64 / 2.0 + n * 0.5 / 255.0 + 1e-6,
                                _ => vs as f64 / 2.0 + 1e-6,
                            };
                            assert!(
                                (got as f64 - mean).abs() <= tol,
                                "{pipeline} {s:?} causal={causal} b={b} h={h} i={i}: {got} vs {mean}"
                            );
                            if pipeline == Pipeline::IntAttention {
                                // Deferred: P = 255 on each seen key, sum = 255 n, so exactly
                                // (sum of q_v) s_v / n, rounded once.
                                let o32: i64 =
                                    seen.iter().map(|&j| 255 * vq[vb + j * d + x] as i64).sum();
                                assert_eq!(got, spec_output(o32, vs, 255 * seen.len() as u64));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn zero_k_also_gives_uniform_weights_and_every_variant_agrees_on_them() {
    let s = shape(1, 1, 1, 2, 3, 2);
    let q = data(1, s.q_elems());
    let k = vec![0.0f32; s.kv_elems()];
    let v = vec![0.3, -0.6, 0.9, 0.0, -0.3, 0.6];
    // V quantizes exactly: s_v = 0.9 / 127 and q_v = [42.33..] -> check against the means.
    for variant in SoftmaxVariant::ALL {
        let out = Attention::new(Pipeline::IntAttention)
            .with_variant(variant)
            .with_paper_settings()
            .run(&s, &q, &k, &v)
            .unwrap();
        // n = 3: Normalized P = round_half_up(255 / 3) = 85 = 255 / 3 exactly, so all three
        // variants give the exact mean of the quantized V rows.
        let (vq, vs) = quantize_symmetric(&v).unwrap();
        for i in 0..2 {
            for x in 0..2 {
                let o32: i64 = (0..3).map(|j| 85 * vq[j * 2 + x] as i64).sum();
                assert_eq!(out[i * 2 + x], spec_output(o32, vs, 255), "{variant}");
            }
        }
    }
}

#[test]
fn masked_pipelines_agree_with_a_float64_reference() {
    // Random Q/K/V with causal masks (Lq != Lk), padding and GQA: each pipeline within the error
    // its precision implies. Max abs error allowed, outputs being O(1): fp32 1e-5, fp16 1e-2,
    // int8 (8-bit Q/K/V and P) 0.06, IntAttention (plus the 32-entry exponent table) 0.12.
    let c = Case {
        shape: shape(2, 4, 2, 6, 11, 16),
        causal: true,
        key_lens: Some(vec![11, 7]),
        variant: SoftmaxVariant::Deferred,
        scale: None,
    };
    let s = c.shape;
    let q: Vec<f32> = data(11, s.q_elems()).iter().map(|x| x * 2.0).collect();
    let k: Vec<f32> = data(12, s.kv_elems()).iter().map(|x| x * 2.0).collect();
    let v = data(13, s.kv_elems());
    let want = float_reference(&c, &q, &k, &v);
    for (pipeline, tol) in [
        (Pipeline::Fp32, 1e-5),
        (Pipeline::Fp16, 1e-2),
        (Pipeline::Int8, 0.06),
        (Pipeline::IntAttention, 0.12),
    ] {
        let got = c.attention(pipeline).run(&s, &q, &k, &v).unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(err <= tol, "{pipeline}: max abs err {err} > {tol}");
    }
}

#[test]
fn decode_row_equals_the_last_row_of_causal_self_attention() {
    // Lq = 1 against Lk keys with the causal rule sees every key, exactly like the last query of
    // causal self-attention over the same keys.
    let full = shape(1, 2, 2, 10, 10, 8);
    let dec = shape(1, 2, 2, 1, 10, 8);
    let (q, k, v) = qtensors(&full, 55);
    let d = full.head_dim;
    let mut qlast = Vec::new();
    for h in 0..2 {
        qlast.extend_from_slice(&q.data()[(h * 10 + 9) * d..(h * 10 + 10) * d]);
    }
    let qdec = QTensor::from_parts(qlast, q.scale()).unwrap();
    for variant in SoftmaxVariant::ALL {
        let a = Attention::new(Pipeline::IntAttention)
            .with_variant(variant)
            .with_causal(true);
        let o_full = a.run_quantized(&full, &q, &k, &v).unwrap();
        let o_dec = a.run_quantized(&dec, &qdec, &k, &v).unwrap();
        for h in 0..2 {
            assert_bits_eq(
                &o_dec[h * d..(h + 1) * d],
                &o_full[(h * 10 + 9) * d..(h * 10 + 10) * d],
                &format!("{variant} head {h}"),
            );
        }
    }
    // Same for the float pipelines, to f32 accuracy.
    let qf = data(1, full.q_elems());
    let kf = data(2, full.kv_elems());
    let vf = data(3, full.kv_elems());
    let mut qd = Vec::new();
    for h in 0..2 {
        qd.extend_from_slice(&qf[(h * 10 + 9) * d..(h * 10 + 10) * d]);
    }
    let a = Attention::new(Pipeline::Fp32).with_causal(true);
    let o_full = a.run(&full, &qf, &kf, &vf).unwrap();
    let o_dec = a.run(&dec, &qd, &kf, &vf).unwrap();
    for h in 0..2 {
        for x in 0..d {
            let (a, b) = (o_dec[h * d + x], o_full[(h * 10 + 9) * d + x]);
            assert!((a - b).abs() <= 1e-6, "fp32 head {h}: {a} vs {b}");
        }
    }
}

#[test]
fn gqa_equals_attention_over_repeated_kv_heads() {
    // heads = 6, kv_heads = 2: query heads 0-2 read KV head 0 and 3-5 read KV head 1.
    // Repeating each KV head 3 times gives ordinary multi-head attention with the same result.
    let g = shape(2, 6, 2, 5, 7, 4);
    let m = shape(2, 6, 6, 5, 7, 4);
    let q = data(21, g.q_elems());
    let k = data(22, g.kv_elems());
    let v = data(23, g.kv_elems());
    let per = g.kv_len * g.head_dim;
    let repeat = |x: &[f32]| -> Vec<f32> {
        let mut r = Vec::new();
        for b in 0..2 {
            for h in 0..6 {
                let kvh = b * 2 + h / 3;
                r.extend_from_slice(&x[kvh * per..(kvh + 1) * per]);
            }
        }
        r
    };
    let (k6, v6) = (repeat(&k), repeat(&v));
    for pipeline in Pipeline::ALL {
        let a = Attention::new(pipeline).with_causal(true);
        let og = a.run(&g, &q, &k, &v).unwrap();
        let om = a.run(&m, &q, &k6, &v6).unwrap();
        if pipeline.is_integer() {
            // Repeating rows keeps max|x|, so the quantized data and scales are identical.
            assert_bits_eq(&og, &om, &format!("{pipeline}"));
        } else {
            let err = og
                .iter()
                .zip(&om)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err <= 1e-6, "{pipeline}: {err}");
        }
    }
    // kv_heads must divide heads.
    for (heads, kv) in [(6, 4), (4, 3), (2, 4), (3, 0)] {
        let s = shape(1, heads, kv, 2, 2, 2);
        let q = vec![0.1; s.q_elems()];
        let kv_data = vec![0.1; 2 * kv * 2];
        for pipeline in Pipeline::ALL {
            assert!(
                Attention::new(pipeline)
                    .run(&s, &q, &kv_data, &kv_data)
                    .is_err(),
                "{pipeline} heads={heads} kv_heads={kv}"
            );
        }
    }
}

#[test]
fn fully_masked_rows_give_zero_output_in_all_four_pipelines() {
    // Batch row 1 has no valid key; with causal and Lq > Lk the first Lq - Lk rows of batch row
    // 0 see nothing either.
    let s = shape(2, 2, 1, 5, 3, 4);
    let q = data(31, s.q_elems());
    let k = data(32, s.kv_elems());
    let v = data(33, s.kv_elems());
    for pipeline in Pipeline::ALL {
        for variant in SoftmaxVariant::ALL {
            let a = Attention::new(pipeline)
                .with_variant(variant)
                .with_causal(true)
                .with_key_lens(vec![3, 0]);
            let out = a.run(&s, &q, &k, &v).unwrap();
            assert!(out.iter().all(|x| x.is_finite()), "{pipeline} {variant}");
            for h in 0..2 {
                for i in 0..5 {
                    let row = &out[((h * 5) + i) * 4..][..4];
                    if i < 2 {
                        assert!(
                            row.iter().all(|&x| x == 0.0),
                            "{pipeline} {variant} row {i}"
                        );
                    } else {
                        assert!(
                            row.iter().any(|&x| x != 0.0),
                            "{pipeline} {variant} row {i}"
                        );
                    }
                }
            }
            assert!(
                out[s.q_elems() / 2..].iter().all(|&x| x == 0.0),
                "{pipeline} {variant}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Long key ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_over_65800_keys_does_not_overflow_the_pv_accumulator() {
    // 255 * 128 * 65800 = 2,147,712,000 > i32::MAX: P x V must be split or accumulated in i64.
    let lk = 65_800;
    assert!(lk > MAX_K_U8S8);
    let s = shape(1, 1, 1, 1, lk, 2);
    let q = QTensor::from_parts(vec![0, 0], 0.01).unwrap();
    let k = QTensor::from_parts(qdata(41, s.kv_elems()), 0.02).unwrap();
    let mut vd = vec![i8::MIN; s.kv_elems()];
    for j in 0..lk {
        vd[2 * j + 1] = if j % 3 == 0 { 127 } else { -128 };
    }
    let v = QTensor::from_parts(vd, 1.0 / 64.0).unwrap();
    for variant in [SoftmaxVariant::Deferred, SoftmaxVariant::Normalized] {
        let c = Case {
            shape: s,
            causal: true,
            key_lens: None,
            variant,
            scale: None,
        };
        let want = direct_i64(&c, &q, &k, &v);
        if variant == SoftmaxVariant::Deferred {
            // Uniform: exactly the mean of the quantized V columns.
            assert_eq!(want[0], -128.0 / 64.0);
            let ones = (0..lk).filter(|j| j % 3 == 0).count() as f64;
            let mean = (127.0 * ones - 128.0 * (lk as f64 - ones)) / lk as f64 / 64.0;
            assert_eq!(want[1], mean as f32);
        } else {
            // Normalized over 65800 equal keys: P = round_half_up(255 / 65800) = 0, output 0
            // (the contract's 8-bit probability floor).
            assert_eq!(want, [0.0, 0.0]);
        }
        for schedule in ALL_SCHEDULES {
            let got = c
                .attention(Pipeline::IntAttention)
                .with_schedule(schedule)
                .run_quantized(&s, &q, &k, &v)
                .unwrap();
            assert_bits_eq(&got, &want, &format!("{variant} {schedule:?}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn nan_or_infinite_input_is_an_error_in_every_pipeline() {
    let s = shape(1, 2, 1, 3, 4, 2);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for which in 0..3 {
            let mut q = data(1, s.q_elems());
            let mut k = data(2, s.kv_elems());
            let mut v = data(3, s.kv_elems());
            match which {
                0 => q[4] = bad,
                1 => k[5] = bad,
                _ => v[6] = bad,
            }
            for pipeline in Pipeline::ALL {
                let r = Attention::new(pipeline).run(&s, &q, &k, &v);
                assert!(r.is_err(), "{pipeline}: {bad} in tensor {which}");
            }
        }
    }
    // Bad scales for callers holding int8 data.
    let (q, k, v) = qtensors(&s, 9);
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        // A tensor with such a scale cannot even be made.
        assert!(
            QTensor::from_parts(q.data().to_vec(), bad).is_err(),
            "s_q = {bad}"
        );
    }
    let a = Attention::new(Pipeline::IntAttention);
    assert!(a.run_quantized(&s, &q, &k, &v).is_ok());
    // A bad logit scale.
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let q = data(1, s.q_elems());
        let k = data(2, s.kv_elems());
        for pipeline in Pipeline::ALL {
            assert!(Attention::new(pipeline)
                .with_scale(bad)
                .run(&s, &q, &k, &k)
                .is_err());
        }
    }
}

#[test]
fn zero_dims_and_wrong_lengths_are_errors() {
    let good = shape(1, 2, 1, 3, 4, 2);
    let dims = [
        shape(0, 2, 1, 3, 4, 2),
        shape(1, 0, 1, 3, 4, 2),
        shape(1, 2, 0, 3, 4, 2),
        shape(1, 2, 1, 0, 4, 2),
        shape(1, 2, 1, 3, 0, 2),
        shape(1, 2, 1, 3, 4, 0),
    ];
    for s in dims {
        let q = vec![0.5; s.q_elems()];
        let k = vec![0.5; s.kv_elems()];
        for pipeline in Pipeline::ALL {
            assert!(
                Attention::new(pipeline).run(&s, &q, &k, &k).is_err(),
                "{pipeline} {s:?}"
            );
        }
        let qq = QTensor::from_parts(vec![1; s.q_elems()], 0.1).unwrap();
        let kk = QTensor::from_parts(vec![1; s.kv_elems()], 0.1).unwrap();
        assert!(Attention::new(Pipeline::IntAttention)
            .run_quantized(&s, &qq, &kk, &kk)
            .is_err());
    }
    let q = vec![0.5; good.q_elems()];
    let k = vec![0.5; good.kv_elems()];
    for pipeline in Pipeline::ALL {
        let a = Attention::new(pipeline);
        assert!(a.run(&good, &q, &k, &k).is_ok());
        assert!(a.run(&good, &q[1..], &k, &k).is_err());
        assert!(a.run(&good, &q, &k[1..], &k).is_err());
        assert!(a.run(&good, &q, &k, &k[1..]).is_err());
        // key_lens: one per batch row, none past kv_len.
        assert!(a
            .clone()
            .with_key_lens(vec![4, 4])
            .run(&good, &q, &k, &k)
            .is_err());
        assert!(a
            .clone()
            .with_key_lens(vec![5])
            .run(&good, &q, &k, &k)
            .is_err());
        assert!(a
            .clone()
            .with_key_lens(vec![4])
            .run(&good, &q, &k, &k)
            .is_ok());
    }
    // run_quantized needs an integer pipeline.
    let qq = QTensor::from_parts(vec![1; good.q_elems()], 0.1).unwrap();
    let kk = QTensor::from_parts(vec![1; good.kv_elems()], 0.1).unwrap();
    assert!(Attention::new(Pipeline::Fp32)
        .run_quantized(&good, &qq, &kk, &kk)
        .is_err());
    assert!(Attention::new(Pipeline::Fp16)
        .run_quantized(&good, &qq, &kk, &kk)
        .is_err());
    // Bad IndexSoftmax parameters.
    assert!(Attention::new(Pipeline::IntAttention)
        .with_table_bits(9)
        .run(&good, &q, &k, &k)
        .is_err());
    assert!(Attention::new(Pipeline::IntAttention)
        .with_clip(-1.0)
        .run(&good, &q, &k, &k)
        .is_err());
}

// ---------------------------------------------------------------------------------------------
// Writing into a caller's buffer
// ---------------------------------------------------------------------------------------------

#[test]
fn run_into_a_dirty_buffer_equals_run() {
    // Causal GQA with a padded batch row, large enough for several row blocks and packing.
    let s = shape(2, 4, 2, 70, 90, 16);
    let (q, k, v) = (
        data(11, s.q_elems()),
        data(12, s.kv_elems()),
        data(13, s.kv_elems()),
    );
    let (qq, kq, vq) = qtensors(&s, 14);
    for pipeline in Pipeline::ALL {
        for schedule in ALL_SCHEDULES {
            for threads in [1, 3] {
                let a = Attention::new(pipeline)
                    .with_causal(true)
                    .with_key_lens(vec![90, 37])
                    .with_schedule(schedule)
                    .with_executor(support::threads(threads))
                    .with_block_rows(16);
                let what = format!("{pipeline} {schedule:?} {threads} threads");
                let want = a.run(&s, &q, &k, &v).unwrap();
                let mut out = vec![f32::NAN; s.q_elems()];
                support::run_into(&a, &s, &q, &k, &v, &mut out).unwrap();
                assert_bits_eq(&out, &want, &what);
                // Again into the same buffer, now holding the previous results.
                out.iter_mut().for_each(|x| *x = -*x + 1.0);
                support::run_into(&a, &s, &q, &k, &v, &mut out).unwrap();
                assert_bits_eq(&out, &want, &what);
                if pipeline.is_integer() {
                    let want = a.run_quantized(&s, &qq, &kq, &vq).unwrap();
                    let mut out = vec![f32::INFINITY; s.q_elems()];
                    a.run_quantized_into(&mut Workspace::new(), &s, &qq, &kq, &vq, &mut out)
                        .unwrap();
                    assert_bits_eq(&out, &want, &format!("quantized, {what}"));
                }
            }
        }
    }
}

#[test]
fn run_into_rejects_a_wrong_output_and_leaves_no_stale_values_on_error() {
    let s = shape(1, 2, 1, 3, 4, 2);
    let (q, k) = (data(1, s.q_elems()), data(2, s.kv_elems()));
    let (qq, kq, vq) = qtensors(&s, 3);
    for pipeline in Pipeline::ALL {
        let a = Attention::new(pipeline);
        for len in [0, s.q_elems() - 1, s.q_elems() + 1] {
            let mut out = vec![7.0; len];
            let e = support::run_into(&a, &s, &q, &k, &k, &mut out).unwrap_err();
            assert!(
                matches!(e, Error::LengthMismatch { .. }),
                "{pipeline} {len}: {e}"
            );
            assert!(out.iter().all(|&x| x == 7.0), "checked before any write");
            if pipeline.is_integer() {
                let e = a
                    .run_quantized_into(&mut Workspace::new(), &s, &qq, &kq, &vq, &mut out)
                    .unwrap_err();
                assert!(
                    matches!(e, Error::LengthMismatch { .. }),
                    "{pipeline} {len}: {e}"
                );
            }
        }
        // Bad data is found while the output is being made: it comes back zeroed.
        let mut bad = q.clone();
        bad[2] = f32::NAN;
        let mut out = vec![7.0; s.q_elems()];
        assert!(
            support::run_into(&a, &s, &bad, &k, &k, &mut out).is_err(),
            "{pipeline}"
        );
        assert!(out.iter().all(|&x| x == 0.0), "{pipeline}: {out:?}");
    }
    assert!(Attention::new(Pipeline::Fp32)
        .run_quantized_into(
            &mut Workspace::new(),
            &s,
            &qq,
            &kq,
            &vq,
            &mut vec![0.0; s.q_elems()]
        )
        .is_err());
}

#[test]
fn concurrent_calls_from_several_threads_agree() {
    // Callers sharing one worker pool (same thread count) and the kept buffers, all at once.
    let s = shape(1, 2, 1, 300, 300, 32);
    let (q, k, v) = (
        data(21, s.q_elems()),
        data(22, s.kv_elems()),
        data(23, s.kv_elems()),
    );
    for pipeline in [Pipeline::IntAttention, Pipeline::Int8, Pipeline::Fp32] {
        let a = Attention::new(pipeline).with_executor(support::threads(2));
        let want = a.run(&s, &q, &k, &v).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (a, want, q, k, v) = (&a, &want, &q, &k, &v);
                scope.spawn(move || {
                    let mut out = vec![f32::NAN; s.q_elems()];
                    for i in 0..5 {
                        if (t + i) % 2 == 0 {
                            assert_bits_eq(&a.run(&s, q, k, v).unwrap(), want, "run");
                        } else {
                            support::run_into(a, &s, q, k, v, &mut out).unwrap();
                            assert_bits_eq(&out, want, "run_into");
                        }
                    }
                });
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Finer scales (docs/numerics.md section 6), against their definition
// ---------------------------------------------------------------------------------------------

/// `max |x| / 127`, 0 when that maximum is zero or subnormal.
fn scale_of(x: impl Iterator<Item = f32>) -> f32 {
    let m = x.fold(0f32, |m, v| m.max(v.abs()));
    if m < f32::MIN_POSITIVE {
        0.0
    } else {
        m / 127.0
    }
}

fn q8(x: f32, s: f32) -> i64 {
    if s == 0.0 {
        0
    } else {
        (x / s).round_ties_even().clamp(-127.0, 127.0) as i64
    }
}

/// The mean of rows by section 6: f64 sums of blocks of 256 rows in order, added in order,
/// divided by the row count, rounded to f32.
fn block_mean(rows: &[Vec<f32>], d: usize) -> Vec<f32> {
    let mut total = vec![0f64; d];
    for block in rows.chunks(256) {
        let mut part = vec![0f64; d];
        for r in block {
            for (a, &x) in part.iter_mut().zip(r) {
                *a += x as f64;
            }
        }
        for (t, x) in total.iter_mut().zip(part) {
            *t += x;
        }
    }
    total
        .iter()
        .map(|&t| {
            if rows.is_empty() {
                0.0
            } else {
                (t / rows.len() as f64) as f32
            }
        })
        .collect()
}

/// IntAttention with Q scales per row or per head, K/V scales per head, optional K smoothing,
/// optional per-channel V scales and V smoothing, written from section 6 in wide integers.
/// `lens`: valid keys per batch row (key padding; the means are over valid keys, the scales
/// over every row of the head).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn finer_reference(
    s: &AttnShape,
    bits: u32,
    quant: Quantization,
    variant: SoftmaxVariant,
    causal: bool,
    lens: Option<&[usize]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    let (lq, lk, d) = (s.q_len, s.kv_len, s.head_dim);
    let lut = Lut::new(bits, 6.6).unwrap();
    let table = lut.entries();
    let n1 = (table.len() - 1) as i64;
    let scale = 1.0 / (d as f32).sqrt();
    let row = |x: &[f32], bh: usize, i: usize| x[(bh * lq + i) * d..(bh * lq + i + 1) * d].to_vec();
    let krow = |x: &[f32], u: usize, j: usize| x[(u * lk + j) * d..(u * lk + j + 1) * d].to_vec();
    let mut out = Vec::new();
    for bh in 0..s.batch * s.heads {
        let (b, h) = (bh / s.heads, bh % s.heads);
        let u = b * s.kv_heads + h / (s.heads / s.kv_heads);
        // K: the mean over 256-key blocks in order, then the head's scale.
        let valid = lens.map_or(lk, |l| l[b]);
        let keys: Vec<Vec<f32>> = (0..lk).map(|j| krow(k, u, j)).collect();
        let values: Vec<Vec<f32>> = (0..lk).map(|j| krow(v, u, j)).collect();
        let mean = if quant.smooth_k {
            block_mean(&keys[..valid], d)
        } else {
            vec![0f32; d]
        };
        let ks: Vec<Vec<f32>> = (0..lk)
            .map(|j| {
                krow(k, u, j)
                    .iter()
                    .zip(&mean)
                    .map(|(x, m)| x - m)
                    .collect()
            })
            .collect();
        let s_k = scale_of(ks.iter().flatten().copied());
        // V: minus its mean when smoothed; one scale, or one per channel with the floor.
        let v_mean = if quant.smooth_v {
            block_mean(&values[..valid], d)
        } else {
            vec![0f32; d]
        };
        let vs: Vec<Vec<f32>> = values
            .iter()
            .map(|r| r.iter().zip(&v_mean).map(|(x, m)| x - m).collect())
            .collect();
        let big = vs.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let s_v: Vec<f32> = (0..d)
            .map(|c| {
                if !quant.v_per_channel {
                    scale_of(vs.iter().flatten().copied())
                } else if big < f32::MIN_POSITIVE {
                    0.0
                } else {
                    let m_c = vs.iter().fold(0f32, |m, r| m.max(r[c].abs()));
                    m_c.max((big / 64.0).max(f32::MIN_POSITIVE)) / 127.0
                }
            })
            .collect();
        let k8: Vec<Vec<i64>> = ks
            .iter()
            .map(|r| r.iter().map(|&x| q8(x, s_k)).collect())
            .collect();
        let v8: Vec<Vec<i64>> = vs
            .iter()
            .map(|r| r.iter().zip(&s_v).map(|(&x, &s)| q8(x, s)).collect())
            .collect();
        let head_scale = scale_of((0..lq).flat_map(|i| row(q, bh, i)));
        for i in 0..lq {
            let qr = row(q, bh, i);
            let s_q = match quant.q {
                Granularity::PerRow => scale_of(qr.iter().copied()),
                _ => head_scale,
            };
            let q8r: Vec<i64> = qr.iter().map(|&x| q8(x, s_q)).collect();
            let t = threshold_exact(6.6, s_q, s_k, scale).unwrap() as i64;
            let n = if causal {
                (i + lk + 1).saturating_sub(lq).min(lk)
            } else {
                lk
            }
            .min(valid);
            let sc: Vec<i64> = (0..n)
                .map(|j| q8r.iter().zip(&k8[j]).map(|(a, b)| a * b).sum())
                .collect();
            let mut p = vec![0i64; n];
            let mut sum = 0;
            if let Some(&m) = sc.iter().max() {
                for j in 0..n {
                    let dd = (m - sc[j]).min(t);
                    p[j] = table[((2 * dd * n1 + t) / (2 * t)) as usize] as i64;
                    sum += p[j];
                }
            }
            let div = if variant == SoftmaxVariant::Normalized {
                for x in p.iter_mut() {
                    *x = if sum == 0 {
                        0
                    } else {
                        (510 * *x + sum) / (2 * sum)
                    };
                }
                if sum == 0 {
                    0
                } else {
                    255
                }
            } else {
                sum
            };
            for c in 0..d {
                let o32: i64 = (0..n).map(|j| p[j] * v8[j][c]).sum();
                let o = intattention::reference::dequantize_output(o32, s_v[c], div as u32);
                // The mean comes back only where the weights sum to something.
                out.push(if quant.smooth_v && div != 0 {
                    o + v_mean[c]
                } else {
                    o
                });
            }
        }
    }
    out
}

#[test]
fn finer_scales_and_smoothing_equal_their_definition() {
    let quants = [
        Quantization::FINE,
        Quantization::PER_TENSOR
            .with_q(Granularity::PerHead)
            .with_kv(Granularity::PerHead),
        Quantization::PER_TENSOR
            .with_q(Granularity::PerRow)
            .with_kv(Granularity::PerHead),
        Quantization::PER_TENSOR
            .with_kv(Granularity::PerHead)
            .with_smooth_k(true)
            .with_q(Granularity::PerHead),
        Quantization::FINE.with_smooth_k(true),
        Quantization::FINE.with_smooth_v(false),
        Quantization::FINE.with_v_per_channel(false),
        Quantization::FINE.with_q(Granularity::PerHead),
    ];
    // Units enough for the one-pass schedule (batch x kv heads >= 2 x workers) and one unit
    // with long keys (chunks and key splits).
    for s in [shape(4, 4, 2, 9, 40, 16), shape(1, 2, 1, 3, 2100, 8)] {
        let q = data(31, s.q_elems());
        // Keys with a common offset, where smoothing matters.
        let k: Vec<f32> = data(32, s.kv_elems()).iter().map(|x| x + 2.0).collect();
        // Values with channels of very different sizes and offsets (per-channel scales and
        // smoothing matter): one channel zero, one nearly so, and one about 1/48 of the
        // largest (its scale sits on the floor of 1/64 of the largest maximum).
        let d = s.head_dim as f32;
        let v: Vec<f32> = data(33, s.kv_elems())
            .iter()
            .enumerate()
            .map(|(i, x)| match i % s.head_dim {
                0 => 0.0,
                1 => x * 1e-4,
                2 => x * d / 48.0,
                c => x * (c as f32) + 0.5 * (c % 3) as f32,
            })
            .collect();
        for quant in quants {
            for variant in [SoftmaxVariant::Deferred, SoftmaxVariant::Normalized] {
                for causal in [false, true] {
                    let want = finer_reference(&s, 5, quant, variant, causal, None, &q, &k, &v);
                    for kernel in Kernel::available() {
                        for schedule in [Schedule::Auto, Schedule::Unfused] {
                            for threads in [1, 3] {
                                let attn = Attention::new(Pipeline::IntAttention)
                                    .with_variant(variant)
                                    .with_table_bits(5)
                                    .with_causal(causal)
                                    .with_quantization(quant)
                                    .with_kernel(kernel)
                                    .with_schedule(schedule)
                                    .with_executor(support::threads(threads));
                                let got = attn.run(&s, &q, &k, &v).unwrap();
                                assert_bits_eq(
                                    &got,
                                    &want,
                                    &format!(
                                        "{quant:?} {variant} causal {causal} {} {schedule:?} {threads} threads {s:?}",
                                        kernel.name()
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The defaults: IntAttention's Deferred finish is the fine scheme with 7-bit tables (its
/// definition, section 6); every other finish and pipeline keeps the paper's settings, bit for
/// bit.
#[test]
fn defaults_are_fine_deferred_and_paper_elsewhere() {
    let deferred = Attention::new(Pipeline::IntAttention);
    assert_eq!(deferred.table_bits(), DEFERRED_TABLE_BITS);
    assert_eq!(deferred.quantization(), Quantization::FINE);
    let paper = deferred.clone().with_paper_settings();
    assert_eq!(paper.table_bits(), 5);
    assert_eq!(paper.quantization(), Quantization::PER_TENSOR);
    for pipeline in Pipeline::ALL {
        let a = Attention::new(pipeline).with_variant(SoftmaxVariant::Normalized);
        assert_eq!(a.quantization(), Quantization::PER_TENSOR, "{pipeline}");
        assert_eq!(a.table_bits(), 5, "{pipeline}");
    }

    let s = shape(2, 4, 2, 7, 300, 16);
    let q = data(41, s.q_elems());
    let k = data(42, s.kv_elems());
    let v: Vec<f32> = data(43, s.kv_elems())
        .iter()
        .enumerate()
        .map(|(i, x)| x * (1 + i % 16) as f32 + 0.2)
        .collect();
    for causal in [false, true] {
        let got = deferred
            .clone()
            .with_causal(causal)
            .run(&s, &q, &k, &v)
            .unwrap();
        let want = finer_reference(
            &s,
            DEFERRED_TABLE_BITS,
            Quantization::FINE,
            SoftmaxVariant::Deferred,
            causal,
            None,
            &q,
            &k,
            &v,
        );
        assert_bits_eq(&got, &want, &format!("default Deferred, causal {causal}"));
        // Key padding: the means over each row's valid keys, the scales over all its rows
        // (padding included), a batch row without keys all zeros. K smoothed too. The one-pass
        // schedule (1 worker: units >= 2 x workers) and the others compute the statistics
        // apart.
        let lens = [173, 0];
        let quant = Quantization::FINE.with_smooth_k(true);
        let want = finer_reference(
            &s,
            DEFERRED_TABLE_BITS,
            quant,
            SoftmaxVariant::Deferred,
            causal,
            Some(&lens),
            &q,
            &k,
            &v,
        );
        for schedule in [Schedule::Auto, Schedule::Unfused] {
            for threads in [1, 3] {
                let got = deferred
                    .clone()
                    .with_causal(causal)
                    .with_quantization(quant)
                    .with_key_lens(lens.to_vec())
                    .with_schedule(schedule)
                    .with_executor(support::threads(threads))
                    .run(&s, &q, &k, &v)
                    .unwrap();
                assert_bits_eq(
                    &got,
                    &want,
                    &format!("padded, causal {causal}, {schedule:?}, {threads} threads"),
                );
            }
        }
        for variant in [SoftmaxVariant::Normalized, SoftmaxVariant::PaperSim] {
            let by_default = Attention::new(Pipeline::IntAttention)
                .with_variant(variant)
                .with_causal(causal)
                .run(&s, &q, &k, &v)
                .unwrap();
            let paper = Attention::new(Pipeline::IntAttention)
                .with_variant(variant)
                .with_causal(causal)
                .with_paper_settings()
                .run(&s, &q, &k, &v)
                .unwrap();
            assert_bits_eq(&by_default, &paper, &format!("{variant} default"));
        }
    }
}
