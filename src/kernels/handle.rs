//! [`Kernel`]: the public handle of one kernel. It names a kernel this CPU can run and checks
//! every argument before the kernel sees it, so nothing a caller passes can make a kernel read
//! out of bounds or panic.

use std::fmt;
use std::sync::OnceLock;

use super::{available_impls, KernelImpl, PackedB, MAX_K_S8S8, MAX_K_U8S8};
use crate::error::{check_len, invalid, mul, Error, Result};
use crate::lut::{Lut, MAX_ROW_LEN, MAX_THRESHOLD};

/// A compute kernel this CPU supports: `generic` (portable scalar code, always present), or
/// one of the SIMD kernels (`avx2`, `avxvnni`, `avx512vnni`, `avx512vbmi`, `amx` on x86-64;
/// `neon`, `dotprod`, `i8mm` on aarch64). Every kernel gives the same integers bit for bit.
///
/// A value can only be obtained for a kernel the CPU can run, which is what makes the kernels'
/// SIMD code sound to call.
#[derive(Clone, Copy)]
pub struct Kernel {
    imp: &'static dyn KernelImpl,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Kernel").field(&self.name()).finish()
    }
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Kernel) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Kernel {}

impl Kernel {
    pub(crate) fn from_impl(imp: &'static dyn KernelImpl) -> Kernel {
        Kernel { imp }
    }

