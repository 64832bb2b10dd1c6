//! aarch64-specific kernel checks, on top of the architecture-neutral `tests/kernels.rs`:
//! which kernels this CPU (or qemu CPU model) gets, packed operands reused across row blocks
//! of every size the fused pipeline uses, the exactness argument of the vectorized IndexSoftmax
//! index (ties and near-ties at every bucket boundary, up to T = 2^30), the table path of the
//! Normalized finish, and the f32 softmax around underflow, infinities and NaN.
//!
//! `scripts/test-aarch64.sh` runs this file under several qemu CPU models with
//! `INTATTENTION_EXPECT_KERNELS` set, so a model that silently lost (or gained) a feature fails.
#![cfg(target_arch = "aarch64")]

use intattention::kernels::{Kernel, PackedB};
use intattention::lut::{Lut, DEFAULT_CLIP, MAX_THRESHOLD};
use intattention::reference;

/// The aarch64 kernels (everything but the portable one).
fn arch_kernels() -> Vec<Kernel> {
    Kernel::available()
        .into_iter()
        .filter(|k| k.name() != "generic")
        .collect()
}

/// The portable kernel, the reference of the others.
fn generic() -> Kernel {
    Kernel::generic()
}

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
}

#[test]
fn aarch64_kernel_set_matches_cpu() {
    let names: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
    println!("aarch64 kernels: {}", names.join(","));
    let mut want = vec!["generic", "neon"];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        want.push("dotprod");
    }
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        want.push("i8mm");
    }
    assert_eq!(names, want);
    if let Ok(expect) = std::env::var("INTATTENTION_EXPECT_KERNELS") {
        assert_eq!(names.join(","), expect, "kernel set under this CPU model");
    }
}

/// K and V packed once, then multiplied in row blocks of the sizes the fused pipeline uses
/// (and odd ones), against the reference on the whole matrix.
#[test]
fn packed_operands_reused_across_row_blocks() {
    let mut rng = Rng(1);
    for &(lq, lk, d) in &[(300, 77, 64), (257, 129, 40), (70, 1000, 17), (9, 8, 8)] {
        let q: Vec<i8> = (0..lq * d).map(|_| rng.next() as i8).collect();
        let k: Vec<i8> = (0..lk * d).map(|_| rng.next() as i8).collect();
        let v: Vec<i8> = (0..lk * d).map(|_| rng.next() as i8).collect();
        let p: Vec<u8> = (0..lq * lk).map(|_| rng.next() as u8).collect();
        let mut s_want = vec![0i32; lq * lk];
        generic()
            .gemm_s8s8_nt(&q, &k, lq, lk, d, &mut s_want)
            .unwrap();
        let mut o_want = vec![0i32; lq * d];
        generic().gemm_u8s8(&p, &v, lq, d, lk, &mut o_want).unwrap();
        for kern in arch_kernels() {
            let name = kern.name();
            let pk = kern.pack_k(&k, lk, d).unwrap();
            let pv = kern.pack_v(&v, lk, d).unwrap();
            assert_eq!((pk.n(), pk.k()), (lk, d), "{name}");
            assert_eq!((pv.n(), pv.k()), (d, lk), "{name}");
            let mut s = vec![i32::MIN; lq * lk];
            let mut o = vec![i32::MIN; lq * d];
            let mut i0 = 0;
            for block in [1usize, 7, 8, 9, 32, 31, 256].iter().cycle() {
                if i0 == lq {
                    break;
                }
                let rows = (*block).min(lq - i0);
                kern.gemm_s8s8_packed(
                    &q[i0 * d..(i0 + rows) * d],
                    rows,
                    &pk,
                    &mut s[i0 * lk..(i0 + rows) * lk],
                )
                .unwrap();
                kern.gemm_u8s8_packed(
                    &p[i0 * lk..(i0 + rows) * lk],
                    rows,
                    &pv,
                    &mut o[i0 * d..(i0 + rows) * d],
                )
                .unwrap();
                i0 += rows;
            }
            assert!(s == s_want, "{name}: scores {lq}x{lk}x{d}");
            assert!(o == o_want, "{name}: P x V {lq}x{d}x{lk}");
        }
    }
}

