//! Every kernel in `kernels::available()` against the portable one (`kernels::generic::Generic`,
//! i.e. `intattention::reference`): integer results bit for bit, the float softmax within a
//! stated tolerance of an f64 evaluation. Architecture-neutral: on aarch64 (also run under
//! qemu in CI, hence fewer cases there) it tests that architecture's kernels.

use intattention::kernels::{Kernel, PackedB, MAX_K_S8S8, MAX_K_U8S8};
use intattention::lut::{Lut, MAX_THRESHOLD};
use proptest::prelude::*;

/// Scales case counts down under emulation.
fn cases(n: u32) -> u32 {
    if cfg!(target_arch = "aarch64") {
        (n / 4).max(4)
    } else {
        n
    }
}

/// Small deterministic generator (splitmix64) for bulk data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn i8s(&mut self, n: usize, fill: Fill) -> Vec<i8> {
        (0..n)
            .map(|_| match fill {
                Fill::Random => self.next() as i8,
                Fill::Min => -128,
                Fill::Max => 127,
                Fill::Extremes => [127i8, -128, -127, 0][self.below(4) as usize],
            })
            .collect()
    }
    fn u8s(&mut self, n: usize, fill: Fill) -> Vec<u8> {
        (0..n)
            .map(|_| match fill {
                Fill::Random => self.next() as u8,
                Fill::Min => 0,
                Fill::Max => 255,
                Fill::Extremes => [255u8, 0, 254, 1][self.below(4) as usize],
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    Min,
    Max,
    Extremes,
}

const FILLS: [Fill; 4] = [Fill::Random, Fill::Min, Fill::Max, Fill::Extremes];

fn fill_strategy() -> impl Strategy<Value = Fill> {
    prop_oneof![
        4 => Just(Fill::Random),
        1 => Just(Fill::Min),
        1 => Just(Fill::Max),
        2 => Just(Fill::Extremes),
    ]
}

/// Sizes around the tile edges of every kernel we have (rows 4/6/8, columns 8/16/64, depth
/// groups 2/4/8) and past one cache block.
const EDGES: [usize; 19] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
];

/// The kernels under test: every available one except the portable kernel, which is the
/// reference itself.
fn under_test() -> Vec<Kernel> {
    Kernel::available()
        .into_iter()
        .filter(|k| *k != Kernel::generic())
        .collect()
}

/// Checks one s8 x s8^T product on every kernel, unpacked and packed (K packed once, A in
/// two blocks of rows as the fused pipeline does), plus a plain `PackedB`.
fn check_s8s8(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) {
    let mut want = vec![0i32; m * n];
    Kernel::generic()
        .gemm_s8s8_nt(a, b, m, n, k, &mut want)
        .unwrap();
    for kern in under_test() {
        let name = kern.name();
        let mut got = vec![i32::MIN; m * n];
        kern.gemm_s8s8_nt(a, b, m, n, k, &mut got).unwrap();
        assert!(got == want, "{name}: gemm_s8s8_nt {m}x{n}x{k} differs");

        let packed = kern.pack_k(b, n, k).unwrap();
        let split = m / 2;
        let mut got = vec![i32::MIN; m * n];
        let (c0, c1) = got.split_at_mut(split * n);
        kern.gemm_s8s8_packed(&a[..split * k], split, &packed, c0)
            .unwrap();
        kern.gemm_s8s8_packed(&a[split * k..], m - split, &packed, c1)
            .unwrap();
        assert!(got == want, "{name}: gemm_s8s8_packed {m}x{n}x{k} differs");

        let mut got = vec![i32::MIN; m * n];
        kern.gemm_s8s8_packed(a, m, &PackedB::plain(b, n, k).unwrap(), &mut got)
            .unwrap();
        assert!(
            got == want,
            "{name}: gemm_s8s8_packed (plain B) {m}x{n}x{k} differs"
        );

        // Strided C: the kernel's own stride, dense, and one odd stride; entries between rows
        // must keep their sentinel.
        const SENTINEL: i32 = 0x5A5A_5A5A;
        for ldc in [kern.s_row_stride(n), n, n + 5] {
            assert!(ldc >= n, "{name}: s_row_stride({n}) = {ldc}");
            for bv in [&packed, &PackedB::plain(b, n, k).unwrap()] {
                let len = if m == 0 { 0 } else { (m - 1) * ldc + n };
                let mut got = vec![SENTINEL; len];
                kern.gemm_s8s8_packed_strided(a, m, bv, &mut got, ldc)
                    .unwrap();
                for i in 0..m {
                    let row = &got[i * ldc..];
                    assert!(
                        row[..n] == want[i * n..(i + 1) * n],
                        "{name}: gemm_s8s8_packed_strided ldc {ldc} ({}) {m}x{n}x{k} row {i} differs",
                        bv.packed_by()
                    );
                    if i + 1 < m {
                        assert!(
                            row[n..ldc].iter().all(|&x| x == SENTINEL),
                            "{name}: gemm_s8s8_packed_strided ldc {ldc} wrote between rows"
                        );
                    }
                }
            }
        }
    }
}

/// Same for u8 x s8 (P x V).
fn check_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize) {
    let mut want = vec![0i32; m * n];
    Kernel::generic()
        .gemm_u8s8(a, b, m, n, k, &mut want)
        .unwrap();
    for kern in under_test() {
        let name = kern.name();
        let mut got = vec![i32::MIN; m * n];
        kern.gemm_u8s8(a, b, m, n, k, &mut got).unwrap();
        assert!(got == want, "{name}: gemm_u8s8 {m}x{n}x{k} differs");

        let packed = kern.pack_v(b, k, n).unwrap();
        let split = m / 2;
        let mut got = vec![i32::MIN; m * n];
        let (c0, c1) = got.split_at_mut(split * n);
        kern.gemm_u8s8_packed(&a[..split * k], split, &packed, c0)
            .unwrap();
        kern.gemm_u8s8_packed(&a[split * k..], m - split, &packed, c1)
            .unwrap();
        assert!(got == want, "{name}: gemm_u8s8_packed {m}x{n}x{k} differs");

        let mut got = vec![i32::MIN; m * n];
        kern.gemm_u8s8_packed(a, m, &PackedB::plain(b, n, k).unwrap(), &mut got)
            .unwrap();
        assert!(
            got == want,
            "{name}: gemm_u8s8_packed (plain B) {m}x{n}x{k} differs"
        );

        // Strided A: the kernel's own stride, dense, and one odd stride, with bytes between
        // rows that must not count (0xA5 garbage, 255 in case a kernel multiplies them).
        for lda in [kern.p_row_stride(k), k, k + 3] {
            assert!(lda >= k, "{name}: p_row_stride({k}) = {lda}");
            for junk in [0xA5u8, 255] {
                let mut sa = vec![junk; m * lda];
                for (dst, src) in sa
                    .chunks_exact_mut(lda.max(1))
                    .zip(a.chunks_exact(k.max(1)))
                {
                    dst[..k].copy_from_slice(src);
                }
                for bv in [&packed, &PackedB::plain(b, n, k).unwrap()] {
                    let mut got = vec![i32::MIN; m * n];
                    kern.gemm_u8s8_packed_strided(&sa, lda, m, bv, &mut got)
                        .unwrap();
                    assert!(
                        got == want,
                        "{name}: gemm_u8s8_packed_strided lda {lda} ({}) {m}x{n}x{k} differs",
                        bv.packed_by()
                    );
                }
            }
        }
    }
}

