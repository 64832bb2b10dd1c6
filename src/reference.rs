//! Scalar references, one per operation, written to read like SPEC.md. Every faster kernel is
//! tested bit for bit (integer paths) or within tolerance (float paths) against these.

use crate::softmax::Lut;

/// SPEC section 2: `C[i][j] = sum_k A[i][k] B[j][k]` (A is `m x k`, B is `n x k`, i.e. A B^T).
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

/// SPEC section 4: `C[i][c] = sum_j A[i][j] B[j][c]` (A is `m x k` u8, B is `k x n` s8).
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

/// SPEC section 3, exact index: `round_half_up(D (N - 1) / T) = (2 D (N - 1) + T) / (2 T)`.
#[inline]
pub fn table_index(d: i64, max_index: u32, threshold: i32) -> usize {
    let t = threshold as u64;
    ((2 * d as u64 * max_index as u64 + t) / (2 * t)) as usize
}

/// SPEC section 3, one row, exponent part shared by Normalized and Deferred: writes
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

/// SPEC section 3, Normalized finish: `P[j] = round_half_up(255 e[j] / sum)`, exact integer
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

/// SPEC section 3, paper-simulation mode: `idx = trunc(f32(D (N-1)) / f32(T_sim))`,
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

/// SPEC section 4's dequantization `O = O32 s_v / divisor` (divisor 255 for P with scale 1/255,
/// the row sum for Deferred), rounded once from the exact real value to the nearest f32, ties to
/// even. One rounding makes the output independent of evaluation order, so every schedule gives
/// the same bits; `O32 (s_v / divisor)` in f64 rounds three times and can miss a halfway case.
/// A fully masked row (`divisor == 0`) gives 0. `s_v` must be finite and non-negative.
pub fn dequantize_output(o32: i64, s_v: f32, divisor: u32) -> f32 {
    if let Some(v) = dequantize_output_fast(o32, row_factor(s_v, divisor)) {
        return v;
    }
    dequantize_output_exact(o32, s_v, divisor)
}

/// `s_v / divisor` in f64 (one rounding), the per-row factor of [`dequantize_output_fast`];
/// 0 for a zero divisor.
#[inline]
pub fn row_factor(s_v: f32, divisor: u32) -> f64 {
    if divisor == 0 {
        0.0
    } else {
        s_v as f64 / divisor as f64
    }
}

/// The common case of [`dequantize_output`] in two f64 operations: `q = O32 * factor` is
/// within a relative 2^-51 of the exact quotient (two roundings of 2^-53 each), i.e. within
/// 4 ulps of f64. Rounding `q` to f32 then gives the correctly rounded result unless `q` lies
/// within those ulps of a point halfway between two f32 values (the low 29 of the 52 f64
/// mantissa bits are then near `1 << 28`), or outside f32's normal range. Those cases return
/// `None` and take the exact path; they are about one in 10^7 for random data.
#[inline]
pub fn dequantize_output_fast(o32: i64, factor: f64) -> Option<f32> {
    if o32 == 0 || factor == 0.0 {
        return Some(0.0);
    }
    if o32.unsigned_abs() >= 1 << 53 {
        return None;
    }
    let q = o32 as f64 * factor;
    let a = q.abs();
    if !(a >= f32::MIN_POSITIVE as f64 && a < f32::MAX as f64) {
        return None;
    }
    let low = (q.to_bits() & ((1 << 29) - 1)) as i64;
    if (low - (1 << 28)).abs() <= 16 {
        return None;
    }
    Some(q as f32)
}

/// [`dequantize_output`] by exact integer arithmetic: the reference the fast path is checked
/// against.
pub fn dequantize_output_exact(o32: i64, s_v: f32, divisor: u32) -> f32 {
    if divisor == 0 || o32 == 0 || s_v == 0.0 {
        return 0.0;
    }
    let bits = s_v.to_bits();
    let (m, e) = match (bits >> 23) & 0xff {
        0 => (bits & 0x7f_ffff, -149),
        exp => ((bits & 0x7f_ffff) | 1 << 23, exp as i32 - 150),
    };
    // |O32| m: below 2^87.
    let n = o32.unsigned_abs() as u128 * m as u128;
    // The quotient n / divisor rounded to odd at 53 bits: rounding that to f32 (24 bits) is then
    // a correct single rounding (round-to-odd with two spare bits never double-rounds).
    let (odd, exp2) = if n < 1 << 53 {
        let (x, d) = (n as f64, divisor as f64);
        let q = x / d;
        // x - q d is exact for a correctly rounded quotient; its sign says which way q erred.
        let r = (-q).mul_add(d, x);
        let q = if r != 0.0 && q.to_bits() & 1 == 0 {
            f64::from_bits(if r > 0.0 {
                q.to_bits() + 1
            } else {
                q.to_bits() - 1
            })
        } else {
            q
        };
        (q, e)
    } else {
        let up = n.leading_zeros() - 1;
        let num = n << up;
        let (q, rem) = (num / divisor as u128, num % divisor as u128);
        let drop = 128 - q.leading_zeros() - 53;
        let mut top = (q >> drop) as u64;
        if rem != 0 || q & ((1 << drop) - 1) != 0 {
            top |= 1;
        }
        (top as f64, e + drop as i32 - up as i32)
    };
    // |exp2| stays far inside f64's exponent range, so the scaling is exact.
    let mag = (odd * f64::from_bits(((exp2 + 1023) as u64) << 52)) as f32;
    if o32 < 0 {
        -mag
    } else {
        mag
    }
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

#[cfg(test)]
mod dequantize_tests {
    use super::*;

    /// The fast path either declines or agrees with exact integer arithmetic, over random
    /// values and over constructed near-halfway quotients.
    #[test]
    fn fast_output_path_agrees_with_exact() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut declined = 0;
        for i in 0..400_000 {
            let r = next();
            let o32 = (r as i64 >> (r % 40)) % (1 << 40);
            let s_v = f32::from_bits(0x3800_0000 + (next() as u32 % 0x0800_0000));
            let divisor = match i % 4 {
                0 => 255,
                1 => 1 + (next() % 300) as u32,
                _ => 1 + (next() % (255 << 16)) as u32,
            };
            let exact = dequantize_output_exact(o32, s_v, divisor);
            match dequantize_output_fast(o32, row_factor(s_v, divisor)) {
                Some(v) => assert_eq!(v.to_bits(), exact.to_bits(), "{o32} {s_v} {divisor}"),
                None => declined += 1,
            }
        }
        assert!(declined < 400, "fast path declined {declined} times");
        // Exact halfway products: o32 * s_v with divisor 1 sits exactly between two f32s.
        for k in 0..1000i64 {
            let s_v = 1.0f32 + f32::EPSILON * k as f32;
            let o32 = (1 << 24) + 1 + 2 * k;
            let exact = dequantize_output_exact(o32, s_v, 1);
            if let Some(v) = dequantize_output_fast(o32, row_factor(s_v, 1)) {
                assert_eq!(v.to_bits(), exact.to_bits());
            }
            assert_eq!(dequantize_output(o32, s_v, 1).to_bits(), exact.to_bits());
        }
        assert_eq!(dequantize_output_fast(5, row_factor(0.5, 0)), Some(0.0));
    }
}