/// Every tail of every tile dimension with operands at the extremes (all -128 against all
/// -128, 255 against -128 and 127): the dot-product kernel's `v + 128` path and the i16
/// widening path are where such values would go wrong.
#[test]
fn gemm_tails_with_extreme_values() {
    for kern in arch_kernels() {
        for m in [1usize, 7, 8, 9, 16, 17] {
            for n in [1usize, 7, 8, 9, 15, 16, 17] {
                for k in [0usize, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 33] {
                    for (av, bv) in [(-128i8, -128i8), (127, -128), (-1, 1)] {
                        let a = vec![av; m * k];
                        let b = vec![bv; n * k];
                        let mut want = vec![0; m * n];
                        let mut got = vec![i32::MIN; m * n];
                        generic().gemm_s8s8_nt(&a, &b, m, n, k, &mut want).unwrap();
                        kern.gemm_s8s8_nt(&a, &b, m, n, k, &mut got).unwrap();
                        assert!(got == want, "{}: s8s8 {m}x{n}x{k} {av} {bv}", kern.name());
                    }
                    for (pv, vv) in [(255u8, -128i8), (255, 127), (1, -1), (128, 0)] {
                        let a = vec![pv; m * k];
                        let b = vec![vv; k * n];
                        let mut want = vec![0; m * n];
                        let mut got = vec![i32::MIN; m * n];
                        generic().gemm_u8s8(&a, &b, m, n, k, &mut want).unwrap();
                        kern.gemm_u8s8(&a, &b, m, n, k, &mut got).unwrap();
                        assert!(got == want, "{}: u8s8 {m}x{n}x{k} {pv} {vv}", kern.name());
                    }
                }
            }
        }
    }
}

/// A packed operand in another kernel's layout must be refused with an error, not read; a
/// plain one is accepted by every kernel. (Truncated or otherwise forged packed buffers cannot
/// be built through the public API: `PackedB`'s fields are private.)
#[test]
fn foreign_packed_operand_is_refused() {
    let (m, n, k) = (3, 9, 10);
    let a = vec![1i8; m * k];
    let b = vec![2i8; n * k];
    for kern in arch_kernels() {
        let mut c = vec![0; m * n];
        kern.gemm_s8s8_packed(&a, m, &PackedB::plain(&b, n, k).unwrap(), &mut c)
            .unwrap();
        assert!(c.iter().all(|&x| x == 2 * k as i32));
        let own = kern.pack_k(&b, n, k).unwrap();
        for other in Kernel::available() {
            let theirs = other.pack_k(&b, n, k).unwrap();
            let mut c = vec![0; m * n];
            let r = kern.gemm_s8s8_packed(&a, m, &theirs, &mut c);
            // A plain (row-major) operand is every kernel's input; another layout is not.
            if theirs.packed_by() == own.packed_by() || theirs.packed_by() == "plain" {
                r.unwrap();
                assert!(c.iter().all(|&x| x == 2 * k as i32));
            } else {
                assert!(
                    r.is_err(),
                    "{}: operand packed by {} accepted",
                    kern.name(),
                    theirs.packed_by()
                );
            }
        }
    }
}

/// The smallest distance with index >= i: `ceil(T (2i - 1) / (2 (N - 1)))`.
fn boundary(i: u64, n1: u64, t: u64) -> u64 {
    (t * (2 * i - 1)).div_ceil(2 * n1)
}

fn check_row(row: &[i32], valid: usize, lut: &Lut, t: i32, what: &str) {
    let mut want = vec![0u8; row.len()];
    let want_sum = generic()
        .index_softmax_row(row, valid, lut, t, &mut want)
        .unwrap();
    for kern in arch_kernels() {
        let mut got = vec![0xAAu8; row.len()];
        let sum = kern
            .index_softmax_row(row, valid, lut, t, &mut got)
            .unwrap();
        if got != want || sum != want_sum {
            let j = (0..row.len()).find(|&j| got[j] != want[j]);
            panic!(
                "{}: {what}: T {t}, N {}, valid {valid}/{}: first difference at {j:?} \
                 (score {:?}), sums {sum} vs {want_sum}",
                kern.name(),
                lut.entries().len(),
                row.len(),
                j.map(|j| row[j])
            );
        }
    }
}