/// (m, n, k) triples: each dimension walks the edge sizes while the others stay at awkward
/// values, plus shapes large enough to cross every kernel's depth and row blocks.
fn edge_shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for &x in &EDGES {
        v.push((x, 17, 33));
        v.push((13, x, 7));
        v.push((7, 65, x));
    }
    v.push((1, 1, 1));
    // Few rows (a decoding step: 1-4 query rows per key/value head, or a few more) against
    // whole panels at depths that take the kernels' vector packing paths (multiples of 16),
    // one that does not (40), and depths past the small-strip size (1040).
    for m in 1..=13 {
        for (n, k) in [(16, 32), (24, 128), (8, 256), (17, 48), (16, 40)] {
            v.push((m, n, k));
        }
    }
    v.push((4, 16, 1040));
    v.push((3, 9, 1024));
    v
}

/// Shapes that cross every kernel's row block (192 rows), depth block (256 or 512) and
/// several panels, checked with fewer fills since the scalar reference is slow in debug builds.
const LARGE_SHAPES: [(usize, usize, usize); 2] = [(200, 70, 520), (5, 257, 1030)];

#[test]
fn gemm_s8s8_edge_shapes_all_fills() {
    let mut rng = Rng(1);
    for (m, n, k) in edge_shapes() {
        for fill in FILLS {
            let a = rng.i8s(m * k, fill);
            let b = rng.i8s(n * k, fill);
            check_s8s8(&a, &b, m, n, k);
        }
        // -128 on one side only, and mixed with 127 on the other.
        let a = rng.i8s(m * k, Fill::Min);
        let b = rng.i8s(n * k, Fill::Max);
        check_s8s8(&a, &b, m, n, k);
        check_s8s8(&b[..n * k], &a[..m.min(n) * k], n, m.min(n), k);
    }
    for (m, n, k) in LARGE_SHAPES {
        for fill in [Fill::Random, Fill::Extremes] {
            let a = rng.i8s(m * k, fill);
            let b = rng.i8s(n * k, fill);
            check_s8s8(&a, &b, m, n, k);
        }
    }
}

