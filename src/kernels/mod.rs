//! Compute kernels behind one trait, chosen at run time once and cached.
//!
//! [`generic::Generic`] is portable scalar code built on [`crate::reference`]; architecture
//! modules plug in faster kernels whose constructors return `None` unless the CPU has the
//! features they need, so holding a kernel value is proof that it may run. Set
//! `INTATTENTION_KERNEL=<name>` to force one (an unknown or unsupported name is an error, not a
//! silent fallback). Every kernel must give exactly the reference's integers.

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
pub mod aarch64;
pub mod generic;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use std::sync::OnceLock;

use crate::aligned::AlignedVec;
use crate::error::{Error, Result};
use crate::softmax::Lut;

/// Environment variable that forces a kernel by name.
pub const KERNEL_ENV: &str = "INTATTENTION_KERNEL";

/// Largest depth for which an s8 x s8 dot product of i8 values (including -128) fits i32.
pub const MAX_K_S8S8: usize = (i32::MAX as usize) / (128 * 128);
/// Largest depth for which a u8 x s8 dot product fits i32.
pub const MAX_K_U8S8: usize = (i32::MAX as usize) / (255 * 128);

/// The operations a kernel provides. Callers (the public ops in [`crate::gemm`],
/// [`crate::softmax`] and the pipelines) check shapes and lengths before calling, so
/// implementations may rely on the documented preconditions.
pub trait Kernel: Send + Sync + 'static {
    /// Short name, as accepted by `INTATTENTION_KERNEL`.
    fn name(&self) -> &'static str;

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
    /// Precondition: `sum` is the sum of the row's values (so every result is <= 255).
    fn normalize_row(&self, p: &mut [u8], sum: u32);

    /// Float softmax over `row[..valid]`, zeros past it; within a few f32 ulps of
    /// [`crate::reference::softmax_f32_row`].
    fn softmax_f32_row(&self, row: &mut [f32], valid: usize);

    /// Packs K (`n x k` row-major, the B of [`Kernel::gemm_s8s8_nt`]) once so that many blocks
    /// of query rows can be multiplied against it. The default keeps the plain layout.
    fn pack_k(&self, b: &[i8], n: usize, k: usize) -> PackedB {
        PackedB::plain(b, n, k)
    }

    /// `c[m x n] = a[m x k] * K^T` with K from [`Kernel::pack_k`] of the same kernel; exact,
    /// same preconditions as [`Kernel::gemm_s8s8_nt`].
    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        self.gemm_s8s8_nt(a, &b.data, m, b.n, b.k, c)
    }

    /// The row stride (`>= n`) in which callers of [`Kernel::gemm_s8s8_packed_strided`] should
    /// lay out a C of `n` columns. The default is `n`, dense rows.
    fn s_row_stride(&self, n: usize) -> usize {
        n
    }

    /// [`Kernel::gemm_s8s8_packed`] with the rows of C `ldc >= b.n` entries apart (`c.len() >=
    /// (m - 1) * ldc + b.n`); the entries between rows are left as they are. The default
    /// computes dense rows and copies them when `ldc != n`.
    fn gemm_s8s8_packed_strided(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
        strided_s8s8_fallback(self, a, m, b, c, ldc)
    }

    /// Packs V (`k x n` row-major, the B of [`Kernel::gemm_u8s8`]) once per head.
    fn pack_v(&self, b: &[i8], k: usize, n: usize) -> PackedB {
        PackedB::plain(b, n, k)
    }

    /// `c[m x n] = a[m x k] * V` with V from [`Kernel::pack_v`] of the same kernel; exact,
    /// same preconditions as [`Kernel::gemm_u8s8`].
    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        self.gemm_u8s8(a, &b.data, m, b.n, b.k, c)
    }

    /// The row stride (`>= k`) in which callers of [`Kernel::gemm_u8s8_packed_strided`]
    /// should lay out an A of depth `k`. The default is `k`, dense rows.
    fn p_row_stride(&self, k: usize) -> usize {
        k
    }

    /// [`Kernel::gemm_u8s8_packed`] with the rows of A `lda >= b.k` bytes apart
    /// (`a.len() == m * lda`); the bytes between rows are not part of A and may hold anything.
    /// The default copies A into dense rows when `lda != k`.
    fn gemm_u8s8_packed_strided(&self, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
        strided_u8s8_fallback(self, a, lda, m, b, c)
    }
}

