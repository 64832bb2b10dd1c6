//! Single-core throughput of every available kernel on attention-sized operands: the score
//! GEMM (1024 x 1024, depth 128) and the P x V GEMM (1024 x 128, depth 1024), both with the
//! B operand packed once (as the fused pipeline does) and unpacked (packing per call);
//! throughput is in multiply-accumulates, so criterion's "elem/s" reads as MAC/s. Also one
//! IndexSoftmax row and one float softmax row of 1024 entries.
//!
//! `cargo bench --bench kernels -- <filter>`; `INTATTENTION_BENCH_QUICK=1` shortens the runs.
//! On a shared machine wall time measures the neighbours; `INTATTENTION_BENCH_CPU=1` instead
//! prints rates over this thread's own CPU time (Linux `/proc/thread-self/schedstat`).

use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use intattention::lut::Lut;
use intattention::Kernel;

const L: usize = 1024;
const D: usize = 128;

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn signed(n: usize, seed: u32) -> Vec<i8> {
    // Quantized tensors never hold -128; keep the bench on the values pipelines produce.
    bytes(n, seed)
        .into_iter()
        .map(|b| (b as i8).max(-127))
        .collect()
}

fn criterion() -> Criterion {
    let c = Criterion::default();
    if std::env::var_os("INTATTENTION_BENCH_QUICK").is_some() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
    } else {
        c.measurement_time(Duration::from_secs(3))
    }
}

