//! The core operations against docs/numerics.md, bit for bit: the exponent table, the thresholds,
//! IndexSoftmax in all three finishes (hand-worked rows, edge rows, random rows against an
//! independent implementation written here from the contract's text), the integer GEMMs and the
//! quantizer. Every kernel this CPU can run is checked, not only the dispatched one.

mod support;

use intattention::kernels::{MAX_K_S8S8, MAX_K_U8S8};
use intattention::lut::MAX_ROW_LEN;
use intattention::lut::{threshold_exact, threshold_paper_sim, Lut};
use intattention::ops::gemm::{gemm_s8s8_nt, gemm_u8s8};
use intattention::*;
use proptest::prelude::*;
use std::cmp::Ordering;

/// docs/numerics.md section 3, the b = 5, c = 6.6 table as printed there.
const SPEC_TABLE_B5: [u8; 32] = [
    255, 206, 167, 135, 109, 88, 71, 57, 46, 38, 30, 25, 20, 16, 13, 10, 8, 7, 6, 4, 4, 3, 2, 2, 2,
    1, 1, 1, 1, 1, 0, 0,
];

const T_MAX: i32 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// An independent implementation of docs/numerics.md section 3, written from the text in wide integers.
// ---------------------------------------------------------------------------------------------

/// Exponent pass: `e[j] = LUT[round_half_up(min(m - S, T) (N-1) / T)]` over kept entries.
fn spec_exponents(row: &[i32], keep: &[bool], t: i32, lut: &[u8]) -> (Vec<u8>, u64) {
    let n1 = (lut.len() - 1) as i128;
    let t = t as i128;
    let m = row
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(&s, _)| s as i128)
        .max();
    let mut e = vec![0u8; row.len()];
    let mut sum = 0u64;
    if let Some(m) = m {
        for j in 0..row.len() {
            if keep[j] {
                let d = (m - row[j] as i128).min(t);
                let idx = (2 * d * n1 + t) / (2 * t);
                e[j] = lut[idx as usize];
                sum += e[j] as u64;
            }
        }
    }
    (e, sum)
}

/// Normalized finish: `P = round_half_up(255 e / sum)`, zeros when `sum == 0`.
fn spec_normalized(e: &[u8], sum: u64) -> Vec<u8> {
    e.iter()
        .map(|&x| {
            if sum == 0 {
                0
            } else {
                ((2 * 255 * x as u64 + sum) / (2 * sum)) as u8
            }
        })
        .collect()
}

/// Paper-simulation mode: `idx = trunc(f32(D (N-1)) / f32(T_sim))`,
/// `P = round_half_even(f32(255 e) / f32(sum))`, zeros for a fully masked row.
fn spec_paper_sim(row: &[i32], keep: &[bool], t_sim: i32, lut: &[u8]) -> (Vec<u8>, u64) {
    let n1 = (lut.len() - 1) as i64;
    let m = row
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(&s, _)| s as i64)
        .max();
    let mut e = vec![0u8; row.len()];
    let mut sum = 0u64;
    if let Some(m) = m {
        for j in 0..row.len() {
            if keep[j] {
                let d = (m - row[j] as i64).min(t_sim as i64);
                let idx = ((d * n1) as f32 / t_sim as f32).trunc() as usize;
                e[j] = lut[idx];
                sum += e[j] as u64;
            }
        }
    }
    let p = e
        .iter()
        .map(|&x| {
            if sum == 0 {
                0
            } else {
                ((x as u32 * 255) as f32 / sum as f32).round_ties_even() as u8
            }
        })
        .collect();
    (p, sum)
}

/// What `index_softmax` must return for one row under `variant`: (P or e, row sum).
fn spec_row(
    variant: SoftmaxVariant,
    row: &[i32],
    keep: &[bool],
    t: i32,
    lut: &[u8],
) -> (Vec<u8>, u64) {
    match variant {
        SoftmaxVariant::Deferred => spec_exponents(row, keep, t, lut),
        SoftmaxVariant::Normalized => {
            let (e, sum) = spec_exponents(row, keep, t, lut);
            (spec_normalized(&e, sum), sum)
        }
        SoftmaxVariant::PaperSim => spec_paper_sim(row, keep, t, lut),
        v => unreachable!("no test case uses {v}"),
    }
}

/// One unmasked row through every path that computes it: the public operation without a mask
/// (the active kernel), with an all-true dense mask (the scalar reference), and each kernel this
/// CPU can run. All must agree; returns their common result.
fn softmax_row(variant: SoftmaxVariant, row: &[i32], t: i32) -> (Vec<u8>, u32) {
    let params = IndexSoftmaxParams::new(t, variant).unwrap();
    let mut out = vec![0xAAu8; row.len()];
    let sums = index_softmax(row, 1, row.len(), &params, ScoreMask::None, &mut out).unwrap();
    let first = (out, sums.as_slice()[0]);
    let keep = vec![true; row.len()];
    let mut out = vec![0xAAu8; row.len()];
    let sums = index_softmax(
        row,
        1,
        row.len(),
        &params,
        ScoreMask::Dense(&keep),
        &mut out,
    )
    .unwrap();
    assert!(
        first == (out, sums.as_slice()[0]),
        "{variant}: dense-mask path differs"
    );
    if variant != SoftmaxVariant::PaperSim {
        let lut = params.lut();
        for kernel in Kernel::available() {
            let mut e = vec![0xAAu8; row.len()];
            let sum = kernel
                .index_softmax_row(row, row.len(), &lut, t, &mut e)
                .unwrap();
            if variant == SoftmaxVariant::Normalized {
                kernel.normalize_row(&mut e, sum).unwrap();
            }
            assert!(
                first == (e, sum),
                "{variant}: kernel {} differs",
                kernel.name()
            );
        }
    }
    first
}

// ---------------------------------------------------------------------------------------------
// Exponent table
// ---------------------------------------------------------------------------------------------

#[test]
fn lut_b5_c6_6_is_the_spec_table() {
    let lut = Lut::new(5, 6.6).unwrap();
    assert_eq!(lut.entries(), &SPEC_TABLE_B5[..]);
    assert_eq!(lut.max_index(), 31);
    // The parameters' default table is the same one.
    let p = IndexSoftmaxParams::new(100, SoftmaxVariant::Normalized).unwrap();
    assert_eq!(p.lut().entries(), &SPEC_TABLE_B5[..]);
}

