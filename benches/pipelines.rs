//! Criterion benchmarks: each pipeline at L in {256, 1024, 4096} x d in {64, 128}, one head,
//! one thread, through `backend::prepare` like the CLI (set-up untimed, quantization of Q, K,
//! V timed); plus the two int8 GEMMs alone at L = 1024, d = 128. Throughput is reported in
//! multiply-accumulates (criterion's "elements"), so elem/s reads as MAC/s: 2 L^2 d per
//! attention call, L^2 d per GEMM.
//!
//! Sample counts and times are small so that the whole file runs in a few minutes on two
//! cores; pass criterion's usual options (`-- --quick`, `-- fp32`) to narrow it further.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use intattention::backend::{self, Backend};
use intattention::ops::gemm::{gemm_s8s8_nt, gemm_u8s8};
use intattention::{quantize_symmetric, Attention, AttnShape, Kernel, Pipeline};

#[path = "../tests/support/mod.rs"]
mod support;

/// Seeded inputs in [-1, 1) for a shape.
struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn inputs(shape: &AttnShape, seed: u64) -> Inputs {
    Inputs {
        q: support::data(seed, shape.q_elems()),
        k: support::data(seed + 1, shape.kv_elems()),
        v: support::data(seed + 2, shape.kv_elems()),
    }
}

const LENS: [usize; 3] = [256, 1024, 4096];
const DIMS: [usize; 2] = [64, 128];

fn pipelines(c: &mut Criterion) {
    let kernel = Kernel::best().name();
    eprintln!("kernel: {kernel}");
    for pipe in Pipeline::ALL {
        let mut group = c.benchmark_group(format!("pipeline/{pipe}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for &d in &DIMS {
            for &len in &LENS {
                let shape = AttnShape::new(1, 1, len, d);
                let x = inputs(&shape, 0);
                let attn = Attention::new(pipe);
                let mut runner =
                    backend::prepare(Backend::Native, &attn, &shape).expect("native backend");
                group.throughput(Throughput::Elements((2 * len * len * d) as u64));
                group.bench_with_input(BenchmarkId::new(format!("d{d}"), len), &len, |b, _| {
                    b.iter(|| black_box(runner.run(&x.q, &x.k, &x.v).expect("run")))
                });
            }
        }
        group.finish();
    }
}

/// The two integer GEMMs of the pipeline without softmax or quantization: Q K^T (s8 x s8^T)
/// and P V (u8 x s8), at L = 1024, d = 128.
fn int8_gemms(c: &mut Criterion) {
    let (l, d) = (1024, 128);
    let shape = AttnShape::new(1, 1, l, d);
    let x = inputs(&shape, 1);
    let (q, _) = quantize_symmetric(&x.q).expect("finite");
    let (k, _) = quantize_symmetric(&x.k).expect("finite");
    let (v, _) = quantize_symmetric(&x.v).expect("finite");
    // Probabilities with a realistic spread of values rather than a constant byte.
    let p: Vec<u8> =
        x.q.iter()
            .cycle()
            .take(l * l)
            .map(|&f| (f.abs() * 60.0).min(255.0) as u8)
            .collect();
    let mut group = c.benchmark_group("gemm_int8");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements((l * l * d) as u64));
    let mut s = vec![0i32; l * l];
    group.bench_function(
        BenchmarkId::new("s8s8_nt_scores", format!("L{l}_d{d}")),
        |b| {
            b.iter(|| {
                gemm_s8s8_nt(&q, &k, l, l, d, &mut s).expect("shapes");
                black_box(&s);
            })
        },
    );
    let mut o = vec![0i32; l * d];
    group.bench_function(BenchmarkId::new("u8s8_pv", format!("L{l}_d{d}")), |b| {
        b.iter(|| {
            gemm_u8s8(&p, &v, l, d, l, &mut o).expect("shapes");
            black_box(&o);
        })
    });
    group.finish();
}

criterion_group!(benches, pipelines, int8_gemms);
criterion_main!(benches);