    pub(crate) fn imp(self) -> &'static dyn KernelImpl {
        self.imp
    }

    /// The kernel's name, as [`Kernel::by_name`] accepts it.
    pub fn name(self) -> &'static str {
        self.imp.name()
    }

    /// The portable scalar kernel (the reference's arithmetic).
    pub fn generic() -> Kernel {
        Kernel::from_impl(&super::generic::Generic)
    }

    /// Every kernel this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        available_impls()
            .into_iter()
            .map(Kernel::from_impl)
            .collect()
    }

    /// The fastest kernel this CPU can run (detected once per process: CPU features do not
    /// change while it runs).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Kernel::available();
            // `available` always starts with the generic kernel.
            all[all.len() - 1]
        })
    }

    /// The kernel called `name`.
    ///
    /// # Errors
    /// [`Error::UnknownKernel`] if no kernel has that name or this CPU cannot run it.
    pub fn by_name(name: &str) -> Result<Kernel> {
        let all = Kernel::available();
        all.iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| Error::UnknownKernel {
                name: name.to_string(),
                available: all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
            })
    }

    /// Scores: `c[m x n] = a[m x k] * b[n x k]^T`, exact in i32 (both operands row-major).
    /// Every i8 value is accepted, -128 included.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for buffers that do not match `m`, `n`, `k`;
    /// [`Error::LimitExceeded`] for `k > MAX_K_S8S8`, where i32 could overflow.
    pub fn gemm_s8s8_nt(
        self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
        c: &mut [i32],
    ) -> Result<()> {
        check_len("A", mul("A", m, k)?, a.len())?;
        check_len("B", mul("B", n, k)?, b.len())?;
        check_len("C", mul("C", m, n)?, c.len())?;
        depth_s8s8(k)?;
        self.imp.gemm_s8s8_nt(a, b, m, n, k, c);
        Ok(())
    }

    /// P x V: `c[m x n] = a[m x k] * b[k x n]`, exact in i32, u8 times s8 (any values).
    ///
    /// # Errors
    /// [`Error::LengthMismatch`]; [`Error::LimitExceeded`] for `k > MAX_K_U8S8` (65,793):
    /// split longer key ranges.
    pub fn gemm_u8s8(
        self,
        a: &[u8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
        c: &mut [i32],
    ) -> Result<()> {
        check_len("A", mul("A", m, k)?, a.len())?;
        check_len("B", mul("B", k, n)?, b.len())?;
        check_len("C", mul("C", m, n)?, c.len())?;
        depth_u8s8(k)?;
        self.imp.gemm_u8s8(a, b, m, n, k, c);
        Ok(())
    }

    /// Packs K (`n x k` row-major) once for many products against it.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] or [`Error::LimitExceeded`] as for [`Kernel::gemm_s8s8_nt`].
    pub fn pack_k(self, b: &[i8], n: usize, k: usize) -> Result<PackedB> {
        check_len("K", mul("K", n, k)?, b.len())?;
        depth_s8s8(k)?;
        Ok(self.imp.pack_k(b, n, k))
    }

    /// Packs V (`k x n` row-major) once for many products against it.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] or [`Error::LimitExceeded`] as for [`Kernel::gemm_u8s8`].
    pub fn pack_v(self, b: &[i8], k: usize, n: usize) -> Result<PackedB> {
        check_len("V", mul("V", n, k)?, b.len())?;
        depth_u8s8(k)?;
        Ok(self.imp.pack_v(b, k, n))
    }

    /// `c[m x n] = a[m x k] * K^T` for K packed by this kernel.
    ///
    /// # Errors
    /// [`Error::PackedLayout`] if `b` was packed by a kernel of another family;
    /// [`Error::LengthMismatch`] for `a` or `c`.
    pub fn gemm_s8s8_packed(self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) -> Result<()> {
        self.check_packed(b)?;
        check_len("A", mul("A", m, b.k())?, a.len())?;
        check_len("C", mul("C", m, b.n())?, c.len())?;
        self.imp.gemm_s8s8_packed(a, m, b, c);
        Ok(())
    }

    /// [`Kernel::gemm_s8s8_packed`] with the rows of C `ldc >= n` entries apart (the entries
    /// between rows are left as they are); [`Kernel::s_row_stride`] is the stride this kernel
    /// stores fastest.
    ///
    /// # Errors
    /// As [`Kernel::gemm_s8s8_packed`], and [`Error::InvalidParameter`] for `ldc < n`.
    pub fn gemm_s8s8_packed_strided(
        self,
        a: &[i8],
        m: usize,
        b: &PackedB,
        c: &mut [i32],
        ldc: usize,
    ) -> Result<()> {
        self.check_packed(b)?;
        check_len("A", mul("A", m, b.k())?, a.len())?;
        if ldc < b.n() {
            return invalid("ldc", ldc, "at least the number of columns");
        }
        if m > 0 {
            let need = mul("C", m - 1, ldc)? + b.n();
            if c.len() < need {
                return Err(Error::LengthMismatch {
                    tensor: "C",
                    expected: need,
                    found: c.len(),
                });
            }
        }
        self.imp.gemm_s8s8_packed_strided(a, m, b, c, ldc);
        Ok(())
    }

    /// The row stride (`>= n`) of score blocks that [`Kernel::gemm_s8s8_packed_strided`]
    /// stores fastest.
    pub fn s_row_stride(self, n: usize) -> usize {
        self.imp.s_row_stride(n)
    }

    /// `c[m x n] = a[m x k] * V` for V packed by this kernel.
    ///
    /// # Errors
    /// [`Error::PackedLayout`]; [`Error::LengthMismatch`] for `a` or `c`.
    pub fn gemm_u8s8_packed(self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) -> Result<()> {
        self.check_packed(b)?;
        check_len("A", mul("A", m, b.k())?, a.len())?;
        check_len("C", mul("C", m, b.n())?, c.len())?;
        self.imp.gemm_u8s8_packed(a, m, b, c);
        Ok(())
    }

    /// [`Kernel::gemm_u8s8_packed`] with the rows of A `lda >= k` bytes apart (`a.len() >= (m
    /// - 1) * lda + k`); [`Kernel::p_row_stride`] is the stride this kernel reads fastest.
    ///
    /// # Errors
    /// As [`Kernel::gemm_u8s8_packed`], and [`Error::InvalidParameter`] for `lda < k`.
    pub fn gemm_u8s8_packed_strided(
        self,
        a: &[u8],
        lda: usize,
        m: usize,
        b: &PackedB,
        c: &mut [i32],
    ) -> Result<()> {
        self.check_packed(b)?;
        if lda < b.k() {
            return invalid("lda", lda, "at least the depth");
        }
        if m > 0 && a.len() < mul("A", m - 1, lda)? + b.k() {
            return Err(Error::LengthMismatch {
                tensor: "A",
                expected: (m - 1) * lda + b.k(),
                found: a.len(),
            });
        }
        check_len("C", mul("C", m, b.n())?, c.len())?;
        self.imp.gemm_u8s8_packed_strided(a, lda, m, b, c);
        Ok(())
    }

    /// The row stride (`>= k`) of P blocks that [`Kernel::gemm_u8s8_packed_strided`] reads
    /// fastest.
    pub fn p_row_stride(self, k: usize) -> usize {
        self.imp.p_row_stride(k)
    }

    /// IndexSoftmax's exponent pass over `row[..valid]` (docs/numerics.md section 3): table
    /// values into `e[..valid]`, zeros past it; returns their sum.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `e` is as long as `row`; [`Error::InvalidParameter`]
    /// for `valid > row.len()` or a threshold outside `[1, 2^30]`; [`Error::LimitExceeded`]
    /// for rows of `2^24` entries or more.
    pub fn index_softmax_row(
        self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> Result<u32> {
        check_len("e", row.len(), e.len())?;
        if valid > row.len() {
            return invalid("valid", valid, "at most the row length");
        }
        if !(1..=MAX_THRESHOLD).contains(&threshold) {
            return invalid("threshold", threshold, "in [1, 2^30]");
        }
        row_len(row.len())?;
        Ok(self.imp.index_softmax_row(row, valid, lut, threshold, e))
    }

    /// The Normalized finish `p[j] = round_half_up(255 p[j] / sum)` (all zeros when `sum ==
    /// 0`). `sum` is normally the row's sum; any `sum` at least as large as every value keeps
    /// the results within a byte.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if a value exceeds a non-zero `sum`.
    pub fn normalize_row(self, p: &mut [u8], sum: u32) -> Result<()> {
        if sum != 0 && p.iter().any(|&v| v as u32 > sum) {
            return invalid("sum", sum, "at least every value of the row");
        }
        self.imp.normalize_row(p, sum);
        Ok(())
    }

    /// Float softmax over `row[..valid]`, zeros past it.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `valid > row.len()`.
    pub fn softmax_f32_row(self, row: &mut [f32], valid: usize) -> Result<()> {
        if valid > row.len() {
            return invalid("valid", valid, "at most the row length");
        }
        self.imp.softmax_f32_row(row, valid);
        Ok(())
    }

    fn check_packed(self, b: &PackedB) -> Result<()> {
        let own = self.imp.layout();
        if b.layout() == own || b.layout() == super::LayoutId::Plain {
            Ok(())
        } else {
            Err(Error::PackedLayout {
                packed_by: b.packed_by(),
                kernel: self.name(),
            })
        }
    }
}

fn depth_s8s8(k: usize) -> Result<()> {
    if k > MAX_K_S8S8 {
        return Err(Error::LimitExceeded {
            what: "depth",
            value: k,
            limit: MAX_K_S8S8,
            reason: "s8 x s8 dot products could overflow i32",
        });
    }
    Ok(())
}

fn depth_u8s8(k: usize) -> Result<()> {
    if k > MAX_K_U8S8 {
        return Err(Error::LimitExceeded {
            what: "depth",
            value: k,
            limit: MAX_K_U8S8,
            reason: "u8 x s8 dot products could overflow i32; split the keys",
        });
    }
    Ok(())
}

pub(crate) fn row_len(len: usize) -> Result<()> {
    if len >= MAX_ROW_LEN {
        return Err(Error::LimitExceeded {
            what: "row length",
            value: len,
            limit: MAX_ROW_LEN - 1,
            reason: "the u32 row sum of IndexSoftmax is exact only below 2^24 entries",
        });
    }
    Ok(())
}
