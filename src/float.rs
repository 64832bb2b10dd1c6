//! f32 and f16 matrix products for the float pipelines, through the `gemm` crate (runtime
//! dispatched AVX2/AVX-512/NEON micro-kernels; faster than anything we would hand-write for
//! floats, and it handles transposed operands through strides).

use gemm::{gemm, Parallelism};
use half::f16;

/// Which operand layout the right-hand side has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rhs {
    /// `b` is `k x n` row-major.
    Plain,
    /// `b` is `n x k` row-major and the product uses its transpose.
    Transposed,
}

macro_rules! matmul_impl {
    ($name:ident, $t:ty, $alpha:expr) => {
        /// `c[m x n] = alpha * a[m x k] * op(b)`, single-threaded (the pipelines parallelise
        /// over heads and row blocks themselves).
        pub fn $name(
            a: &[$t],
            b: &[$t],
            m: usize,
            n: usize,
            k: usize,
            rhs: Rhs,
            alpha: f32,
            c: &mut [$t],
        ) {
            assert!(
                a.len() == m * k && b.len() == k * n && c.len() == m * n,
                "matmul shapes"
            );
            if m == 0 || n == 0 {
                return;
            }
            if k == 0 {
                c.fill(<$t>::default());
                return;
            }
            let (rhs_cs, rhs_rs) = match rhs {
                Rhs::Plain => (1isize, n as isize),
                Rhs::Transposed => (k as isize, 1isize),
            };
            let zero = <$t>::default();
            let alpha: $t = $alpha(alpha);
            // SAFETY: the assert above guarantees every index the strides describe is in
            // bounds: a is m x k with row stride k, b is k x n (or n x k transposed), c is
            // m x n with row stride n; c does not alias a or b (it is a distinct &mut).
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    rhs_cs,
                    rhs_rs,
                    zero,
                    alpha,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            }
        }
    };
}

matmul_impl!(matmul_f32, f32, |a: f32| a);
matmul_impl!(matmul_f16, f16, f16::from_f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matches_naive_both_layouts() {
        let (m, n, k) = (5, 7, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut c = vec![0.0; m * n];
        matmul_f32(&a, &b, m, n, k, Rhs::Plain, 0.5, &mut c);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum::<f32>() * 0.5;
                assert!((c[i * n + j] - r).abs() < 1e-5);
            }
        }
        // b read as n x k transposed
        matmul_f32(&a, &b, m, n, k, Rhs::Transposed, 1.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((c[i * n + j] - r).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn f16_close_to_f32() {
        let (m, n, k) = (3, 4, 64);
        let a32: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b32: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let a: Vec<f16> = a32.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<f16> = b32.iter().map(|&v| f16::from_f32(v)).collect();
        let mut c = vec![f16::ZERO; m * n];
        matmul_f16(&a, &b, m, n, k, Rhs::Plain, 1.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|t| a32[i * k + t] * b32[t * n + j]).sum();
                assert!(
                    (c[i * n + j].to_f32() - r).abs() < 0.05,
                    "{} vs {r}",
                    c[i * n + j]
                );
            }
        }
    }
}
