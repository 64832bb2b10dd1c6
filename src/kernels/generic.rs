//! The portable kernel: the scalar reference itself. Always available, and the slowest.

use super::KernelImpl;
use crate::lut::Lut;
use crate::reference;

/// Portable scalar code, identical to [`crate::reference`].
pub(crate) struct Generic;

impl KernelImpl for Generic {
    fn name(&self) -> &'static str {
        "generic"
    }

    fn gemm_s8s8_nt(&self, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        reference::gemm_s8s8_nt(a, b, m, n, k, c)
    }

    fn gemm_u8s8(&self, a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        reference::gemm_u8s8(a, b, m, n, k, c)
    }

    fn index_softmax_row(
        &self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        reference::index_softmax_row(row, |j| j < valid, lut, threshold, e)
    }

    fn normalize_row(&self, p: &mut [u8], sum: u32) {
        reference::normalize_row(p, sum)
    }

    fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
        reference::softmax_f32_row(row, valid)
    }
}

impl Generic {
    /// [`KernelImpl::index_softmax_row_masked`]: the reference row.
    pub(crate) fn masked_row(
        row: &[i32],
        keep: &[bool],
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        reference::index_softmax_row(row, |j| keep[j], lut, threshold, e)
    }

    /// [`KernelImpl::paper_sim_row`]: the reference row.
    pub(crate) fn paper_sim(
        row: &[i32],
        keep: &[bool],
        lut: &Lut,
        threshold: i32,
        p: &mut [u8],
    ) -> u32 {
        reference::index_softmax_paper_sim_row(row, |j| keep[j], lut, threshold, p)
    }
}
