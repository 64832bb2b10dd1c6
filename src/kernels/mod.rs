//! Compute kernels: the crate-private `KernelImpl` trait the engine drives, the public
//! [`Kernel`] handle that chooses one and checks every call, and the packed operand layouts.
//!
//! `generic` is portable scalar code built on [`crate::reference`]; architecture modules
//! plug in faster kernels whose constructors return `None` unless the CPU has the features
//! they need, so holding a kernel value is proof that it may run. Every kernel gives exactly
//! the reference's integers. Which kernel runs is the caller's choice per call
//! ([`crate::Attention::kernel`]); the default is [`Kernel::best`].

/// `gemm_s8s8_nt` and `gemm_u8s8` of a kernel that packs its B operands: pack, then run the
/// packed product (every SIMD kernel).
#[allow(unused_macros)]
macro_rules! gemms_via_packing {
    () => {
        fn gemm_s8s8_nt(&self, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
            let packed = self.pack_k(b, n, k);
            self.gemm_s8s8_packed(a, m, &packed, c);
        }

        fn gemm_u8s8(&self, a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
            let packed = self.pack_v(b, k, n);
            self.gemm_u8s8_packed(a, m, &packed, c);
        }
    };
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
pub(crate) mod generic;
mod handle;
mod layout;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

pub(crate) use handle::row_len as row_len_limit;
pub use handle::Kernel;
pub(crate) use layout::LayoutId;
pub use layout::PackedB;

use crate::lut::Lut;
use crate::memory::AlignedVec;

/// Largest depth for which an s8 x s8 dot product of i8 values (including -128) fits i32.
pub const MAX_K_S8S8: usize = (i32::MAX as usize) / (128 * 128);
/// Largest depth for which a u8 x s8 dot product fits i32.
pub const MAX_K_U8S8: usize = (i32::MAX as usize) / (255 * 128);

/// The operations a kernel provides. Callers (the [`Kernel`] handle and the engine) check
/// shapes and lengths before calling, so implementations may rely on the documented
/// preconditions (they assert the ones a slip would turn into out-of-bounds access).
pub(crate) trait KernelImpl: Send + Sync + 'static {
    /// Short name, as [`Kernel::by_name`] accepts it.
    fn name(&self) -> &'static str;

    /// The layout [`KernelImpl::pack_k_into`] and [`KernelImpl::pack_v_into`] produce.
    fn layout(&self) -> LayoutId {
        LayoutId::Plain
    }

    /// `c[m x n] = a[m x k] * b[n x k]^T`, exact. Preconditions: `a.len() == m*k`,
    /// `b.len() == n*k`, `c.len() == m*n`, `k <= MAX_K_S8S8`. Any i8 value, -128 included.
    fn gemm_s8s8_nt(&self, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]);

    /// `c[m x n] = a[m x k] * b[k x n]`, exact. Preconditions: `a.len() == m*k`,
    /// `b.len() == k*n`, `c.len() == m*n`, `k <= MAX_K_U8S8`. Any u8 and i8 values.
    fn gemm_u8s8(&self, a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]);

    /// IndexSoftmax exponent pass over `row[..valid]`: writes the table values to
    /// `e[..valid]`, zeros to `e[valid..]`, returns their sum (0 when `valid == 0`).
    /// Preconditions: `row.len() == e.len()`, `valid <= row.len() < 2^24`,
    /// `1 <= threshold <= 2^30`.
    fn index_softmax_row(
        &self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32;

    /// Normalized finish: `p[j] = round_half_up(255 p[j] / sum)`, all zeros when `sum == 0`.
    /// Precondition: `sum >= p[j]` for every `j` (so every result is <= 255); the pipelines
    /// pass the row's sum, or for part of a row the whole row's.
    fn normalize_row(&self, p: &mut [u8], sum: u32);

    /// Float softmax over `row[..valid]`, zeros past it; within a few f32 ulps of
    /// [`crate::reference::softmax_f32_row`].
    fn softmax_f32_row(&self, row: &mut [f32], valid: usize);

    /// The exponent pass of [`KernelImpl::index_softmax_row`] over the entries `keep` marks
    /// (any pattern, not only a prefix); the others get 0. Scalar for every kernel: dense
    /// masks only reach the standalone operation, never the pipelines.
    fn index_softmax_row_masked(
        &self,
        row: &[i32],
        keep: &[bool],
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        generic::Generic::masked_row(row, keep, lut, threshold, e)
    }

    /// The paper-simulation row (f32 index and normalisation, docs/numerics.md section 3) over
    /// the entries `keep` marks, P with scale 1/255; returns the row's sum of table values.
    /// Scalar for every kernel: the mode reproduces the authors' numbers, it is not fast.
    fn paper_sim_row(
        &self,
        row: &[i32],
        keep: &[bool],
        lut: &Lut,
        threshold: i32,
        p: &mut [u8],
    ) -> u32 {
        generic::Generic::paper_sim(row, keep, lut, threshold, p)
    }

    /// Writes K (`n x k` row-major, the B of [`KernelImpl::gemm_s8s8_nt`]) in this kernel's
    /// layout into `out`, which is zeroed and exactly `self.layout().k_len(n, k)` long. The
    /// default is the plain layout: a copy.
    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        debug_assert_eq!(out.len(), n * k);
        let _ = (n, k);
        out.copy_from_slice(b);
    }

    /// Writes V (`k x n` row-major, the B of [`KernelImpl::gemm_u8s8`]) in this kernel's
    /// layout into `out`, zeroed and exactly `self.layout().v_len(k, n)` long.
    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        debug_assert_eq!(out.len(), n * k);
        let _ = (n, k);
        out.copy_from_slice(b);
    }

    /// K packed into new storage.
    fn pack_k(&self, b: &[i8], n: usize, k: usize) -> PackedB {
        let layout = self.layout();
        let mut data = AlignedVec::zeroed(layout.k_len(n, k));
        self.pack_k_into(b, n, k, &mut data);
        PackedB::from_parts(data, n, k, layout)
    }

    /// V packed into new storage.
    fn pack_v(&self, b: &[i8], k: usize, n: usize) -> PackedB {
        let layout = self.layout();
        let mut data = AlignedVec::zeroed(layout.v_len(k, n));
        self.pack_v_into(b, k, n, &mut data);
        PackedB::from_parts(data, n, k, layout)
    }

    /// `c[m x n] = a[m x k] * K^T` with K from [`KernelImpl::pack_k`] of this kernel (or in
    /// the plain layout); exact, same preconditions as [`KernelImpl::gemm_s8s8_nt`].
    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c)
    }

    /// The row stride (`>= n`) in which callers of [`KernelImpl::gemm_s8s8_packed_strided`]
    /// should lay out a C of `n` columns. The default is `n`, dense rows.
    fn s_row_stride(&self, n: usize) -> usize {
        n
    }

    /// [`KernelImpl::gemm_s8s8_packed`] with the rows of C `ldc >= b.n` entries apart
    /// (`c.len() >= (m - 1) * ldc + b.n`); the entries between rows are left as they are.
    fn gemm_s8s8_packed_strided(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
        strided_s8s8_fallback(self, a, m, b, c, ldc)
    }

    /// `c[m x n] = a[m x k] * V` with V from [`KernelImpl::pack_v`] of this kernel (or in the
    /// plain layout); exact, same preconditions as [`KernelImpl::gemm_u8s8`].
    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c)
    }

    /// The row stride (`>= k`) in which callers of [`KernelImpl::gemm_u8s8_packed_strided`]
    /// should lay out an A of depth `k`. The default is `k`, dense rows.
    fn p_row_stride(&self, k: usize) -> usize {
        k
    }

    /// [`KernelImpl::gemm_u8s8_packed`] with the rows of A `lda >= b.k` bytes apart
    /// (`a.len() >= (m - 1) * lda + b.k`); the bytes between rows are not part of A.
    fn gemm_u8s8_packed_strided(&self, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
        strided_u8s8_fallback(self, a, lda, m, b, c)
    }
}