#[test]
fn lut_endpoints_and_monotone_for_every_b() {
    for b in 4..=8u32 {
        for clip in [0.01f32, 1.0, 4.0, 6.6, 8.0, 12.5, 100.0] {
            let lut = Lut::new(b, clip).unwrap();
            let e = lut.entries();
            let n = 1usize << b;
            assert_eq!(e.len(), n, "b={b}");
            assert_eq!(lut.max_index() as usize, n - 1);
            assert_eq!(e[0], 255, "b={b} c={clip}");
            assert_eq!(e[n - 1], 0, "b={b} c={clip}");
            assert!(e.windows(2).all(|w| w[0] >= w[1]), "b={b} c={clip}: {e:?}");
            // Interior entries: round_half_even(255 exp(-c i / (N-1))).
            for (i, &v) in e.iter().enumerate().take(n - 1).skip(1) {
                let x = 255.0 * (-(clip as f64) * i as f64 / (n - 1) as f64).exp();
                assert_eq!(v, x.round_ties_even() as u8, "b={b} c={clip} i={i}");
            }
        }
    }
}

#[test]
fn lut_rejects_bits_outside_4_to_8_and_bad_clips() {
    for b in [0u32, 1, 3, 9, 16, 32, u32::MAX] {
        assert!(Lut::new(b, 6.6).is_err(), "b={b}");
        let p = IndexSoftmaxParams::new(10, SoftmaxVariant::Deferred).unwrap();
        assert!(p.with_table_bits(b).is_err(), "b={b}");
    }
    for c in [
        0.0f32,
        -0.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        assert!(Lut::new(5, c).is_err(), "clip={c}");
        let p = IndexSoftmaxParams::new(10, SoftmaxVariant::Deferred).unwrap();
        assert!(p.with_clip(c).is_err(), "clip={c}");
        assert!(threshold_exact(c, 1.0, 1.0, 1.0).is_err(), "clip={c}");
        assert!(threshold_paper_sim(c, 1.0, 1.0, 1.0).is_err(), "clip={c}");
    }
    // Parameters cannot be built by hand (private fields): every constructor checks them.
    assert!(IndexSoftmaxParams::new(10, SoftmaxVariant::Normalized)
        .unwrap()
        .with_table_bits(9)
        .is_err());
}

// ---------------------------------------------------------------------------------------------
// Hand-worked rows (N - 1 = 31, table SPEC_TABLE_B5)
// ---------------------------------------------------------------------------------------------

#[test]
fn hand_worked_row_0_minus_half_t_minus_t_i32_min() {
    // T = 62, row [0, -31, -62, i32::MIN]: m = 0.
    //   D = [0, 31, 62, min(2^31, 62) = 62]
    //   idx = (2 D 31 + 62) / 124 = [62/124 = 0, 1984/124 = 16, 3906/124 = 31, 31]
    //   e = [LUT[0], LUT[16], LUT[31], LUT[31]] = [255, 8, 0, 0], sum = 263
    let row = [0, -31, -62, i32::MIN];
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, 62);
    assert_eq!((e.as_slice(), sum), (&[255u8, 8, 0, 0][..], 263));
    // Normalized: (510 e + 263) / 526:
    //   255 -> 130313 / 526 = 247 (255*255/263 = 247.24)
    //   8   -> 4343 / 526 = 8      (255*8/263 = 7.76)
    let (p, sum) = softmax_row(SoftmaxVariant::Normalized, &row, 62);
    assert_eq!((p.as_slice(), sum), (&[247u8, 8, 0, 0][..], 263));
    // PaperSim (T_sim = 62): idx = trunc(31 D / 62) = [0, 15, 31, 31]
    //   e = [255, LUT[15] = 10, 0, 0], sum = 265
    //   P = rne(255 e / 265) = [rne(245.38) = 245, rne(9.62) = 10, 0, 0]
    let (p, sum) = softmax_row(SoftmaxVariant::PaperSim, &row, 62);
    assert_eq!((p.as_slice(), sum), (&[245u8, 10, 0, 0][..], 265));
}

#[test]
fn hand_worked_row_index_ties_round_half_up_but_paper_sim_truncates() {
    // T = 62, row [0, -1, -3, -31, -62, i32::MIN] (m = 0).
    //   D          = [0, 1, 3, 31, 62, 62]
    //   D 31 / T   = [0, 0.5, 1.5, 15.5, 31, 31]
    //   exact idx  = round_half_up = [0, 1, 2, 16, 31, 31]
    //              (check: (62 D + 62) / 124 = [0, 124/124 = 1, 248/124 = 2, 1984/124 = 16, 31, 31])
    //   e = [255, 206, 167, 8, 0, 0], sum = 636
    let row = [0, -1, -3, -31, -62, i32::MIN];
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, 62);
    assert_eq!((e.as_slice(), sum), (&[255u8, 206, 167, 8, 0, 0][..], 636));
    // Normalized: (510 e + 636) / 1272:
    //   255 -> 130686 / 1272 = 102 (102.74)
    //   206 -> 105696 / 1272 = 83  (83.09)
    //   167 -> 85806 / 1272  = 67  (67.46)
    //   8   -> 4716 / 1272   = 3   (3.71)
    let (p, _) = softmax_row(SoftmaxVariant::Normalized, &row, 62);
    assert_eq!(p, [102, 83, 67, 3, 0, 0]);
    // PaperSim truncates the index: [0, 0, 1, 15, 31, 31]
    //   e = [255, 255, 206, 10, 0, 0], sum = 726
    //   P = rne([65025, 65025, 52530, 2550] / 726) = rne([89.57, 89.57, 72.36, 3.51]) = [90, 90, 72, 4]
    let (p, sum) = softmax_row(SoftmaxVariant::PaperSim, &row, 62);
    assert_eq!((p.as_slice(), sum), (&[90u8, 90, 72, 4, 0, 0][..], 726));
}

#[test]
fn hand_worked_row_probability_ties_half_up_vs_half_even() {
    // T = 62, row [0, -14, -20]: D = [0, 14, 20].
    //   exact idx = (62 D + 62) / 124 = [0, 930/124 = 7, 1302/124 = 10]
    //   trunc idx = trunc(31 D / 62)  = [0, 7, 10]
    //   e = [255, LUT[7] = 57, LUT[10] = 30], sum = 342 in every variant.
    // 255 * 57 / 342 = 42.5 exactly: Normalized rounds half up to 43, PaperSim to even 42.
    //   Normalized: (510 e + 342) / 684 = [130392/684 = 190, 29412/684 = 43, 15642/684 = 22]
    //   PaperSim:   rne([190.13, 42.5, 22.37]) = [190, 42, 22]
    let row = [0, -14, -20];
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, 62);
    assert_eq!((e.as_slice(), sum), (&[255u8, 57, 30][..], 342));
    let (p, _) = softmax_row(SoftmaxVariant::Normalized, &row, 62);
    assert_eq!(p, [190, 43, 22]);
    let (p, sum) = softmax_row(SoftmaxVariant::PaperSim, &row, 62);
    assert_eq!((p.as_slice(), sum), (&[190u8, 42, 22][..], 342));
}