/// Distances `b_i - 1`, `b_i`, `b_i + 1` for every bucket boundary `b_i` of every table size,
/// for thresholds that make the index quotient an exact tie (T a multiple of 2 (N - 1)), that
/// put the quotient `1 / (2T)` below an integer (T up to 2^30, the f64 argument's worst case),
/// and small ones where every bucket is a few distances wide.
#[test]
fn index_softmax_exact_at_every_bucket_boundary() {
    let mut rng = Rng(2);
    for bits in 4..=8u32 {
        let lut = Lut::new(bits, DEFAULT_CLIP).unwrap();
        let n1 = lut.max_index() as u64;
        let tie = (MAX_THRESHOLD as u64 / (2 * n1)) * 2 * n1;
        let mut ts: Vec<u64> = vec![1, 2, 3, 5, n1, n1 + 1, 2 * n1, 2 * n1 + 1, 1000, 65_537];
        ts.extend([
            tie,
            tie - 2 * n1,
            tie + 1,
            MAX_THRESHOLD as u64 - 1,
            MAX_THRESHOLD as u64,
        ]);
        ts.extend((0..3).map(|_| 1 + rng.below(MAX_THRESHOLD as u64)));
        // Exact ties at every boundary: with only round-to-nearest, about 1 in 15 of these
        // lands just below the integer.
        ts.extend((0..12).map(|_| 2 * n1 * (1 + rng.below(MAX_THRESHOLD as u64 / (2 * n1)))));
        for &t in &ts {
            let mut dists = vec![0u64, t, t + 1, 2 * t + 5];
            for i in 1..=n1 {
                let b = boundary(i, n1, t);
                dists.extend([b.saturating_sub(1), b, b + 1]);
            }
            dists.retain(|&d| d <= i32::MAX as u64);
            // The maximum sits at an awkward place; the rest are max - D (all >= i32::MIN).
            let top = i32::MAX - rng.below(1000) as i32;
            let mut row: Vec<i32> = dists
                .iter()
                .map(|&d| (top as i64 - d as i64) as i32)
                .collect();
            row.insert(rng.below(row.len() as u64) as usize, top);
            let t = t as i32;
            check_row(&row, row.len(), &lut, t, "boundaries");
            // Same distances, with the maximum negative (so m - S spans the whole i32 range).
            let low = i32::MIN + (2 * t as i64 + 10).min(i32::MAX as i64) as i32;
            let shifted: Vec<i32> = row
                .iter()
                .map(|&s| (s as i64 - top as i64 + low as i64).max(i32::MIN as i64) as i32)
                .collect();
            check_row(&shifted, shifted.len(), &lut, t, "boundaries, negative max");
        }
    }
}

/// Rows mixing i32::MIN and i32::MAX, every length up to a few vectors (body and tail), every
/// valid prefix length on some of them.
#[test]
fn index_softmax_extreme_scores_and_tails() {
    let mut rng = Rng(3);
    let lut = Lut::new(5, DEFAULT_CLIP).unwrap();
    for len in 0..=70usize {
        for t in [1, 7, 1 << 20, MAX_THRESHOLD] {
            let row: Vec<i32> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => i32::MIN,
                    1 => i32::MAX,
                    2 => i32::MAX - rng.below(2 * t as u64) as i32,
                    _ => rng.next() as i32,
                })
                .collect();
            check_row(&row, len, &lut, t, "extremes");
            let valid = rng.below(len as u64 + 1) as usize;
            check_row(&row, valid, &lut, t, "extremes, prefix");
        }
    }
    // Long rows where every entry is kept: the u32 sum across many vectors.
    let row = vec![i32::MIN; 100_003];
    check_row(&row, row.len(), &lut, MAX_THRESHOLD, "flat row");
}