/// [`Kernel::gemm_u8s8_packed_strided`] by way of dense rows.
pub(crate) fn strided_u8s8_fallback<K: Kernel + ?Sized>(
    kernel: &K,
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedB,
    c: &mut [i32],
) {
    let k = b.k;
    assert!(
        lda >= k && a.len() == m * lda,
        "A must be m rows of stride lda >= k"
    );
    if lda == k {
        return kernel.gemm_u8s8_packed(a, m, b, c);
    }
    let dense: Vec<u8> = a.chunks_exact(lda).flat_map(|r| &r[..k]).copied().collect();
    kernel.gemm_u8s8_packed(&dense, m, b, c)
}

/// [`Kernel::gemm_s8s8_packed_strided`] by way of dense rows.
pub(crate) fn strided_s8s8_fallback<K: Kernel + ?Sized>(
    kernel: &K,
    a: &[i8],
    m: usize,
    b: &PackedB,
    c: &mut [i32],
    ldc: usize,
) {
    let n = b.n;
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

/// A B operand in a kernel's own layout: `n` output columns, depth `k`. Only the kernel that
/// packed it knows the layout of `data`; `sums` holds whatever per-column corrections the
/// kernel needs (for example column sums for the u8 = s8 + 128 trick), possibly empty.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    /// The packed bytes, starting on a 64-byte line.
    pub data: AlignedVec<i8>,
    pub sums: Vec<i32>,
    pub n: usize,
    pub k: usize,
    /// Name of the kernel that packed it (checked in debug builds).
    pub packed_by: &'static str,
}

impl PackedB {
    /// `data` in the layout of the kernel named `packed_by`, no per-column corrections.
    pub fn new(
        data: impl Into<AlignedVec<i8>>,
        n: usize,
        k: usize,
        packed_by: &'static str,
    ) -> Self {
        let data = data.into();
        PackedB {
            data,
            sums: Vec::new(),
            n,
            k,
            packed_by,
        }
    }

    /// The unpacked layout: a copy of `b` as given.
    pub fn plain(b: &[i8], n: usize, k: usize) -> Self {
        PackedB::new(b, n, k, "plain")
    }
}

/// Every kernel this CPU can run, the portable one first.
pub fn available() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = vec![&generic::Generic];
    v.extend(arch_kernels());
    v
}

/// Kernels of this architecture that this CPU supports, slowest first.
fn arch_kernels() -> Vec<&'static dyn Kernel> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static dyn Kernel> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::kernels());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::kernels());
    v
}

/// The kernel named `name`, if it exists and this CPU supports it.
pub fn by_name(name: &str) -> Result<&'static dyn Kernel> {
    let avail = available();
    avail
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let names: Vec<_> = avail.iter().map(|k| k.name()).collect();
            Error::Param(format!(
                "kernel '{name}' is unknown or not supported by this CPU (available: {})",
                names.join(", ")
            ))
        })
}

/// The kernel every operation uses: `INTATTENTION_KERNEL` if set, else the fastest available.
/// Chosen once per process.
pub fn active() -> Result<&'static dyn Kernel> {
    static ACTIVE: OnceLock<std::result::Result<&'static dyn Kernel, String>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| match std::env::var(KERNEL_ENV) {
            Ok(name) if !name.is_empty() => {
                by_name(&name).map_err(|e| format!("{KERNEL_ENV}={name}: {e}"))
            }
            _ => Ok(*available().last().expect("generic kernel always exists")),
        })
        .clone()
        .map_err(Error::Param)
}