fn gemms(c: &mut Criterion) {
    let q = signed(L * D, 1);
    let k = signed(L * D, 2);
    let v = signed(L * D, 3);
    let p = bytes(L * L, 4);
    let mut g = c.benchmark_group("scores_1024x1024x128");
    g.throughput(Throughput::Elements((L * L * D) as u64));
    for kern in Kernel::available() {
        if kern.name() == "generic" {
            continue;
        }
        let mut s = vec![0i32; L * L];
        let packed = kern.pack_k(&k, L, D).unwrap();
        g.bench_function(BenchmarkId::new("packed", kern.name()), |b| {
            b.iter(|| kern.gemm_s8s8_packed(&q, L, &packed, &mut s).unwrap())
        });
        g.bench_function(BenchmarkId::new("unpacked", kern.name()), |b| {
            b.iter(|| kern.gemm_s8s8_nt(&q, &k, L, L, D, &mut s).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pv_1024x128x1024");
    g.throughput(Throughput::Elements((L * D * L) as u64));
    for kern in Kernel::available() {
        if kern.name() == "generic" {
            continue;
        }
        let mut o = vec![0i32; L * D];
        let packed = kern.pack_v(&v, L, D).unwrap();
        g.bench_function(BenchmarkId::new("packed", kern.name()), |b| {
            b.iter(|| kern.gemm_u8s8_packed(&p, L, &packed, &mut o).unwrap())
        });
        g.bench_function(BenchmarkId::new("unpacked", kern.name()), |b| {
            b.iter(|| kern.gemm_u8s8(&p, &v, L, D, L, &mut o).unwrap())
        });
    }
    g.finish();
}

fn softmax_rows(c: &mut Criterion) {
    let lut = Lut::new(5, 6.6).unwrap();
    let scores: Vec<i32> = bytes(4 * L, 5)
        .chunks(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 12)
        .collect();
    let floats: Vec<f32> = scores[..L].iter().map(|&s| s as f32 * 1e-5).collect();
    let mut g = c.benchmark_group("softmax_row_1024");
    g.throughput(Throughput::Elements(L as u64));
    for kern in Kernel::available() {
        let mut e = vec![0u8; L];
        g.bench_function(BenchmarkId::new("index_softmax", kern.name()), |b| {
            b.iter(|| {
                kern.index_softmax_row(&scores[..L], L, &lut, 1 << 16, &mut e)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("normalize", kern.name()), |b| {
            b.iter(|| {
                let sum = kern
                    .index_softmax_row(&scores[..L], L, &lut, 1 << 16, &mut e)
                    .unwrap();
                kern.normalize_row(&mut e, sum).unwrap()
            })
        });
        let mut f = floats.clone();
        g.bench_function(BenchmarkId::new("softmax_f32", kern.name()), |b| {
            b.iter(|| {
                f.copy_from_slice(&floats);
                kern.softmax_f32_row(&mut f, L).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = gemms, softmax_rows
}

/// Nanoseconds this thread has spent on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat is needed for INTATTENTION_BENCH_CPU")
}

/// Best of fifteen rounds (each at least 50 ms of CPU time) of `f`, in units of `work` per
/// second of this thread's CPU time. Calls are batched so that reading the clock (a few
/// microseconds) does not count.
fn cpu_rate(work: f64, mut f: impl FnMut()) -> f64 {
    // The clock advances in scheduler ticks: calibrate over at least 20 ms of CPU time.
    let t0 = thread_cpu_ns();
    let mut calls = 0u64;
    while thread_cpu_ns() - t0 < 20_000_000 {
        f();
        calls += 1;
    }
    let batch = calls.max(1);
    let mut best = 0f64;
    for _ in 0..15 {
        let start = thread_cpu_ns();
        let mut iters = 0u64;
        let mut spent;
        loop {
            for _ in 0..batch {
                f();
            }
            iters += batch;
            spent = thread_cpu_ns() - start;
            if spent >= 50_000_000 {
                break;
            }
        }
        best = best.max(work * iters as f64 / (spent as f64 * 1e-9));
    }
    best
}

fn cpu_time_report() {
    let q = signed(L * D, 1);
    let k = signed(L * D, 2);
    let v = signed(L * D, 3);
    let p = bytes(L * L, 4);
    let lut = Lut::new(5, 6.6).unwrap();
    let scores: Vec<i32> = bytes(4 * L, 5)
        .chunks(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 12)
        .collect();
    let floats: Vec<f32> = scores.iter().map(|&s| s as f32 * 1e-5).collect();
    let macs = (L * L * D) as f64;
    println!("rates per second of this thread's CPU time");
    for kern in Kernel::available() {
        let name = kern.name();
        if name != "generic" {
            let mut s = vec![0i32; L * L];
            let mut o = vec![0i32; L * D];
            let pk = kern.pack_k(&k, L, D).unwrap();
            let pv = kern.pack_v(&v, L, D).unwrap();
            let r = [
                cpu_rate(macs, || kern.gemm_s8s8_packed(&q, L, &pk, &mut s).unwrap()),
                cpu_rate(macs, || kern.gemm_s8s8_nt(&q, &k, L, L, D, &mut s).unwrap()),
                cpu_rate(macs, || kern.gemm_u8s8_packed(&p, L, &pv, &mut o).unwrap()),
                cpu_rate(macs, || kern.gemm_u8s8(&p, &v, L, D, L, &mut o).unwrap()),
            ];
            let blk = 256;
            let mut sb = vec![0i32; blk * L];
            let mut ob = vec![0i32; blk * D];
            let rb = [
                cpu_rate((blk * L * D) as f64, || {
                    kern.gemm_s8s8_packed(&q[..blk * D], blk, &pk, &mut sb)
                        .unwrap()
                }),
                cpu_rate((blk * L * D) as f64, || {
                    kern.gemm_u8s8_packed(&p[..blk * L], blk, &pv, &mut ob)
                        .unwrap()
                }),
            ];
            println!(
                "{name:>11}: {blk}-row blocks (fused pipeline): scores {:6.1} GMAC/s, PV {:6.1} GMAC/s",
                rb[0] * 1e-9,
                rb[1] * 1e-9
            );
            let packs = [
                cpu_rate(1.0, || drop(kern.pack_k(&k, L, D).unwrap())),
                cpu_rate(1.0, || drop(kern.pack_v(&v, L, D).unwrap())),
            ];
            println!(
                "{name:>11}: packing 1024 x 128: K {:.0} us, V {:.0} us",
                1e6 / packs[0],
                1e6 / packs[1]
            );
            println!(
                "{name:>11}: scores 1024x1024x128 {:6.1} GMAC/s packed, {:6.1} unpacked; \
                 PV 1024x128x1024 {:6.1} GMAC/s packed, {:6.1} unpacked",
                r[0] * 1e-9,
                r[1] * 1e-9,
                r[2] * 1e-9,
                r[3] * 1e-9
            );
        }
        let mut e = vec![0u8; L];
        let mut f = floats.clone();
        let row = &scores[..L];
        let r = [
            cpu_rate(L as f64, || {
                kern.index_softmax_row(row, L, &lut, 1 << 16, &mut e)
                    .unwrap();
            }),
            cpu_rate(L as f64, || {
                let sum = kern
                    .index_softmax_row(row, L, &lut, 1 << 16, &mut e)
                    .unwrap();
                kern.normalize_row(&mut e, sum).unwrap()
            }),
            cpu_rate(L as f64, || {
                f.copy_from_slice(&floats);
                kern.softmax_f32_row(&mut f, L).unwrap()
            }),
        ];
        println!(
            "{name:>11}: rows of 1024: index_softmax {:6.0} M/s, +normalize {:6.0} M/s, \
             softmax_f32 {:6.0} M/s",
            r[0] * 1e-6,
            r[1] * 1e-6,
            r[2] * 1e-6
        );
    }
}

fn main() {
    if std::env::var_os("INTATTENTION_BENCH_CPU").is_some() {
        cpu_time_report();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