/// The table path of the Normalized finish (rows of 64 entries or more) for sums from 1 to
/// the largest a row of that length can have, with every byte value present where possible.
#[test]
fn normalize_row_table_path() {
    let mut rng = Rng(4);
    for len in [64usize, 65, 79, 300, 4099] {
        for target in [
            1u64,
            2,
            3,
            254,
            255,
            256,
            509,
            510,
            511,
            1000,
            65_535,
            255 * len as u64,
        ] {
            let target = target.min(255 * len as u64);
            // A row whose sum is `target`: spread it greedily with random caps.
            let mut row = vec![0u8; len];
            let mut left = target;
            for v in row.iter_mut() {
                let x = rng.below(256).min(left);
                *v = x as u8;
                left -= x;
            }
            for v in row.iter_mut() {
                let add = (255 - *v as u64).min(left);
                *v += add as u8;
                left -= add;
            }
            assert_eq!(left, 0);
            let sum = target as u32;
            let mut want = row.clone();
            reference::normalize_row(&mut want, sum);
            for kern in arch_kernels() {
                let mut got = row.clone();
                kern.normalize_row(&mut got, sum).unwrap();
                assert!(got == want, "{}: len {len} sum {sum}", kern.name());
            }
        }
    }
    // Every byte value once (sum 32,640) and a zero sum.
    let row: Vec<u8> = (0..=255).collect();
    let sum: u32 = row.iter().map(|&v| v as u32).sum();
    for kern in arch_kernels() {
        let mut want = row.clone();
        reference::normalize_row(&mut want, sum);
        let mut got = row.clone();
        kern.normalize_row(&mut got, sum).unwrap();
        assert_eq!(got, want, "{}", kern.name());
        let mut z = vec![7u8; 100];
        kern.normalize_row(&mut z, 0).unwrap();
        assert!(z.iter().all(|&v| v == 0));
    }
}

/// Ulp distance between two finite f32 of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

/// The vectorized exp against libm over the whole range that does not round to zero, through
/// a two-entry row `[0, x]` (softmax `[1, e^x] / (1 + e^x)`), plus infinities and NaN.
#[test]
fn softmax_f32_exp_range_and_special_values() {
    for kern in arch_kernels() {
        let name = kern.name();
        let mut worst = 0;
        let mut x = -103.9f32;
        while x < 0.0 {
            let mut want = [0.0, x];
            generic().softmax_f32_row(&mut want, 2).unwrap();
            let mut got = [0.0, x];
            kern.softmax_f32_row(&mut got, 2).unwrap();
            // Subnormal results have fewer significant bits: compare them in absolute ulps.
            let u = ulps(got[1], want[1]);
            worst = worst.max(if want[1] < f32::MIN_POSITIVE { 0 } else { u });
            assert!(
                u <= 4,
                "{name}: exp({x}) gives {:e}, libm {:e}",
                got[1],
                want[1]
            );
            assert!(ulps(got[0], want[0]) <= 2, "{name}: 1/(1+e^{x})");
            x += 0.0173;
        }
        println!("{name}: worst exp error {worst} ulp on normal results");
        // -inf entries weigh nothing; +inf, an all -inf row and NaN give NaN like the reference.
        let cases: [&[f32]; 5] = [
            &[f32::NEG_INFINITY, 1.0, 2.0, f32::NEG_INFINITY, 0.5],
            &[1.0, f32::INFINITY, 2.0],
            &[f32::NEG_INFINITY; 9],
            &[1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
            &[f32::MAX, -f32::MAX, 0.0],
        ];
        for row in cases {
            let mut want = row.to_vec();
            generic().softmax_f32_row(&mut want, row.len()).unwrap();
            let mut got = row.to_vec();
            kern.softmax_f32_row(&mut got, row.len()).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    g.is_nan(),
                    w.is_nan(),
                    "{name}: {row:?} -> {got:?} vs {want:?}"
                );
                if !w.is_nan() {
                    assert!(ulps(*g, *w) <= 4, "{name}: {row:?} -> {got:?} vs {want:?}");
                }
            }
        }
    }
}
