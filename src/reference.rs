//! The scalar reference: one function per operation, written to read like the numerical
//! contract (docs/numerics.md). The portable kernel is built from these, and every faster
//! kernel and schedule is tested bit for bit (integer paths) or within tolerance (float paths)
//! against them; production code paths never call them directly.

use crate::lut::Lut;

/// Contract section 2: `C[i][j] = sum_k A[i][k] B[j][k]` (A is `m x k`, B is `n x k`, i.e. A B^T).
/// Exact for every i8 input including -128, as long as `k <= MAX_K_S8S8`.
pub fn gemm_s8s8_nt(a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
    for i in 0..m {
        let ai = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let bj = &b[j * k..(j + 1) * k];
            let mut acc = 0i32;
            for t in 0..k {
                acc += ai[t] as i32 * bj[t] as i32;
            }
            c[i * n + j] = acc;
        }
    }
}

/// Contract section 4: `C[i][c] = sum_j A[i][j] B[j][c]` (A is `m x k` u8, B is `k x n` s8).
/// Exact as long as `k <= MAX_K_U8S8`.
pub fn gemm_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        row.fill(0);
        for t in 0..k {
            let p = a[i * k + t] as i32;
            if p == 0 {
                continue;
            }
            let bt = &b[t * n..(t + 1) * n];
            for (acc, &v) in row.iter_mut().zip(bt) {
                *acc += p * v as i32;
            }
        }
    }
}

/// Contract section 3, exact index: `round_half_up(D (N - 1) / T) = (2 D (N - 1) + T) / (2 T)`.
#[inline]
pub fn table_index(d: i64, max_index: u32, threshold: i32) -> usize {
    let t = threshold as u64;
    ((2 * d as u64 * max_index as u64 + t) / (2 * t)) as usize
}

/// Contract section 3, one row, exponent part shared by Normalized and Deferred: writes
/// `e[j] = LUT[idx]` for kept entries and 0 for masked ones, and returns `sum_j e[j]`.
pub fn index_softmax_row(
    row: &[i32],
    keep: impl Fn(usize) -> bool,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let mut m: Option<i32> = None;
    for (j, &s) in row.iter().enumerate() {
        if keep(j) {
            m = Some(m.map_or(s, |m| m.max(s)));
        }
    }
    let Some(m) = m else {
        e.fill(0);
        return 0;
    };
    let table = lut.entries();
    let mut sum = 0u32;
    for (j, &s) in row.iter().enumerate() {
        if !keep(j) {
            e[j] = 0;
            continue;
        }
        // m - S in i64: i32::MIN scores are legal.
        let d = (m as i64 - s as i64).min(threshold as i64);
        let v = table[table_index(d, lut.max_index(), threshold)];
        e[j] = v;
        sum += v as u32;
    }
    sum
}

/// Contract section 3, Normalized finish: `P[j] = round_half_up(255 e[j] / sum)`, exact integer
/// division; a row with `sum == 0` stays all zeros.
pub fn normalize_row(p: &mut [u8], sum: u32) {
    if sum == 0 {
        p.fill(0);
        return;
    }
    let s = sum as u64;
    for v in p.iter_mut() {
        *v = ((2 * 255 * *v as u64 + s) / (2 * s)) as u8;
    }
}

/// Contract section 3, paper-simulation mode: `idx = trunc(f32(D (N-1)) / f32(T_sim))`,
/// `P = round_half_even(f32(255 e) / f32(sum))`. A fully masked row gives zeros (where the
/// simulation gives NaN). Returns the sum of table values.
pub fn index_softmax_paper_sim_row(
    row: &[i32],
    keep: impl Fn(usize) -> bool,
    lut: &Lut,
    threshold: i32,
    p: &mut [u8],
) -> u32 {
    let mut m: Option<i32> = None;
    for (j, &s) in row.iter().enumerate() {
        if keep(j) {
            m = Some(m.map_or(s, |m| m.max(s)));
        }
    }
    let Some(m) = m else {
        p.fill(0);
        return 0;
    };
    let table = lut.entries();
    let n1 = lut.max_index() as i64;
    let t = threshold as f32;
    let mut sum = 0u32;
    for (j, &s) in row.iter().enumerate() {
        if !keep(j) {
            p[j] = 0;
            continue;
        }
        let d = (m as i64 - s as i64).min(threshold as i64);
        let idx = ((d * n1) as f32 / t).trunc() as usize;
        let v = table[idx.min(n1 as usize)];
        p[j] = v;
        sum += v as u32;
    }
    let fs = sum as f32;
    for v in p.iter_mut() {
        *v = ((*v as u32 * 255) as f32 / fs).round_ties_even() as u8;
    }
    sum
}

/// Contract section 4's dequantization `O = O32 s_v / divisor` (divisor 255 for P with scale
/// 1/255, the row sum for Deferred), rounded once from the exact real value to the nearest f32,
/// ties to even (`crate::rounding::output_exact`); a fully masked row (`divisor == 0`) gives 0.
pub fn dequantize_output(o32: i64, s_v: f32, divisor: u32) -> f32 {
    crate::rounding::output_exact(o32, s_v, divisor)
}

/// Float softmax over `row[..valid]` (max-subtracted, f32); masked entries become 0 and a
/// row with `valid == 0` is all zeros.
pub fn softmax_f32_row(row: &mut [f32], valid: usize) {
    let (kept, masked) = row.split_at_mut(valid);
    masked.fill(0.0);
    if kept.is_empty() {
        return;
    }
    let m = kept.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in kept.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in kept.iter_mut() {
        *v *= inv;
    }
}