#[test]
fn hand_worked_two_equal_entries_give_128_each() {
    // e = [255, 255], sum = 510: 255 * 255 / 510 = 127.5, half up -> 128 (even is 128 too).
    for v in SoftmaxVariant::ALL {
        let (p, sum) = softmax_row(v, &[5, 5], 9);
        let expect: [u8; 2] = if v == SoftmaxVariant::Deferred {
            [255, 255]
        } else {
            [128, 128]
        };
        assert_eq!((p.as_slice(), sum), (&expect[..], 510), "{v}");
    }
}

#[test]
fn defect4_i32_min_and_max_in_one_row_get_the_smallest_weight() {
    // The artifact subtracted in i32: MAX - MIN overflowed and MIN got the largest weight.
    // T = 2^30, row [i32::MAX, 0, i32::MIN]: D = [0, min(2^31 - 1, 2^30), min(2^32 - 1, 2^30)]
    //   = [0, 2^30, 2^30] -> idx [0, 31, 31] -> e = [255, 0, 0], sum 255, P = [255, 0, 0].
    let row = [i32::MAX, 0, i32::MIN];
    for v in SoftmaxVariant::ALL {
        let (p, sum) = softmax_row(v, &row, T_MAX);
        assert_eq!((p.as_slice(), sum), (&[255u8, 0, 0][..], 255), "{v}");
    }
    // Small T, MIN first: the same.
    for v in SoftmaxVariant::ALL {
        let (p, sum) = softmax_row(v, &[i32::MIN, i32::MAX], 3);
        assert_eq!((p.as_slice(), sum), (&[0u8, 255][..], 255), "{v}");
    }
    // All i32::MIN: m = MIN, D = 0 everywhere -> a flat row (e = 255 each, sum 765, P = 85).
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &[i32::MIN; 3], 7);
    assert_eq!((e.as_slice(), sum), (&[255u8; 3][..], 765));
    let (p, _) = softmax_row(SoftmaxVariant::Normalized, &[i32::MIN; 3], 7);
    assert_eq!(p, [85, 85, 85]);
    // [MIN + 1, MIN] with T = 1: D = [0, 1] -> idx [0, (62 + 1) / 2 = 31] -> [255, 0].
    let (e, _) = softmax_row(SoftmaxVariant::Deferred, &[i32::MIN + 1, i32::MIN], 1);
    assert_eq!(e, [255, 0]);
}

#[test]
fn threshold_one_keeps_only_the_row_maxima() {
    // T = 1: every D >= 1 is clamped to 1 and idx = (2 * 1 * 31 + 1) / 2 = 31 -> 0.
    let row = [3, 3, 2, -7, i32::MIN, 3];
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, 1);
    assert_eq!((e.as_slice(), sum), (&[255u8, 255, 0, 0, 0, 255][..], 765));
    let (p, _) = softmax_row(SoftmaxVariant::Normalized, &row, 1);
    assert_eq!(p, [85, 85, 0, 0, 0, 85]);
    // PaperSim: idx = trunc(31 * 1 / 1) = 31 -> 0 as well.
    let (p, _) = softmax_row(SoftmaxVariant::PaperSim, &row, 1);
    assert_eq!(p, [85, 85, 0, 0, 0, 85]);
}

#[test]
fn threshold_two_to_the_30() {
    // T = 2^30, row [0, -1, -2^29, -(2^29 + 2^25), -2^30, i32::MIN]:
    //   D = 1:            (62 + 2^30) / 2^31 = 0           -> 255
    //   D = 2^29:         (31 2^30 + 2^30) / 2^31 = 16     -> LUT[16] = 8  (15.5 rounds up)
    //   D = 2^29 + 2^25:  31 (2^29 + 2^25) / 2^30 = 16.46875 -> 16 -> 8
    //   D = 2^30:         31                               -> 0
    //   i32::MIN:         D = min(2^31, 2^30) = 2^30       -> 0
    let row = [
        0,
        -1,
        -(1 << 29),
        -((1 << 29) + (1 << 25)),
        -(1 << 30),
        i32::MIN,
    ];
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, T_MAX);
    assert_eq!((e.as_slice(), sum), (&[255u8, 255, 8, 8, 0, 0][..], 526));
    // PaperSim: 31 D / 2^30 = [0, ~0, 15.5, 16.47, 31, 31] truncated -> [0, 0, 15, 16, 31, 31].
    //   e = [255, 255, 10, 8, 0, 0], sum = 528
    let (p, sum) = softmax_row(SoftmaxVariant::PaperSim, &row, T_MAX);
    let expect: Vec<u8> = [255u32, 255, 10, 8, 0, 0]
        .iter()
        .map(|&e| ((e * 255) as f32 / 528.0).round_ties_even() as u8)
        .collect();
    assert_eq!((p, sum), (expect, 528));
}

