//! The integer GEMMs as standalone operations (SPEC sections 2 and 4), shape-checked and
//! dispatched to the active kernel.

use crate::error::{shape_err, Error, Result};
use crate::kernels::{self, MAX_K_S8S8, MAX_K_U8S8};

fn check_len(what: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    let need = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::Shape(format!("{what}: {rows} x {cols} overflows")))?;
    if len != need {
        return shape_err(format!(
            "{what}: expected {rows} x {cols} = {need} elements, got {len}"
        ));
    }
    Ok(())
}

/// Scores: `c[m x n] = a[m x k] * b[n x k]^T` in exact i32 (Q times K transposed, with both
/// operands row-major as they come). Every i8 value is accepted, -128 included.
pub fn gemm_s8s8_nt(a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) -> Result<()> {
    check_len("gemm_s8s8_nt a", a.len(), m, k)?;
    check_len("gemm_s8s8_nt b", b.len(), n, k)?;
    check_len("gemm_s8s8_nt c", c.len(), m, n)?;
    if k > MAX_K_S8S8 {
        return Err(Error::Unsupported(format!(
            "gemm_s8s8_nt: depth {k} can overflow i32 (limit {MAX_K_S8S8})"
        )));
    }
    kernels::active()?.gemm_s8s8_nt(a, b, m, n, k, c);
    Ok(())
}

/// P x V: `c[m x n] = a[m x k] * b[k x n]` in exact i32, u8 times s8 (any values).
/// Depths past [`MAX_K_U8S8`] (65,793) could overflow i32 and are rejected; the attention
/// pipelines split longer key ranges themselves.
pub fn gemm_u8s8(a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) -> Result<()> {
    check_len("gemm_u8s8 a", a.len(), m, k)?;
    check_len("gemm_u8s8 b", b.len(), k, n)?;
    check_len("gemm_u8s8 c", c.len(), m, n)?;
    if k > MAX_K_U8S8 {
        return Err(Error::Unsupported(format!(
            "gemm_u8s8: depth {k} can overflow i32 (limit {MAX_K_U8S8}); split the keys"
        )));
    }
    kernels::active()?.gemm_u8s8(a, b, m, n, k, c);
    Ok(())
}
