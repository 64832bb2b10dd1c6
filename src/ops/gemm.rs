//! The two integer GEMMs as standalone operations (docs/numerics.md, sections 2 and 4) on the
//! fastest kernel; [`crate::kernels::Kernel`] has the same operations on any kernel.

use crate::error::Result;
use crate::kernels::Kernel;

/// Scores: `c[m x n] = a[m x k] * b[n x k]^T` in exact i32 (Q times K transposed, with both
/// operands row-major as they come). Every i8 value is accepted, -128 included.
///
/// # Errors
/// As [`Kernel::gemm_s8s8_nt`]: buffers that do not fit the sizes, or a depth past
/// [`crate::kernels::MAX_K_S8S8`].
pub fn gemm_s8s8_nt(a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) -> Result<()> {
    Kernel::best().gemm_s8s8_nt(a, b, m, n, k, c)
}

/// P x V: `c[m x n] = a[m x k] * b[k x n]` in exact i32, u8 times s8 (any values).
///
/// # Errors
/// As [`Kernel::gemm_u8s8`]: buffers that do not fit, or a depth past
/// [`crate::kernels::MAX_K_U8S8`] (65,793; the attention pipelines split longer key ranges).
pub fn gemm_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) -> Result<()> {
    Kernel::best().gemm_u8s8(a, b, m, n, k, c)
}