#[test]
fn threshold_outside_1_to_2_pow_30_is_an_error() {
    for t in [0, -1, -62, i32::MIN, T_MAX + 1, i32::MAX] {
        for v in SoftmaxVariant::ALL {
            assert!(IndexSoftmaxParams::new(t, v).is_err(), "T={t}");
            // The kernels' own entry point checks the threshold too.
            let lut = Lut::new(5, 6.6).unwrap();
            let mut out = [0u8; 3];
            for kernel in Kernel::available() {
                assert!(
                    kernel
                        .index_softmax_row(&[1, 2, 3], 3, &lut, t, &mut out)
                        .is_err(),
                    "T={t} {v} {}",
                    kernel.name()
                );
            }
        }
    }
    assert!(IndexSoftmaxParams::new(1, SoftmaxVariant::Deferred).is_ok());
    assert!(IndexSoftmaxParams::new(T_MAX, SoftmaxVariant::Deferred).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Fully masked rows and long rows
// ---------------------------------------------------------------------------------------------

#[test]
fn fully_masked_rows_are_zero_with_zero_sum_in_every_variant() {
    let scores = [5, -3, i32::MIN, i32::MAX, 0, 0, 7, 7, 1, 2, 3, 4];
    let (rows, cols) = (3, 4);
    let keep_none = [false; 12];
    // Row 1 fully masked, rows 0 and 2 partly.
    let lens = [2usize, 0, 4];
    let mut keep_mixed = [true; 12];
    keep_mixed[4..8].fill(false);
    keep_mixed[0] = false;
    for v in SoftmaxVariant::ALL {
        let params = IndexSoftmaxParams::new(50, v).unwrap();
        for mask in [ScoreMask::Prefix(&[0, 0, 0]), ScoreMask::Dense(&keep_none)] {
            let mut out = [0xAAu8; 12];
            let sums = index_softmax(&scores, rows, cols, &params, mask, &mut out).unwrap();
            assert_eq!(out, [0u8; 12], "{v} {mask:?}");
            assert_eq!(sums.as_slice(), &[0, 0, 0], "{v} {mask:?}");
        }
        for mask in [ScoreMask::Prefix(&lens), ScoreMask::Dense(&keep_mixed)] {
            let mut out = [0xAAu8; 12];
            let sums = index_softmax(&scores, rows, cols, &params, mask, &mut out).unwrap();
            assert_eq!(&out[4..8], &[0u8; 4], "{v} {mask:?}");
            assert_eq!(sums.as_slice()[1], 0, "{v} {mask:?}");
            assert!(sums.as_slice()[0] >= 255 && sums.as_slice()[2] >= 255);
        }
    }
}

/// An all-equal row of length `len`: every D is 0, e = 255, sum = 255 len exactly.
fn check_flat_row(len: usize, value: i32) {
    let row = vec![value; len];
    let sum = 255 * len as u64;
    for v in SoftmaxVariant::ALL {
        let (p, got_sum) = softmax_row(v, &row, 1000);
        assert_eq!(got_sum as u64, sum, "{v} len={len}");
        let expect = match v {
            SoftmaxVariant::Deferred => 255,
            // round_half_up(255 * 255 / (255 len)) = (2 * 255 + len) / (2 len)
            SoftmaxVariant::Normalized => ((2 * 255 + len) / (2 * len)) as u8,
            SoftmaxVariant::PaperSim => (65025.0f32 / sum as f32).round_ties_even() as u8,
            v => unreachable!("no test case uses {v}"),
        };
        assert!(
            p.iter().all(|&x| x == expect),
            "{v} len={len}: want {expect}"
        );
    }
}

#[test]
fn u16_sum_defect_row_len_1() {
    check_flat_row(1, 0);
    check_flat_row(1, i32::MIN);
    // len 1: Normalized P = (510 + 1) / 2 = 255.
    assert_eq!(softmax_row(SoftmaxVariant::Normalized, &[42], 1).0, [255]);
}

#[test]
fn u16_sum_defect_row_len_257_sum_65535_is_the_last_that_fits_u16() {
    // 255 * 257 = 65535; P = (510 + 257) / 514 = 1.
    check_flat_row(257, 12345);
    assert_eq!(
        softmax_row(SoftmaxVariant::Normalized, &[7; 257], 5).0[0],
        1
    );
}

#[test]
fn u16_sum_defect_row_len_258_sum_65790_would_wrap_to_254() {
    // 255 * 258 = 65790 (u16: 254). P = (510 + 258) / 516 = 1.
    check_flat_row(258, -9);
    let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &[-9; 258], 5);
    assert_eq!(sum, 65790);
    assert!(e.iter().all(|&x| x == 255));
    assert_eq!(
        softmax_row(SoftmaxVariant::Normalized, &[-9; 258], 5).0[0],
        1
    );
}

#[test]
fn u16_sum_defect_row_len_300() {
    // 255 * 300 = 76500 (u16: 10964). P = (510 + 300) / 600 = 1.
    check_flat_row(300, i32::MAX);
    // Not flat: one peak plus 299 entries at D = T (e = 0): P = [255, 0, ...].
    let mut row = vec![-100; 300];
    row[123] = 0;
    let (p, sum) = softmax_row(SoftmaxVariant::Normalized, &row, 100);
    assert_eq!(sum, 255);
    assert_eq!(p[123], 255);
    assert_eq!(p.iter().map(|&x| x as u32).sum::<u32>(), 255);
}

#[test]
fn u16_sum_defect_row_len_65537_wrapped_sum_255_must_still_normalize() {
    // 255 * 65537 = 16,711,935 = 255 mod 2^16: the artifact saw a sum of 255, skipped the
    // division and returned raw 255s. The contract: P = (510 + 65537) / 131074 = 0.
    check_flat_row(65537, 3);
    let (p, sum) = softmax_row(SoftmaxVariant::Normalized, &vec![3; 65537], 5);
    assert_eq!(sum, 16_711_935);
    assert!(p.iter().all(|&x| x == 0));
}

#[test]
fn rows_of_2_pow_24_entries_are_rejected_not_wrapped() {
    // 255 * 2^24 no longer fits u32; the check happens before any data is touched.
    let p = IndexSoftmaxParams::new(10, SoftmaxVariant::Deferred).unwrap();
    let r = index_softmax(&[], 0, MAX_ROW_LEN, &p, ScoreMask::None, &mut []);
    assert!(r.is_err());
    assert!(index_softmax(&[], 0, MAX_ROW_LEN - 1, &p, ScoreMask::None, &mut []).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Random rows against the independent implementation
// ---------------------------------------------------------------------------------------------

fn score() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -300i32..300,
        2 => -5_000_000i32..5_000_000,
        2 => any::<i32>(),
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
    ]
}

fn threshold() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => 1i32..400,
        2 => 1i32..=T_MAX,
        1 => Just(1),
        1 => Just(T_MAX),
    ]
}