/// [`KernelImpl::gemm_u8s8_packed_strided`] by way of dense rows.
pub(crate) fn strided_u8s8_fallback<K: KernelImpl + ?Sized>(
    kernel: &K,
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedB,
    c: &mut [i32],
) {
    let k = b.k();
    assert!(
        lda >= k && (m == 0 || a.len() >= (m - 1) * lda + k),
        "A must be m rows of stride lda >= k"
    );
    if lda == k {
        return kernel.gemm_u8s8_packed(&a[..m * k], m, b, c);
    }
    let mut dense = Vec::with_capacity(m * k);
    for i in 0..m {
        dense.extend_from_slice(&a[i * lda..i * lda + k]);
    }
    kernel.gemm_u8s8_packed(&dense, m, b, c)
}

/// [`KernelImpl::gemm_s8s8_packed_strided`] by way of dense rows.
pub(crate) fn strided_s8s8_fallback<K: KernelImpl + ?Sized>(
    kernel: &K,
    a: &[i8],
    m: usize,
    b: &PackedB,
    c: &mut [i32],
    ldc: usize,
) {
    let n = b.n();
    assert!(
        ldc >= n && (m == 0 || c.len() >= (m - 1) * ldc + n),
        "C must be m rows of n entries, ldc >= n apart"
    );
    if n == 0 {
        return;
    }
    if ldc == n {
        return kernel.gemm_s8s8_packed(a, m, b, &mut c[..m * n]);
    }
    let mut dense = vec![0i32; m * n];
    kernel.gemm_s8s8_packed(a, m, b, &mut dense);
    for (dst, src) in c.chunks_mut(ldc).zip(dense.chunks_exact(n)) {
        dst[..n].copy_from_slice(src);
    }
}

/// Every kernel this CPU can run, the portable one first, the fastest last.
pub(crate) fn available_impls() -> Vec<&'static dyn KernelImpl> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static dyn KernelImpl> = vec![&generic::Generic];
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::kernels());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::kernels());
    v
}
