//! The fused row-block schedule against the unfused pipelines: bit for bit (f32 `to_bits`),
//! for INT8 and IntAttention with every softmax finish, under every kernel this CPU can run,
//! over edge shapes, masks, GQA, several thread counts, and the split P x V of > 65,793 keys.

mod support;

use intattention::*;

const LENS: [usize; 6] = [1, 7, 64, 65, 300, 1000];
const DIMS: [usize; 4] = [1, 3, 64, 128];

/// Deterministic i8 data over the whole range, -128 included.
fn qtensor(seed: u64, n: usize, scale: f32) -> QTensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8 as i8
        })
        .collect();
    QTensor::from_parts(data, scale).unwrap()
}

/// The four integer softmax configurations: INT8 (float softmax) and the three IndexSoftmax
/// finishes.
fn configs() -> Vec<Attention> {
    let mut v = vec![Attention::new(Pipeline::Int8)];
    for variant in SoftmaxVariant::ALL {
        v.push(Attention::new(Pipeline::IntAttention).with_variant(variant));
    }
    v
}

fn describe(attn: &Attention, shape: &AttnShape, kernel: Kernel) -> String {
    format!(
        "{} {} kernel={} threads={} causal={} key_lens={:?} shape={shape:?}",
        attn.pipeline(),
        attn.variant(),
        kernel.name(),
        attn.executor().workers(),
        attn.causal(),
        attn.key_lens()
    )
}

/// Runs `attn` unfused and fused on `kernel`; panics unless both agree bit for bit. Returns the
/// output.
fn check(
    attn: &Attention,
    kernel: Kernel,
    shape: &AttnShape,
    q: &QTensor,
    k: &QTensor,
    v: &QTensor,
) -> Vec<f32> {
    let run = |s: Schedule| {
        attn.clone()
            .with_schedule(s)
            .with_kernel(kernel)
            .run_quantized(shape, q, k, v)
            .unwrap_or_else(|e| panic!("{s:?} failed: {e} ({})", describe(attn, shape, kernel)))
    };
    let unfused = run(Schedule::Unfused);
    let fused = run(Schedule::Fused);
    assert_eq!(fused.len(), unfused.len());
    if let Some(i) = (0..fused.len()).find(|&i| fused[i].to_bits() != unfused[i].to_bits()) {
        panic!(
            "fused differs from unfused at flat index {i}: {} vs {} ({})",
            fused[i],
            unfused[i],
            describe(attn, shape, kernel)
        );
    }
    unfused
}

fn inputs(shape: &AttnShape, seed: u64, s: f32) -> (QTensor, QTensor, QTensor) {
    (
        qtensor(seed, shape.q_elems(), s),
        qtensor(seed + 1, shape.kv_elems(), s),
        qtensor(seed + 2, shape.kv_elems(), 0.02),
    )
}