fn variant() -> impl Strategy<Value = SoftmaxVariant> {
    prop_oneof![
        Just(SoftmaxVariant::Normalized),
        Just(SoftmaxVariant::Deferred),
        Just(SoftmaxVariant::PaperSim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn normalized_p_sums_to_255_within_half_the_nonzero_count(
        row in prop::collection::vec(score(), 1..300),
        t in threshold(),
    ) {
        let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, t);
        let (p, _) = softmax_row(SoftmaxVariant::Normalized, &row, t);
        let nnz = e.iter().filter(|&&x| x > 0).count() as i64;
        let total: i64 = p.iter().map(|&x| x as i64).sum();
        // Each P is within 1/2 of 255 e / sum and those add to exactly 255.
        prop_assert!(2 * (total - 255).abs() <= nnz, "sum P = {} nnz = {}", total, nnz);
        prop_assert!(sum >= 255);
    }

    #[test]
    fn normalized_p_is_the_exact_integer_division(
        row in prop::collection::vec(score(), 1..200),
        t in threshold(),
    ) {
        let (e, sum) = softmax_row(SoftmaxVariant::Deferred, &row, t);
        let (p, nsum) = softmax_row(SoftmaxVariant::Normalized, &row, t);
        prop_assert_eq!(sum, nsum);
        for j in 0..row.len() {
            let want = (2 * 255 * e[j] as u64 + sum as u64) / (2 * sum as u64);
            prop_assert_eq!(p[j] as u64, want, "j={}", j);
        }
    }

    #[test]
    fn every_variant_equals_the_spec_text(
        row in prop::collection::vec(score(), 0..120),
        t in threshold(),
        v in variant(),
        b in 4u32..=8,
    ) {
        let params = IndexSoftmaxParams::new(t, v).unwrap().with_table_bits(b).unwrap();
        let lut = params.lut();
        let mut out = vec![0xAAu8; row.len()];
        let sums = index_softmax(&row, 1, row.len(), &params, ScoreMask::None, &mut out).unwrap();
        let (want, want_sum) = spec_row(v, &row, &vec![true; row.len()], t, lut.entries());
        prop_assert_eq!(out, want);
        prop_assert_eq!(sums.as_slice()[0] as u64, want_sum);
    }

    #[test]
    fn index_softmax_every_mask_form_equals_the_per_row_references(
        rows in 0usize..6,
        cols in 0usize..70,
        seed in prop::collection::vec(score(), 420),
        lens_seed in prop::collection::vec(0usize..1000, 6),
        keep_seed in prop::collection::vec(prop::bool::weighted(0.7), 420),
        t in threshold(),
        v in variant(),
    ) {
        let n = rows * cols;
        let scores = &seed[..n];
        let lens: Vec<usize> = lens_seed[..rows].iter().map(|&l| l % (cols + 1)).collect();
        let keep_dense = &keep_seed[..n];
        let params = IndexSoftmaxParams::new(t, v).unwrap();
        let lut = params.lut();
        let keep_all = vec![true; n];
        let mut keep_prefix = vec![false; n];
        for i in 0..rows {
            keep_prefix[i * cols..i * cols + lens[i]].fill(true);
        }
        for (mask, keep) in [
            (ScoreMask::None, &keep_all[..]),
            (ScoreMask::Prefix(&lens), &keep_prefix[..]),
            (ScoreMask::Dense(keep_dense), keep_dense),
            // A prefix mask written densely must give the same numbers.
            (ScoreMask::Dense(&keep_prefix), &keep_prefix[..]),
        ] {
            let mut out = vec![0xAAu8; n];
            let sums = index_softmax(scores, rows, cols, &params, mask, &mut out).unwrap();
            prop_assert_eq!(sums.as_slice().len(), rows);
            for i in 0..rows {
                let r = i * cols..(i + 1) * cols;
                // The contract's text (docs/numerics.md), in wide integers.
                let (want, want_sum) = spec_row(v, &scores[r.clone()], &keep[r.clone()], t, lut.entries());
                prop_assert_eq!(&out[r.clone()], &want[..], "row {} {:?}", i, mask);
                prop_assert_eq!(sums.as_slice()[i] as u64, want_sum);
                // The crate's scalar references.
                let k = &keep[r.clone()];
                let mut refp = vec![0u8; cols];
                let rs = match v {
                    SoftmaxVariant::PaperSim => intattention::reference::index_softmax_paper_sim_row(
                        &scores[r.clone()], |j| k[j], &lut, t, &mut refp),
                    _ => {
                        let s = intattention::reference::index_softmax_row(
                            &scores[r.clone()], |j| k[j], &lut, t, &mut refp);
                        if v == SoftmaxVariant::Normalized {
                            intattention::reference::normalize_row(&mut refp, s);
                        }
                        s
                    }
                };
                prop_assert_eq!(&out[r], &refp[..]);
                prop_assert_eq!(sums.as_slice()[i], rs);
            }
        }
    }

    #[test]
    fn every_kernel_exponent_pass_equals_the_spec_text(
        row in prop::collection::vec(score(), 0..150),
        valid_seed in 0usize..1000,
        t in threshold(),
        b in 4u32..=8,
    ) {
        let valid = valid_seed % (row.len() + 1);
        let lut = Lut::new(b, 6.6).unwrap();
        let keep: Vec<bool> = (0..row.len()).map(|j| j < valid).collect();
        let (want, want_sum) = spec_exponents(&row, &keep, t, lut.entries());
        let want_p = spec_normalized(&want, want_sum);
        for kernel in Kernel::available() {
            let mut e = vec![0xAAu8; row.len()];
            let sum = kernel.index_softmax_row(&row, valid, &lut, t, &mut e).unwrap();
            prop_assert_eq!(&e, &want, "kernel {}", kernel.name());
            prop_assert_eq!(sum as u64, want_sum, "kernel {}", kernel.name());
            kernel.normalize_row(&mut e, sum).unwrap();
            prop_assert_eq!(&e, &want_p, "kernel {}", kernel.name());
        }
    }
}

#[test]
fn index_softmax_shape_errors() {
    let p = IndexSoftmaxParams::new(10, SoftmaxVariant::Normalized).unwrap();
    let s = [1i32; 6];
    let mut out = [0u8; 6];
    let mut short = [0u8; 5];
    assert!(index_softmax(&s[..5], 2, 3, &p, ScoreMask::None, &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::None, &mut short).is_err());
    assert!(index_softmax(&s, 3, 3, &p, ScoreMask::None, &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Prefix(&[3]), &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Prefix(&[3, 3, 3]), &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Prefix(&[3, 4]), &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Dense(&[true; 5]), &mut out).is_err());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Dense(&[true; 7]), &mut out).is_err());
    assert!(index_softmax(&[], usize::MAX, 2, &p, ScoreMask::None, &mut []).is_err());
    // The valid forms of the same call.
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Prefix(&[3, 0]), &mut out).is_ok());
    assert!(index_softmax(&s, 2, 3, &p, ScoreMask::Dense(&[true; 6]), &mut out).is_ok());
    assert!(index_softmax(&[], 0, 3, &p, ScoreMask::None, &mut []).is_ok());
    assert!(index_softmax(&[], 4, 0, &p, ScoreMask::None, &mut []).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Thresholds
// ---------------------------------------------------------------------------------------------

/// `x` as `m 2^e` with an integer mantissa.
fn parts(x: f32) -> (u128, i32) {
    let b = x.to_bits();
    let exp = ((b >> 23) & 0xff) as i32;
    if exp == 0 {
        ((b & 0x7f_ffff) as u128, -149)
    } else {
        (((b & 0x7f_ffff) | 0x80_0000) as u128, exp - 150)
    }
}

/// Compares `a 2^x` with `b 2^y` exactly.
fn cmp_scaled(a: u128, x: i32, b: u128, y: i32) -> Ordering {
    if a == 0 || b == 0 {
        return a.cmp(&b);
    }
    let la = 128 - a.leading_zeros() as i32 + x;
    let lb = 128 - b.leading_zeros() as i32 + y;
    if la != lb {
        return la.cmp(&lb);
    }
    // Same top bit position, so the shifted side fits 128 bits.
    if x >= y {
        (a << (x - y)).cmp(&b)
    } else {
        a.cmp(&(b << (y - x)))
    }
}

/// Checks `t == clamp(floor(c / P + 1/2), 1, 2^30)` for `P = s_q s_k scale > 0` exactly:
/// `floor(q + 1/2) = t` iff `(2t - 1) P <= 2c < (2t + 1) P`.
fn is_exact_threshold(t: i32, c: f32, s_q: f32, s_k: f32, scale: f32) -> bool {
    let (mc, ec) = parts(c);
    let (ma, ea) = parts(s_q);
    let (mb, eb) = parts(s_k);
    let (ms, es) = parts(scale);
    let p = ma * mb * ms;
    let ep = ea + eb + es;
    // 2c vs k P, for odd k.
    let two_c_vs = |k: u128| cmp_scaled(mc, ec + 1, k * p, ep);
    let t = t as u128;
    let lower_ok = t == 1 || two_c_vs(2 * t - 1) != Ordering::Less;
    let upper_ok = t == T_MAX as u128 || two_c_vs(2 * t + 1) == Ordering::Less;
    lower_ok && upper_ok
}

#[test]
fn threshold_exact_rounds_ties_up() {
    // c / (s_q s_k scale) = 2.5 -> 3 (round half even would say 2).
    assert_eq!(threshold_exact(2.5, 1.0, 1.0, 1.0).unwrap(), 3);
    // 3.9375 / (3 * 0.25 * 0.5) = 3.9375 / 0.375 = 10.5 -> 11.
    assert_eq!(threshold_exact(3.9375, 3.0, 0.25, 0.5).unwrap(), 11);
    // Odd mantissas: s_q s_k scale = (3/8)(5/16)(7/32) = 105/4096 and c = 4305/8192,
    // so c / P = 4305 / 210 = 20.5 -> 21.
    assert_eq!(
        threshold_exact(4305.0 / 8192.0, 0.375, 0.3125, 0.21875).unwrap(),
        21
    );
    // Just below and above that tie (c one ulp smaller / larger): 20 and 21.
    let c = 4305.0f32 / 8192.0;
    let below = f32::from_bits(c.to_bits() - 1);
    let above = f32::from_bits(c.to_bits() + 1);
    assert_eq!(threshold_exact(below, 0.375, 0.3125, 0.21875).unwrap(), 20);
    assert_eq!(threshold_exact(above, 0.375, 0.3125, 0.21875).unwrap(), 21);
    // 0.5 -> 1, 1.5 -> 2.
    assert_eq!(threshold_exact(0.5, 1.0, 1.0, 1.0).unwrap(), 1);
    assert_eq!(threshold_exact(1.5, 1.0, 1.0, 1.0).unwrap(), 2);
}

#[test]
fn threshold_exact_is_exact_where_f64_arithmetic_rounds_the_wrong_way() {
    // The product of three 24-bit mantissas needs 72 bits. For these inputs
    // c / (s_q s_k scale) = 621.49999999999999998 (just below the tie), so T = 621;
    // evaluating floor(c / (s_q s_k scale) + 0.5) in f64 gives 622.
    let (c, a, b, s) = (
        f32::from_bits(0x4319_3c4a),
        f32::from_bits(0x3f09_48ed),
        f32::from_bits(0x3f01_12ff),
        f32::from_bits(0x3f69_70bf),
    );
    assert_eq!(threshold_exact(c, a, b, s).unwrap(), 621);
    assert!(is_exact_threshold(621, c, a, b, s));
    assert!(!is_exact_threshold(622, c, a, b, s));
    // 1082.49999999999999999 -> 1082 (f64: 1083).
    let (c, a, b, s) = (
        f32::from_bits(0x43b4_f511),
        f32::from_bits(0x3f66_dfe7),
        f32::from_bits(0x3f27_48dd),
        f32::from_bits(0x3f11_3bb2),
    );
    assert_eq!(threshold_exact(c, a, b, s).unwrap(), 1082);
    assert!(is_exact_threshold(1082, c, a, b, s));
}

#[test]
fn threshold_exact_clamps_to_1_and_2_pow_30() {
    // Quotients below 1/2 clamp up to 1.
    assert_eq!(threshold_exact(0.25, 1.0, 1.0, 1.0).unwrap(), 1);
    assert_eq!(threshold_exact(1e-30, 1e10, 1e10, 1.0).unwrap(), 1);
    assert_eq!(
        threshold_exact(f32::from_bits(1), f32::MAX, f32::MAX, f32::MAX).unwrap(),
        1
    );
    // 2^30 exactly, and just past it.
    assert_eq!(threshold_exact(1073741824.0, 1.0, 1.0, 1.0).unwrap(), T_MAX);
    assert_eq!(
        threshold_exact(1073741824.0 - 64.0, 1.0, 1.0, 1.0).unwrap(),
        T_MAX - 64
    );
    assert_eq!(
        threshold_exact(1073741824.0 + 128.0, 1.0, 1.0, 1.0).unwrap(),
        T_MAX
    );
    assert_eq!(threshold_exact(6.6, 1e-20, 1e-20, 1.0).unwrap(), T_MAX);
    // The smallest positive scales: the quotient is astronomically large.
    let tiny = f32::from_bits(1);
    assert_eq!(threshold_exact(f32::MAX, tiny, tiny, tiny).unwrap(), T_MAX);
    // A zero scale product gives 2^30.
    assert_eq!(threshold_exact(6.6, 0.0, 0.3, 0.125).unwrap(), T_MAX);
    assert_eq!(threshold_exact(6.6, 0.3, 0.0, 0.125).unwrap(), T_MAX);
    assert_eq!(threshold_exact(6.6, 0.0, 0.0, 0.125).unwrap(), T_MAX);
    assert_eq!(threshold_paper_sim(6.6, 0.0, 0.3, 0.125).unwrap(), T_MAX);
}

#[test]
fn threshold_rejects_bad_scales() {
    for bad in [-1.0f32, -1e-30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(threshold_exact(6.6, bad, 1.0, 1.0).is_err(), "s_q={bad}");
        assert!(threshold_exact(6.6, 1.0, bad, 1.0).is_err(), "s_k={bad}");
        assert!(threshold_exact(6.6, 1.0, 1.0, bad).is_err(), "scale={bad}");
        assert!(
            threshold_paper_sim(6.6, bad, 1.0, 1.0).is_err(),
            "s_q={bad}"
        );
        assert!(
            threshold_paper_sim(6.6, 1.0, bad, 1.0).is_err(),
            "s_k={bad}"
        );
        assert!(
            threshold_paper_sim(6.6, 1.0, 1.0, bad).is_err(),
            "scale={bad}"
        );
    }
    // The softmax scale must be positive (a zero logit scale is not a scale).
    assert!(threshold_exact(6.6, 1.0, 1.0, 0.0).is_err());
    assert!(threshold_paper_sim(6.6, 1.0, 1.0, 0.0).is_err());
}

#[test]
fn threshold_paper_sim_truncates_in_f32_where_exact_rounds() {
    // c = 6.6, s_q = 0.02, s_k = 0.03, scale = 1/sqrt(64) = 0.125:
    // exact quotient 6.6 / 7.5e-5 = 88000 (up to f32 input rounding); compute both sides here.
    let (c, a, b, s) = (6.6f32, 0.02f32, 0.03f32, 0.125f32);
    let sim = ((c / a) / b) / s;
    assert_eq!(threshold_paper_sim(c, a, b, s).unwrap(), sim.trunc() as i32);
    let t = threshold_exact(c, a, b, s).unwrap();
    assert!(is_exact_threshold(t, c, a, b, s));
    // A quotient of 10.75: exact rounds to 11, the simulation truncates to 10.
    assert_eq!(threshold_exact(10.75, 1.0, 1.0, 1.0).unwrap(), 11);
    assert_eq!(threshold_paper_sim(10.75, 1.0, 1.0, 1.0).unwrap(), 10);
    // 4.6 / 2 / 0.5 / 1 in f32: 4.6 is 4.599999904..., so 4.59999990 -> 4.
    assert_eq!(threshold_paper_sim(4.6, 2.0, 0.5, 1.0).unwrap(), 4);
    assert_eq!(threshold_exact(4.6, 2.0, 0.5, 1.0).unwrap(), 5);
    // The parameters pick the rule by variant.
    for (v, want) in [
        (SoftmaxVariant::Normalized, 11),
        (SoftmaxVariant::Deferred, 11),
        (SoftmaxVariant::PaperSim, 10),
    ] {
        let p = IndexSoftmaxParams::from_scales(1.0, 1.0, 1.0, 5, 10.75, v).unwrap();
        assert_eq!(p.threshold(), want, "{v}");
        assert_eq!(p.table_bits(), 5);
        assert_eq!(p.clip(), 10.75);
    }
}

fn positive_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        1e-6f32..10.0,
        (1u32..0x7f80_0000).prop_map(f32::from_bits),
        (1u32..1 << 24).prop_map(|m| m as f32 / 4096.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn threshold_exact_is_round_half_up_of_the_exact_quotient(
        c in positive_f32(), a in positive_f32(), b in positive_f32(), s in positive_f32(),
    ) {
        let t = threshold_exact(c, a, b, s).unwrap();
        prop_assert!((1..=T_MAX).contains(&t));
        prop_assert!(is_exact_threshold(t, c, a, b, s), "T = {} for {} {} {} {}", t, c, a, b, s);
    }

    #[test]
    fn threshold_paper_sim_is_the_f32_formula(
        c in 0.01f32..100.0, a in 1e-5f32..2.0, b in 1e-5f32..2.0, s in 0.01f32..1.0,
    ) {
        let sim = (((c / a) / b) / s).trunc();
        let want = sim.clamp(1.0, T_MAX as f32) as i32;
        prop_assert_eq!(threshold_paper_sim(c, a, b, s).unwrap(), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Integer GEMMs
// ---------------------------------------------------------------------------------------------

fn naive_s8s8_nt(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i64> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|t| a[i * k + t] as i64 * b[j * k + t] as i64)
                .sum();
        }
    }
    c
}

fn naive_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i64> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|t| a[i * k + t] as i64 * b[t * n + j] as i64)
                .sum();
        }
    }
    c
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=3,
        4usize..=40,
        Just(15),
        Just(16),
        Just(17),
        Just(31),
        Just(33)
    ]
}

fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=3,
        4usize..=80,
        Just(63),
        Just(64),
        Just(65),
        Just(127),
        Just(129)
    ]
}

/// `n` full-range bytes from `seed`; a quarter of them are the extremes (0, 127, 128, 255 as u8,
/// i.e. 0, 127, -128, -1 as i8), where saturating SIMD tricks fail. Generated here rather than
/// element by element in proptest, which is far slower for thousands of elements.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x >> 32) as u32;
            if r & 3 == 0 {
                [0u8, 127, 128, 255][(r >> 8) as usize % 4]
            } else {
                (r >> 16) as u8
            }
        })
        .collect()
}

fn i8s(seed: u64, n: usize) -> Vec<i8> {
    bytes(seed, n).into_iter().map(|b| b as i8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn gemm_s8s8_nt_equals_i64_arithmetic(
        (m, n, k) in (dim(), dim(), depth()),
        seed in any::<u64>(),
    ) {
        let (a, b) = (i8s(seed, m * k), i8s(seed ^ 0x5555, n * k));
        let want = naive_s8s8_nt(&a, &b, m, n, k);
        let mut c = vec![i32::MIN; m * n];
        gemm_s8s8_nt(&a, &b, m, n, k, &mut c).unwrap();
        prop_assert!(c.iter().zip(&want).all(|(&x, &y)| x as i64 == y));
        for kernel in Kernel::available() {
            let mut c = vec![i32::MIN; m * n];
            kernel.gemm_s8s8_nt(&a, &b, m, n, k, &mut c).unwrap();
            prop_assert!(c.iter().zip(&want).all(|(&x, &y)| x as i64 == y), "kernel {}", kernel.name());
        }
    }

    #[test]
    fn gemm_u8s8_equals_i64_arithmetic(
        (m, n, k) in (dim(), dim(), depth()),
        seed in any::<u64>(),
    ) {
        let (a, b) = (bytes(seed, m * k), i8s(seed ^ 0x5555, k * n));
        let want = naive_u8s8(&a, &b, m, n, k);
        let mut c = vec![i32::MIN; m * n];
        gemm_u8s8(&a, &b, m, n, k, &mut c).unwrap();
        prop_assert!(c.iter().zip(&want).all(|(&x, &y)| x as i64 == y));
        for kernel in Kernel::available() {
            let mut c = vec![i32::MIN; m * n];
            kernel.gemm_u8s8(&a, &b, m, n, k, &mut c).unwrap();
            prop_assert!(c.iter().zip(&want).all(|(&x, &y)| x as i64 == y), "kernel {}", kernel.name());
        }
    }
}

#[test]
fn gemm_extreme_values_at_the_largest_depth() {
    // s8 x s8: (-128)(-128) k = 16384 * 131071 = 2,147,467,264 <= i32::MAX.
    let k = MAX_K_S8S8;
    let a = vec![i8::MIN; 2 * k];
    let mut b = vec![i8::MIN; 2 * k];
    b[k..].fill(i8::MAX);
    let mut c = [0i32; 4];
    gemm_s8s8_nt(&a, &b, 2, 2, k, &mut c).unwrap();
    let pos = 128 * 128 * k as i64;
    let neg = -128 * 127 * k as i64;
    assert_eq!(c.map(|x| x as i64), [pos, neg, pos, neg]);
    // u8 x s8: 255 (-128) k = -2,147,483,520 >= i32::MIN.
    let k = MAX_K_U8S8;
    let a = vec![255u8; k];
    let mut b = vec![0i8; 2 * k];
    for t in 0..k {
        b[2 * t] = i8::MIN;
        b[2 * t + 1] = i8::MAX;
    }
    let mut c = [0i32; 2];
    gemm_u8s8(&a, &b, 1, 2, k, &mut c).unwrap();
    assert_eq!(
        c.map(|x| x as i64),
        [-255 * 128 * k as i64, 255 * 127 * k as i64]
    );
}

#[test]
fn gemm_errors() {
    let a = [1i8; 6];
    let b = [1i8; 6];
    let mut c = [0i32; 4];
    // s8s8: a is m x k, b is n x k, c is m x n.
    assert!(gemm_s8s8_nt(&a, &b, 2, 2, 3, &mut c).is_ok());
    assert!(gemm_s8s8_nt(&a[..5], &b, 2, 2, 3, &mut c).is_err());
    assert!(gemm_s8s8_nt(&a, &b[..5], 2, 2, 3, &mut c).is_err());
    assert!(gemm_s8s8_nt(&a, &b, 2, 2, 3, &mut c[..3]).is_err());
    assert!(gemm_s8s8_nt(&a, &b, 3, 2, 3, &mut c).is_err());
    assert!(gemm_s8s8_nt(&a, &b, usize::MAX, 2, 3, &mut c).is_err());
    let k = MAX_K_S8S8 + 1;
    let big = vec![0i8; k];
    assert!(gemm_s8s8_nt(&big, &big, 1, 1, k, &mut c[..1]).is_err());
    // u8s8: a is m x k, b is k x n.
    let p = [1u8; 6];
    assert!(gemm_u8s8(&p, &b, 2, 2, 3, &mut c).is_ok());
    assert!(gemm_u8s8(&p, &b, 2, 3, 3, &mut [0i32; 6]).is_err());
    assert!(gemm_u8s8(&p, &b, 3, 3, 2, &mut [0i32; 9]).is_ok());
    assert!(gemm_u8s8(&p[..5], &b, 3, 3, 2, &mut [0i32; 9]).is_err());
    assert!(gemm_u8s8(&p, &b[..5], 3, 3, 2, &mut [0i32; 9]).is_err());
    assert!(gemm_u8s8(&p, &b, 3, 3, 2, &mut [0i32; 8]).is_err());
    let k = MAX_K_U8S8 + 1;
    let bigp = vec![0u8; k];
    let bigb = vec![0i8; k];
    assert!(gemm_u8s8(&bigp, &bigb, 1, 1, k, &mut [0i32; 1]).is_err());
    // Empty shapes are fine.
    assert!(gemm_s8s8_nt(&[], &[], 0, 0, 0, &mut []).is_ok());
    let mut c = [7i32; 6];
    gemm_u8s8(&[], &[], 2, 3, 0, &mut c).unwrap();
    assert_eq!(c, [0; 6]);
}

// ---------------------------------------------------------------------------------------------
// Quantization (docs/numerics.md section 1)
// ---------------------------------------------------------------------------------------------

#[test]
fn quantize_zero_tensor_gives_zeros_and_scale_0() {
    for x in [vec![0.0f32; 9], vec![-0.0f32; 3], vec![]] {
        let (q, s) = quantize_symmetric(&x).unwrap();
        assert_eq!(s, 0.0);
        assert_eq!(q.len(), x.len());
        assert!(q.iter().all(|&v| v == 0));
    }
}

#[test]
fn quantize_rejects_nan_and_infinities() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let x = [0.5, -1.0, bad, 2.0];
        match quantize_symmetric(&x) {
            Err(Error::NonFinite { index, .. }) => assert_eq!(index, 2),
            other => panic!("{bad}: {other:?}"),
        }
        assert!(QTensor::quantize(&x).is_err());
    }
    for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
        assert!(QTensor::from_parts(vec![1, 2], bad).is_err());
    }
    assert!(QTensor::from_parts(vec![i8::MIN, 2], 0.5).is_ok());
}