#[test]
fn gemm_u8s8_edge_shapes_all_fills() {
    let mut rng = Rng(2);
    for (m, n, k) in edge_shapes() {
        for fill in FILLS {
            let a = rng.u8s(m * k, fill);
            let b = rng.i8s(k * n, fill);
            check_u8s8(&a, &b, m, n, k);
        }
        // P = 255 everywhere (every entry tied with the row max) against 127 and -128: the
        // pairs that saturate a vpmaddubsw-based product.
        let a = rng.u8s(m * k, Fill::Max);
        for fill in [Fill::Max, Fill::Min] {
            let b = rng.i8s(k * n, fill);
            check_u8s8(&a, &b, m, n, k);
        }
    }
    for (m, n, k) in LARGE_SHAPES {
        for fill in [Fill::Random, Fill::Extremes] {
            let a = rng.u8s(m * k, fill);
            let b = rng.i8s(k * n, fill);
            check_u8s8(&a, &b, m, n, k);
        }
    }
}

/// At the largest allowed depths the extreme products reach the edge of i32.
#[test]
fn gemm_largest_depths_are_exact() {
    let (m, n) = (2, 3);
    let k = MAX_K_S8S8;
    let a = vec![-128i8; m * k];
    let b = vec![-128i8; n * k];
    check_s8s8(&a, &b, m, n, k);
    let mut want = vec![0i32; m * n];
    Kernel::generic()
        .gemm_s8s8_nt(&a, &b, m, n, k, &mut want)
        .unwrap();
    assert_eq!(want[0], 128 * 128 * k as i32);

    let k = MAX_K_U8S8;
    let p = vec![255u8; m * k];
    for v in [-128i8, 127] {
        let b = vec![v; k * n];
        check_u8s8(&p, &b, m, n, k);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(48)))]

    #[test]
    fn gemm_s8s8_random(m in 0usize..40, n in 0usize..140, k in 0usize..300,
                        fa in fill_strategy(), fb in fill_strategy(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let a = rng.i8s(m * k, fa);
        let b = rng.i8s(n * k, fb);
        check_s8s8(&a, &b, m, n, k);
    }

    #[test]
    fn gemm_u8s8_random(m in 0usize..40, n in 0usize..140, k in 0usize..600,
                        fa in fill_strategy(), fb in fill_strategy(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let a = rng.u8s(m * k, fa);
        let b = rng.i8s(k * n, fb);
        check_u8s8(&a, &b, m, n, k);
    }
}

/// Runs IndexSoftmax (and the Normalized finish) on one row with every kernel.
fn check_index_softmax(row: &[i32], valid: usize, lut: &Lut, threshold: i32) {
    let mut want = vec![0xaau8; row.len()];
    let want_sum = Kernel::generic()
        .index_softmax_row(row, valid, lut, threshold, &mut want)
        .unwrap();
    let mut want_norm = want.clone();
    Kernel::generic()
        .normalize_row(&mut want_norm, want_sum)
        .unwrap();
    for kern in under_test() {
        let name = kern.name();
        let mut got = vec![0x55u8; row.len()];
        let sum = kern
            .index_softmax_row(row, valid, lut, threshold, &mut got)
            .unwrap();
        let n = lut.entries().len();
        let len = row.len();
        assert_eq!(
            sum, want_sum,
            "{name}: sum, len {len} valid {valid} T {threshold} N {n}"
        );
        if got != want {
            let j = (0..len).find(|&j| got[j] != want[j]).unwrap();
            panic!(
                "{name}: e[{j}] = {} want {} (score {}, len {len}, valid {valid}, T {threshold}, N {n})",
                got[j], want[j], row[j]
            );
        }
        kern.normalize_row(&mut got, sum).unwrap();
        assert!(
            got == want_norm,
            "{name}: normalize_row, sum {sum}, len {len}"
        );
    }
}

fn luts() -> Vec<Lut> {
    let mut v: Vec<Lut> = (4..=8).map(|b| Lut::new(b, 6.6).unwrap()).collect();
    v.push(Lut::new(5, 0.5).unwrap());
    v.push(Lut::new(8, 20.0).unwrap());
    v
}

fn thresholds(rng: &mut Rng) -> Vec<i32> {
    vec![
        1,
        2,
        3,
        31,
        1 + rng.below(1000) as i32,
        1 + rng.below(MAX_THRESHOLD as u64) as i32,
        MAX_THRESHOLD - 1,
        MAX_THRESHOLD,
    ]
}

/// Scores of one row: full-range random, small spreads, i32 extremes, ties with the max.
fn score_row(rng: &mut Rng, len: usize, kind: u64, threshold: i32) -> Vec<i32> {
    (0..len)
        .map(|_| match kind {
            0 => rng.next() as i32,
            1 => (rng.below(3 * threshold as u64 + 3) as i64 - threshold as i64) as i32,
            2 => [i32::MIN, i32::MAX, 0, -1][rng.below(4) as usize],
            3 => [i32::MIN, i32::MIN + 1][rng.below(2) as usize],
            _ => 1000 - rng.below(4) as i32,
        })
        .collect()
}

#[test]
fn index_softmax_rows_1_to_70_and_long() {
    let mut rng = Rng(3);
    let lengths: Vec<usize> = (1..=70).chain([127, 128, 129, 1000, 65_537]).collect();
    for lut in luts() {
        for &len in &lengths {
            let long = len > 1000;
            let ts = thresholds(&mut rng);
            for kind in 0..5 {
                if long && kind > 1 {
                    continue;
                }
                // Each (length, kind) gets one threshold, cycling through all of them.
                let threshold = ts[(len + kind as usize) % ts.len()];
                let row = score_row(&mut rng, len, kind, threshold);
                let mut valids = vec![0, 1, len, rng.below(len as u64 + 1) as usize];
                if long {
                    valids.truncate(3);
                }
                for valid in valids {
                    check_index_softmax(&row, valid, &lut, threshold);
                }
            }
        }
    }
}

/// `D` at and next to every rounding boundary of the index: the smallest `D` with index `i`
/// is `ceil(T (2i - 1) / (2 (N - 1)))`.
#[test]
fn index_softmax_bucket_boundaries() {
    let mut rng = Rng(4);
    let iters = if cfg!(target_arch = "aarch64") {
        40
    } else {
        300
    };
    let mut ts: Vec<i64> = vec![1, 2, 3, 30, 31, 62, 255, 510, 1 << 20, MAX_THRESHOLD as i64];
    ts.extend((0..iters).map(|_| 1 + rng.below(MAX_THRESHOLD as u64) as i64));
    ts.extend((0..iters / 4).map(|_| 1 + rng.below(600) as i64));
    for lut in luts() {
        let n1 = lut.max_index() as i64;
        for &t in &ts {
            let mut ds = vec![0i64, t - 1, t, t + 1, 2 * t, u32::MAX as i64];
            // Only the neighbours of each boundary too: where no entry sits on one, the x86
            // kernels' f32 screen decides whole groups itself (see `index_consts_f32`).
            let mut near = vec![0i64];
            for i in 1..=n1 {
                let b = (t * (2 * i - 1) + 2 * n1 - 1) / (2 * n1);
                ds.extend([b - 1, b, b + 1]);
                near.extend([b - 2, b - 1, b + 1, b + 2]);
            }
            for ds in [ds, near] {
                // Scores m - D with m = i32::MAX, so D up to 2^32 - 1 stays representable.
                let top = i32::MAX as i64;
                let row: Vec<i32> = std::iter::once(i32::MAX)
                    .chain(
                        ds.iter()
                            .filter(|&&d| (0..=u32::MAX as i64).contains(&d))
                            .map(|&d| (top - d) as i32),
                    )
                    .collect();
                check_index_softmax(&row, row.len(), &lut, t as i32);
            }
        }
    }
}

#[test]
fn normalize_row_small_and_large_sums() {
    // Sums below 255 (rows whose max entry is not 255, as a caller may pass) and above.
    let mut rng = Rng(5);
    for len in [1usize, 2, 3, 17, 64, 65, 200, 5000] {
        for cap in [1u64, 2, 7, 100, 256] {
            let p: Vec<u8> = (0..len).map(|_| rng.below(cap) as u8).collect();
            let sum: u32 = p.iter().map(|&x| x as u32).sum();
            let mut want = p.clone();
            Kernel::generic().normalize_row(&mut want, sum).unwrap();
            for kern in under_test() {
                let mut got = p.clone();
                kern.normalize_row(&mut got, sum).unwrap();
                assert!(
                    got == want,
                    "{}: normalize_row len {len} sum {sum}",
                    kern.name()
                );
            }
        }
    }
}

/// Any sum from 255 up (the range where every result fits a byte whatever the row holds),
/// exhaustively up to 3000 and then at random and at the extremes, against every byte value:
/// this exercises the exact quotient at each rounding tie and near-tie.
#[test]
fn normalize_row_every_value_many_sums() {
    let p: Vec<u8> = (0..=255).collect();
    let mut rng = Rng(7);
    let count = if cfg!(target_arch = "aarch64") {
        300
    } else {
        3000
    };
    let sums = (255u32..3000)
        .chain((0..count).map(|_| 255 + rng.below(u32::MAX as u64 - 255) as u32))
        .chain([
            u32::MAX,
            u32::MAX - 1,
            255 * ((1 << 24) - 1),
            1 << 31,
            (1 << 31) - 1,
        ]);
    for sum in sums {
        let mut want = p.clone();
        Kernel::generic().normalize_row(&mut want, sum).unwrap();
        for kern in under_test() {
            let mut got = p.clone();
            kern.normalize_row(&mut got, sum).unwrap();
            assert!(got == want, "{}: normalize_row with sum {sum}", kern.name());
        }
    }
}

/// f64 softmax of the f32 differences `x - max` that every implementation computes first.
fn softmax_f64(row: &[f32], valid: usize) -> Vec<f64> {
    let mut out = vec![0f64; row.len()];
    if valid == 0 {
        return out;
    }
    let m = row[..valid]
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f64;
    for (o, &v) in out.iter_mut().zip(&row[..valid]) {
        *o = ((v - m) as f64).exp();
        sum += *o;
    }
    for o in out[..valid].iter_mut() {
        *o /= sum;
    }
    out
}

/// Relative tolerance per element against the f64 evaluation, on top of the reference's own
/// error: a few ulp of exp plus the roundings of the sum, its reciprocal and the product.
/// Results that underflow to subnormals are compared with an absolute tolerance of a few
/// subnormal ulps.
const SOFTMAX_REL_TOL: f64 = 1e-6;
const SOFTMAX_ABS_TOL: f64 = 1e-43;

/// Every kernel must be within `SOFTMAX_REL_TOL` (relative) of the f64 softmax, plus the
/// reference's own largest relative error on that row: the reference sums in f32 in order,
/// an error that grows with the row length (about 1e-5 at 65,537 entries), and a kernel that
/// sums in another order cannot match it more closely than that.
fn check_softmax(row: &[f32], valid: usize) {
    let truth = softmax_f64(row, valid);
    let mut reference = row.to_vec();
    Kernel::generic()
        .softmax_f32_row(&mut reference, valid)
        .unwrap();
    let ref_rel = (0..valid)
        .filter(|&j| truth[j] > 1e-30)
        .map(|j| (reference[j] as f64 - truth[j]).abs() / truth[j])
        .fold(0.0, f64::max);
    assert!(
        ref_rel < 1e-3,
        "reference error {ref_rel} on a row of {}",
        row.len()
    );
    for kern in under_test() {
        let name = kern.name();
        let mut got = row.to_vec();
        kern.softmax_f32_row(&mut got, valid).unwrap();
        for j in 0..row.len() {
            if j >= valid {
                assert_eq!(got[j].to_bits(), 0, "{name}: masked entry {j} not +0");
                continue;
            }
            let (g, t) = (got[j] as f64, truth[j]);
            assert!(
                (g - t).abs() <= (SOFTMAX_REL_TOL + ref_rel) * t + SOFTMAX_ABS_TOL,
                "{name}: softmax[{j}] = {g:e}, f64 {t:e}, reference {:e} (len {}, valid {valid}, x {})",
                reference[j],
                row.len(),
                row[j]
            );
        }
    }
}

#[test]
fn softmax_f32_rows() {
    let mut rng = Rng(6);
    let lengths: Vec<usize> = (1..=70).chain([255, 256, 1024, 65_537]).collect();
    for &len in &lengths {
        for kind in 0..4 {
            let row: Vec<f32> = (0..len)
                .map(|_| {
                    let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
                    match kind {
                        0 => 20.0 * u - 10.0,
                        1 => 240.0 * u - 200.0, // many results underflow to (sub)normals
                        2 => 3.5,
                        _ => (1e4 * u).round() * 0.01,
                    }
                })
                .collect();
            for valid in [0, 1, len, rng.below(len as u64 + 1) as usize] {
                check_softmax(&row, valid);
            }
        }
    }
}

/// Every available kernel is found by name, an unknown or unsupported name is an error that
/// names it and the available ones, and the default is the fastest (the last) one.
#[test]
fn kernels_by_name_and_the_default() {
    let avail = Kernel::available();
    for k in &avail {
        assert_eq!(Kernel::by_name(k.name()).unwrap(), *k);
    }
    let err = Kernel::by_name("no-such-kernel").unwrap_err();
    assert!(err.to_string().contains("no-such-kernel"), "{err}");
    assert!(err.to_string().contains("generic"), "{err}");
    assert_eq!(Kernel::best(), *avail.last().unwrap());
    assert_eq!(avail[0], Kernel::generic());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_kernels_follow_cpu_features() {
    let names: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
    let has = |f: bool, name: &str| assert_eq!(f, names.contains(&name), "{name} in {names:?}");
    has(
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "avx2",
    );
    let base = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    has(base, "avx512vnni");
    has(base && is_x86_feature_detected!("avx512vbmi"), "avx512vbmi");
    // AMX also needs the OS to grant tile data to the process, so the CPU bits alone do not
    // decide: the kernel must not appear without them (CPUID leaf 7, EDX bits 24 and 25).
    let amx_cpu = (std::arch::x86_64::__cpuid_count(7, 0).edx >> 24) & 3 == 3;
    if names.contains(&"amx") {
        assert!(
            amx_cpu && base,
            "amx listed without AMX-INT8 or AVX-512: {names:?}"
        );
    }
    println!("kernels: {names:?} (CPU reports AMX-INT8: {amx_cpu})");
    assert_eq!(names[0], "generic");
}