#[test]
fn fused_matches_unfused_over_shapes() {
    let mut case = 0u64;
    for kernel in Kernel::available() {
        for lq in LENS {
            for lk in LENS {
                for d in DIMS {
                    // The whole grid would take minutes in a debug build: shapes past 2^20
                    // multiply-adds per head keep d = 1 only.
                    if lq * lk * d > 1 << 20 && d != 1 {
                        continue;
                    }
                    case += 1;
                    let shape = support::shape(1, 1, 1, lq, lk, d);
                    // Logits of a few units either way: neither flat nor one-hot.
                    let (q, k, v) = inputs(&shape, case, 0.012);
                    for attn in configs() {
                        let attn =
                            attn.with_executor(support::threads(if case.is_multiple_of(2) {
                                1
                            } else {
                                3
                            }));
                        let out = check(&attn, kernel, &shape, &q, &k, &v);
                        // Deferred has no 8-bit probability floor, so its rows cannot vanish.
                        let deferred = attn.pipeline() == Pipeline::IntAttention
                            && attn.variant() == SoftmaxVariant::Deferred;
                        assert!(
                            !deferred || out.iter().any(|&x| x != 0.0),
                            "all-zero output ({})",
                            describe(&attn, &shape, kernel)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fused_matches_unfused_with_masks_and_gqa() {
    let mut case = 100u64;
    for kernel in Kernel::available() {
        // Small d: the masks do not depend on it, and debug builds are slow.
        for (lq, lk) in [(1, 300), (7, 7), (64, 65), (65, 64), (100, 67), (67, 100)] {
            for (heads, kv_heads) in [(2, 2), (4, 2), (3, 1)] {
                let shape = support::shape(2, heads, kv_heads, lq, lk, 4);
                case += 1;
                let (q, k, v) = inputs(&shape, case, 0.012);
                let pads = [
                    None,
                    Some(vec![lk, lk / 2 + 1]),
                    // An empty batch row: every query row of it fully masked.
                    Some(vec![0, lk.min(61)]),
                ];
                for causal in [false, true] {
                    for pad in &pads {
                        for attn in configs() {
                            case += 1;
                            let threads = if case.is_multiple_of(2) { 1 } else { 3 };
                            let mut attn = attn
                                .with_causal(causal)
                                .with_executor(support::threads(threads));
                            attn = attn.with_key_lens(pad.clone());
                            check(&attn, kernel, &shape, &q, &k, &v);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fused_matches_unfused_decode() {
    for kernel in Kernel::available() {
        for (lk, d) in [(1, 128), (7, 3), (1000, 128), (4097, 16)] {
            let shape = support::shape(2, 8, 2, 1, lk, d);
            let (q, k, v) = inputs(&shape, lk as u64, 0.012);
            for causal in [false, true] {
                for attn in configs() {
                    let attn = attn
                        .with_causal(causal)
                        .with_executor(support::threads(3))
                        .with_key_lens(vec![lk, lk.div_ceil(3)]);
                    check(&attn, kernel, &shape, &q, &k, &v);
                }
            }
        }
    }
}

#[test]
fn fused_matches_unfused_on_zero_scales_and_sharp_rows() {
    // Scale 0 (an all-zero Q): uniform attention. Large scales: nearly one-hot rows.
    for kernel in Kernel::available() {
        let shape = AttnShape::new(1, 2, 130, 32);
        for (sq, sk) in [(0.0, 0.012), (0.012, 0.0), (0.2, 0.2)] {
            let q = qtensor(7, shape.q_elems(), sq);
            let k = qtensor(8, shape.kv_elems(), sk);
            let v = qtensor(9, shape.kv_elems(), 0.02);
            for attn in configs() {
                check(&attn.with_causal(sq == 0.2), kernel, &shape, &q, &k, &v);
            }
        }
    }
}

#[test]
fn fused_matches_unfused_past_i32_pv_depth() {
    // 70,000 keys: P x V must be split (u8 x s8 over > 65,793 keys can overflow i32).
    let lk = 70_000;
    for kernel in Kernel::available() {
        let shape = support::shape(1, 1, 1, 2, lk, 2);
        let q = qtensor(11, shape.q_elems(), 0.001);
        let k = qtensor(12, shape.kv_elems(), 0.001);
        // V all +127 where P is largest would overflow i32 without the split.
        let v = QTensor::from_parts(vec![127; shape.kv_elems()], 0.01).unwrap();
        for (causal, pad) in [(false, None), (true, None), (false, Some(vec![66_000]))] {
            for threads in [1, 3] {
                for attn in configs() {
                    let mut attn = attn
                        .with_causal(causal)
                        .with_executor(support::threads(threads));
                    attn = attn.with_key_lens(pad.clone());
                    let out = check(&attn, kernel, &shape, &q, &k, &v);
                    // Every V row is 127 * 0.01 and Deferred divides by the exact row sum, so
                    // the output is exactly that (an i32 overflow would wrap it far away). The
                    // 8-bit P of the other finishes rounds these near-uniform rows to 0.
                    if attn.variant() == SoftmaxVariant::Deferred
                        && attn.pipeline() == Pipeline::IntAttention
                    {
                        for &o in &out {
                            assert!(
                                (o - 1.27).abs() < 1e-5,
                                "{o} ({})",
                                describe(&attn, &shape, kernel)
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fused_from_f32_inputs_matches_unfused() {
    // The public f32 entry point goes through the same dispatch.
    let shape = support::shape(1, 4, 2, 65, 300, 64);
    let gen = |seed: u32, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) as f32 / u32::MAX as f32)
                    - 0.5
            })
            .collect()
    };
    let (q, k, v) = (
        gen(1, shape.q_elems()),
        gen(2, shape.kv_elems()),
        gen(3, shape.kv_elems()),
    );
    for attn in configs() {
        let attn = attn.with_causal(true).with_executor(support::threads(2));
        let u = attn
            .clone()
            .with_schedule(Schedule::Unfused)
            .run(&shape, &q, &k, &v)
            .unwrap();
        for s in [Schedule::Fused, Schedule::Auto] {
            let f = attn
                .clone()
                .with_schedule(s)
                .run(&shape, &q, &k, &v)
                .unwrap();
            assert!(
                u.iter().zip(&f).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{s:?} {} {}",
                attn.pipeline(),
                attn.variant()
            );
        }
    }
}

#[test]
fn every_block_size_gives_the_same_bits() {
    // Block rows set by hand (`Attention::block_rows`, the CLI's `--block-rows`): odd sizes,
    // one row, more rows than the head has, with and without a causal mask and over threads.
    let shape = AttnShape::new(1, 2, 77, 24);
    let (q, k, v) = inputs(&shape, 900, 0.03);
    for kernel in Kernel::available() {
        for causal in [false, true] {
            let base = Attention::new(Pipeline::IntAttention).with_causal(causal);
            let want = check(&base, kernel, &shape, &q, &k, &v);
            for rows in [1, 5, 16, 17, 33, 77, 500] {
                for threads in [1, 3] {
                    let attn = base
                        .clone()
                        .with_executor(support::threads(threads))
                        .with_block_rows(rows);
                    let got = check(&attn, kernel, &shape, &q, &k, &v);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "block_rows {rows} ({})",
                        describe(&attn, &shape, kernel)
                    );
                }
            }
        }
    }
    let zero = Attention::new(Pipeline::IntAttention).with_block_rows(0);
    let err = zero.run_quantized(&shape, &q, &k, &v).unwrap_err();
    assert!(err.to_string().contains("block_rows"), "{err}");
}

/// Few query rows against many keys: the keys of each block are split across workers and the
/// partial results combined (module docs of the engine). Bit for bit the unfused result, for
/// every configuration, with masks, GQA and 3 or 4 workers.
#[test]
fn key_splits_match_unfused() {
    let mut case = 900u64;
    for kernel in Kernel::available() {
        for (lq, lk, heads, kv_heads) in [(1, 4000, 8, 2), (3, 1100, 2, 1), (2, 2600, 4, 4)] {
            let shape = support::shape(1, heads, kv_heads, lq, lk, 8);
            case += 1;
            let (q, k, v) = inputs(&shape, case, 0.02);
            for (causal, pad) in [(false, None), (true, None), (false, Some(vec![lk - 700]))] {
                for threads in [3, 4] {
                    for attn in configs() {
                        let attn = attn
                            .with_causal(causal)
                            .with_key_lens(pad.clone())
                            .with_executor(support::threads(threads));
                        check(&attn, kernel, &shape, &q, &k, &v);
                    }
                }
            }
        }
    }
}

/// Fewer units than workers, each with enough query rows for a block per worker: the keys are
/// quantized and packed by chunks on every worker into one operand per unit (engine: the merged
/// preparation). Bit for bit what one worker computes (which packs each unit whole), from f32
/// inputs with the default and the paper settings, with key padding, over lengths around the
/// chunk and panel boundaries and head dimensions of every kernel's panel edges.
#[test]
fn keys_packed_on_many_workers_match_one_worker() {
    let mut case = 1300u64;
    for kernel in Kernel::available() {
        for (lq, lk, heads, kv_heads, d) in [
            (300, 1000, 1, 1, 64),
            (256, 1537, 2, 1, 3),
            (200, 2049, 2, 2, 128),
            (130, 3071, 1, 1, 17),
        ] {
            case += 1;
            let shape = support::shape(1, heads, kv_heads, lq, lk, d);
            let q = support::data(case, shape.q_elems());
            let k = support::data(case + 1, shape.kv_elems());
            let v = support::data(case + 2, shape.kv_elems());
            for pad in [None, Some(vec![lk - 300])] {
                for base in [
                    Attention::new(Pipeline::IntAttention),
                    Attention::new(Pipeline::IntAttention).with_paper_settings(),
                    Attention::new(Pipeline::Int8),
                ] {
                    let attn = base.with_kernel(kernel).with_key_lens(pad.clone());
                    let one = attn
                        .clone()
                        .with_executor(support::threads(1))
                        .run(&shape, &q, &k, &v)
                        .unwrap();
                    for threads in [3, 4] {
                        let attn = attn.clone().with_executor(support::threads(threads));
                        let many = attn.run(&shape, &q, &k, &v).unwrap();
                        let what = describe(&attn, &shape, kernel);
                        assert_eq!(one.len(), many.len(), "{what}");
                        if let Some(i) =
                            (0..one.len()).find(|&i| one[i].to_bits() != many[i].to_bits())
                        {
                            panic!(
                                "{threads} workers differ at {i}: {} vs {} ({what})",
                                many[i], one[i]
                            );
                        }
                    }
                }
            }
        }
    }
}