#[test]
fn quantize_rounds_ties_to_even() {
    // max 127 -> s = 1: x / s are the values themselves.
    let x = [
        127.0f32, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -126.5, 126.5,
    ];
    let (q, s) = quantize_symmetric(&x).unwrap();
    assert_eq!(s, 1.0);
    assert_eq!(q, [127, 0, 2, 2, 0, -2, -2, 4, -126, 126]);
    // max 63.5 -> s = 0.5: 0.25 / 0.5 = 0.5 -> 0, 0.75 -> 1.5 -> 2, -1.25 -> -2.5 -> -2.
    let (q, s) = quantize_symmetric(&[-63.5f32, 0.25, 0.75, -1.25]).unwrap();
    assert_eq!(s, 0.5);
    assert_eq!(q, [-127, 0, 2, -2]);
}

#[test]
fn quantize_subnormal_maximum_whose_scale_underflows_is_treated_as_zero() {
    // max|x| / 127 rounds to 0 in f32 below 63.5 * 2^-149: the contract's division by s is then
    // undefined; the crate treats such a tensor as all zeros (its values are below 1e-43).
    let tiny = f32::from_bits(5);
    let (q, s) = quantize_symmetric(&[tiny, -tiny, 0.0]).unwrap();
    assert_eq!(s, 0.0);
    assert_eq!(q, [0, 0, 0]);
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -1.0f32..1.0,
        2 => -1e6f32..1e6,
        1 => -1e-30f32..1e-30,
        1 => -1e30f32..1e30,
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
        1 => (-300i32..300).prop_map(|i| i as f32 * 0.5),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn quantize_follows_the_formula_never_gives_minus_128_and_maps_max_to_127(
        x in prop::collection::vec(finite_f32(), 1..100),
    ) {
        let (q, s) = quantize_symmetric(&x).unwrap();
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        prop_assert_eq!(s, max / 127.0);
        prop_assert!(q.iter().all(|&v| v != i8::MIN));
        for (i, (&xi, &qi)) in x.iter().zip(&q).enumerate() {
            let want = if s == 0.0 {
                0
            } else {
                (xi / s).round_ties_even().clamp(-127.0, 127.0) as i8
            };
            prop_assert_eq!(qi, want, "x[{}] = {}", i, xi);
            if s > 0.0 && xi.abs() == max {
                prop_assert_eq!(qi, if xi > 0.0 { 127 } else { -127 });
            }
        }
    }
}
