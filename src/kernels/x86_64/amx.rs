//! The AMX-INT8 kernel (`amx`): both attention GEMMs on Intel Advanced Matrix Extensions
//! tiles (Sapphire Rapids and later); the row operations on the AVX-512 kernel.
//!
//! One `tdpbusd` (u8 x s8, P x V) or `tdpbssd` (s8 x s8, Q x K^T) multiplies a 16 x 64 byte A
//! tile by a 64 x 16 byte B tile into a 16 x 16 i32 C tile: 16,384 multiply-adds, each four
//! products summed exactly into the i32 accumulator (no saturation, wrapping only where the
//! true result would not fit i32, which the trait's depth limits exclude). So both products
//! are exact for every u8 and s8 value, -128 included, without the +128 trick of VNNI.
//!
//! Tile rows must start on 64-byte lines: a row that straddles two lines is two accesses.
//! Packed operands and the fused pipeline's score and P blocks live in [`AlignedVec`]s, and an
//! A that is not on lines is copied once per call (docs/performance.md has the measurement:
//! about twice as fast on lines). Score rows are stored an odd number of lines apart
//! ([`KernelImpl::s_row_stride`]) and P read at such a stride ([`KernelImpl::p_row_stride`]),
//! so the 16 rows of a tile do not all fall into one L1 set when L is a power of two.
//!
//! Layouts (all tiles are configured 16 rows x 64 bytes):
//! - B (V, or K^T made from K's rows) is packed into panels of 16 columns, each
//!   `[group][column][4 bytes]` with the depth padded with zeros to a multiple of 64 (16
//!   groups): the B tile of depth step `t` is the 1,024 contiguous bytes at `t * 1024`, row
//!   stride 64. This is the AVX-512 layout with 16-column panels ([`Blocking::pack_b_rows`],
//!   [`Blocking::pack_b_cols`] without the sign flip).
//! - A (P, or Q) is read in place, 16 rows of 64 bytes per tile with the row stride of the
//!   matrix, when the depth is a multiple of 64 and the rows start on lines; otherwise it is
//!   copied once per call into a zero-padded aligned buffer. A last strip of fewer than 16
//!   rows is copied into a zeroed 16-row buffer.
//! - C tiles go straight to the output when they lie inside it, else through a scratch tile.
//!
//! The register block is 2 x 2 tiles (32 x 32 of C: accumulators tmm0-3, A tiles tmm4-5, B
//! tiles tmm6-7), so each depth step loads four tiles for four tile products.
//!
//! Linux grants AMX tile data per process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); the kernel exists only if the CPU reports AMX-TILE and AMX-INT8 and
//! that request succeeds. Each GEMM call loads the tile configuration and releases the tiles
//! when it returns (also on unwinding), so no tile state outlives it.

use std::arch::asm;
use std::sync::OnceLock;

use super::avx512::Avx512;
use super::{interleave4, Blocking, ColGroups};
use crate::kernels::{KernelImpl, LayoutId, PackedB};
use crate::memory::AlignedVec;

const NAME: &str = "amx";
/// Depth bytes per tile step (64 bytes = 16 groups of 4).
const TK: usize = 64;
/// Rows of an A or C tile.
const TM: usize = 16;
/// Columns of a B or C tile, and the width of a packed panel.
const TN: usize = 16;
/// Bytes of one B tile inside a panel.
const B_TILE: usize = TK * TN;
/// The packing geometry (only `nr` and `kg` matter to the packers).
const BL: Blocking = Blocking {
    mr: TM,
    nr: TN,
    kg: 4,
    kc: TK / 4,
    mc: 1,
};

/// The AMX kernel. Only [`Amx::detect`] creates one, after the CPU and OS checks, so holding
/// a reference proves that the tile instructions may run in this process.
pub struct Amx {
    rows: &'static Avx512,
}

impl Amx {
    pub fn detect() -> Option<&'static Amx> {
        static K: OnceLock<Option<Amx>> = OnceLock::new();
        K.get_or_init(|| {
            let rows = Avx512::detect_vbmi().or_else(Avx512::detect_vnni)?;
            (cpu_has_amx_int8() && request_tile_data()).then_some(Amx { rows })
        })
        .as_ref()
    }
}

/// CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
fn cpu_has_amx_int8() -> bool {
    let r = std::arch::x86_64::__cpuid_count(7, 0);
    (r.edx >> 24) & 3 == 3
}

/// Asks Linux for permission to use the AMX tile data state in this process.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no memory
    // of ours; it fails (non-zero) where the kernel or the hypervisor does not offer AMX.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Depth padded to whole tile steps.
fn padded_k(k: usize) -> usize {
    k.next_multiple_of(TK)
}

/// Length of packed B for `n` columns of depth `k`.
fn packed_len(n: usize, k: usize) -> usize {
    BL.packed_b_len(n, padded_k(k))
}

/// The tile configuration, loaded for the lifetime of the value: palette 1, all eight tiles
/// 16 rows of 64 bytes. Dropping it releases the tiles.
struct Tiles(());

impl Tiles {
    /// # Safety
    /// The CPU must have AMX and the process permission to use it (an [`Amx`] exists).
    unsafe fn configure() -> Tiles {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&(TK as u16).to_le_bytes());
            cfg[48 + t] = TM as u8;
        }
        // SAFETY: the caller guarantees AMX; `cfg` is a valid 64-byte palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only after `configure`, so AMX is usable; `tilerelease`
        // returns the tile state to its initial (unused) condition.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// A C tile outside the output (a ragged edge), on its own cache lines like the output's rows.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct CTile([i32; TM * TN]);

/// Where one A tile row block comes from: `rows` rows (the rest is zeros) at `ptr` with row
/// stride `lda` bytes, `kt * 64` readable bytes per row.
#[derive(Clone, Copy)]
struct ATile {
    ptr: *const u8,
    lda: usize,
}

/// One 2 x 2 (or smaller) block of C tiles: `na` A strips times `nb` B panels over `kt` depth
/// steps, stored to `c[i][j]` with row stride `ldc[i][j]` bytes.
///
/// # Safety
/// Tiles must be configured ([`Tiles`]); each A strip must have 16 rows of `64 kt` readable
/// bytes at its stride, each B panel `kt` tiles of 1,024 readable bytes, and each used C
/// pointer 16 rows of 64 writable bytes at its stride.
#[inline(always)]
unsafe fn tile_block<const SIGNED: bool>(
    a: [ATile; 2],
    na: usize,
    b: [*const u8; 2],
    nb: usize,
    kt: usize,
    c: [[(*mut i32, usize); 2]; 2],
) {
    // SAFETY: (whole function) register-only tile operations, or loads and stores within the
    // ranges the caller guarantees; tiles are configured.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for t in 0..kt {
            let (a0, a1) = (a[0].ptr.add(t * TK), a[1].ptr.add(t * TK));
            let (b0, b1) = (b[0].add(t * B_TILE), b[1].add(t * B_TILE));
            asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) a0, s = in(reg) a[0].lda,
                options(nostack, readonly));
            asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) b0, s = in(reg) TK,
                options(nostack, readonly));
            dp::<SIGNED, 0>();
            if nb == 2 {
                asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) b1, s = in(reg) TK,
                    options(nostack, readonly));
                dp::<SIGNED, 1>();
            }
            if na == 2 {
                asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) a1, s = in(reg) a[1].lda,
                    options(nostack, readonly));
                dp::<SIGNED, 2>();
                if nb == 2 {
                    dp::<SIGNED, 3>();
                }
            }
        }
        let (p, s) = c[0][0];
        asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) s, options(nostack));
        if nb == 2 {
            let (p, s) = c[0][1];
            asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) s,
                options(nostack));
        }
        if na == 2 {
            let (p, s) = c[1][0];
            asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) s,
                options(nostack));
            if nb == 2 {
                let (p, s) = c[1][1];
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) s,
                    options(nostack));
            }
        }
    }
}

/// One tile product into accumulator `tmm{C}` (A tile `tmm4 + C / 2`, B tile `tmm6 + C % 2`):
/// `tdpbssd` (s8 x s8) when `SIGNED`, else `tdpbusd` (u8 x s8).
///
/// # Safety
/// Tiles must be configured ([`Tiles`]).
#[inline(always)]
unsafe fn dp<const SIGNED: bool, const C: u8>() {
    // SAFETY: register-only tile operations on configured tiles (the caller's guarantee).
    unsafe {
        match (SIGNED, C) {
            (true, 0) => asm!("tdpbssd tmm0, tmm4, tmm6", options(nostack, nomem)),
            (true, 1) => asm!("tdpbssd tmm1, tmm4, tmm7", options(nostack, nomem)),
            (true, 2) => asm!("tdpbssd tmm2, tmm5, tmm6", options(nostack, nomem)),
            (true, _) => asm!("tdpbssd tmm3, tmm5, tmm7", options(nostack, nomem)),
            (false, 0) => asm!("tdpbusd tmm0, tmm4, tmm6", options(nostack, nomem)),
            (false, 1) => asm!("tdpbusd tmm1, tmm4, tmm7", options(nostack, nomem)),
            (false, 2) => asm!("tdpbusd tmm2, tmm5, tmm6", options(nostack, nomem)),
            (false, _) => asm!("tdpbusd tmm3, tmm5, tmm7", options(nostack, nomem)),
        }
    }
}

impl Amx {
    /// `c = A[m x k] * B`, C rows `ldc >= n` i32 apart (`c.len() >= (m - 1) ldc + n`; the
    /// entries between rows are left alone), for A rows `lda >= k` bytes apart (`a.len() >=
    /// (m - 1) lda + k`) and B packed by this kernel: A is u8 (`tdpbusd`) or, when `SIGNED`, the bytes
    /// of s8 values (`tdpbssd`); B is s8.
    fn run<const SIGNED: bool>(
        &self,
        a: &[u8],
        lda: usize,
        m: usize,
        b: &PackedB,
        c: &mut [i32],
        ldc: usize,
    ) {
        let (n, k) = (b.n(), b.k());
        assert!(
            lda >= k && (m == 0 || a.len() >= (m - 1) * lda + k),
            "A must be m rows of stride lda >= k"
        );
        assert!(
            ldc >= n && (m == 0 || c.len() >= (m - 1) * ldc + n),
            "C must be m rows of n entries, ldc >= n apart"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0);
            }
            return;
        }
        let kp = padded_k(k);
        let kt = kp / TK;
        let panels = n.div_ceil(TN);
        let panel_bytes = kp * TN;
        debug_assert_eq!(b.data().len(), panels * panel_bytes);
        // A tile reads 64 kt = kp bytes per row. Bytes k..kp of a row meet zero rows of B,
        // so whatever they hold adds 0; they only have to be readable, which rows of stride
        // lda >= kp are (up to the last row, whose kp bytes must lie inside `a`). Tile rows
        // also have to start on 64-byte lines, or every row load is two (half the speed,
        // docs/performance.md). Otherwise copy A into aligned rows of kp bytes.
        let line_rows = (a.as_ptr() as usize).is_multiple_of(64) && lda.is_multiple_of(64);
        let padded;
        let (a, lda) = if lda >= kp && line_rows && a.len() >= (m - 1) * lda + kp {
            (a, lda)
        } else {
            let mut v = AlignedVec::<u8>::zeroed(m * kp);
            for (r, dst) in v.chunks_exact_mut(kp).enumerate() {
                dst[..k].copy_from_slice(&a[r * lda..r * lda + k]);
            }
            padded = v;
            (&padded[..], kp)
        };
        // The last strip when m is not a multiple of 16: its rows, zero below.
        let full_strips = m / TM;
        let mut tail_a = AlignedVec::<u8>::default();
        if !m.is_multiple_of(TM) {
            tail_a = AlignedVec::zeroed(TM * kp);
            let r0 = full_strips * TM;
            for (dst, src) in tail_a.chunks_exact_mut(kp).zip(a[r0 * lda..].chunks(lda)) {
                dst[..k].copy_from_slice(&src[..k]);
            }
        }
        let strips = m.div_ceil(TM);
        let strip = |s: usize| {
            if s < full_strips {
                ATile {
                    ptr: a[s * TM * lda..].as_ptr(),
                    lda,
                }
            } else {
                ATile {
                    ptr: tail_a.as_ptr(),
                    lda: kp,
                }
            }
        };
        let mut scratch = [[CTile([0; TM * TN]); 2]; 2];
        // SAFETY: an `Amx` exists, so AMX is usable in this process.
        let tiles = unsafe { Tiles::configure() };
        let ldc_bytes = ldc * 4;
        for s0 in (0..strips).step_by(2) {
            let na = 2.min(strips - s0);
            let a_tiles = [strip(s0), strip(s0 + na - 1)];
            for p0 in (0..panels).step_by(2) {
                let nb = 2.min(panels - p0);
                let b_ptrs = [
                    b.data()[p0 * panel_bytes..].as_ptr() as *const u8,
                    b.data()[(p0 + nb - 1) * panel_bytes..].as_ptr() as *const u8,
                ];
                // Each C tile: in place when it lies inside C, else its scratch tile.
                let inside = |i: usize, j: usize| (s0 + i + 1) * TM <= m && (p0 + j + 1) * TN <= n;
                let mut dst = [[(std::ptr::null_mut::<i32>(), 0usize); 2]; 2];
                for (i, row) in dst.iter_mut().enumerate() {
                    for (j, d) in row.iter_mut().enumerate() {
                        let (r0, c0) = ((s0 + i) * TM, (p0 + j) * TN);
                        *d = if inside(i, j) {
                            (c[r0 * ldc + c0..].as_mut_ptr(), ldc_bytes)
                        } else {
                            (scratch[i][j].0.as_mut_ptr(), TN * 4)
                        };
                    }
                }
                // SAFETY: tiles are configured; each A strip has 16 rows of kp = 64 kt
                // readable bytes at its stride (whole rows of the padded A, or the zeroed
                // tail buffer); each of the `nb` panels holds kt B tiles; every C destination
                // used is 16 rows of 64 bytes at its stride inside C (`inside`, with the length
                // asserted above) or a scratch tile.
                unsafe { tile_block::<SIGNED>(a_tiles, na, b_ptrs, nb, kt, dst) };
                for (i, tiles) in scratch.iter().enumerate().take(na) {
                    for (j, tile) in tiles.iter().enumerate().take(nb) {
                        if inside(i, j) {
                            continue;
                        }
                        let (r0, c0) = ((s0 + i) * TM, (p0 + j) * TN);
                        let (rows, cols) = (TM.min(m - r0), TN.min(n - c0));
                        for (r, src) in tile.0.chunks_exact(TN).take(rows).enumerate() {
                            c[(r0 + r) * ldc + c0..][..cols].copy_from_slice(&src[..cols]);
                        }
                    }
                }
            }
        }
        drop(tiles);
    }
}

impl KernelImpl for Amx {
    fn name(&self) -> &'static str {
        NAME
    }

    fn layout(&self) -> LayoutId {
        LayoutId::Amx
    }

    gemms_via_packing!();

    rows_from_field!();

    /// K as the B of `tdpbssd`: the layout of [`Amx::pack_v_into`] for K^T, made from K's
    /// rows (each group 4 consecutive bytes of one key), depth padded with zeros to whole
    /// tiles.
    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        assert_eq!(b.len(), n * k, "pack_k: K must be n x k");
        let kp = padded_k(k);
        let padded;
        let rows = if kp == k {
            b
        } else {
            let mut p = vec![0i8; n * kp];
            for (dst, src) in p.chunks_exact_mut(kp).zip(b.chunks_exact(k.max(1))) {
                dst[..k].copy_from_slice(src);
            }
            padded = p;
            &padded[..]
        };
        BL.pack_b_cols(rows, n, kp, ColGroups::Bytes { flip: false }, out)
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.layout() == LayoutId::Plain {
            return self.rows.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
        }
        assert_eq!(c.len(), m * b.n(), "C must be m x n");
        self.gemm_s8s8_packed_strided(a, m, b, c, b.n())
    }

    /// Rows an odd number of 64-byte lines apart, so that the 16 rows of a stored C tile do
    /// not all fall into one L1 set (score rows of 1,024 or 4,096 keys otherwise would).
    fn s_row_stride(&self, n: usize) -> usize {
        let lines = (4 * n).div_ceil(64);
        16 * (lines | 1)
    }

    fn gemm_s8s8_packed_strided(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
        if b.layout() == LayoutId::Plain {
            return crate::kernels::strided_s8s8_fallback(self, a, m, b, c, ldc);
        }
        self.check(b);
        assert_eq!(a.len(), m * b.k(), "gemm_s8s8_packed: A must be m x k");
        let a: &[u8] = bytemuck::cast_slice(a);
        self.run::<true>(a, b.k(), m, b, c, ldc);
    }

    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        assert_eq!(b.len(), n * k, "pack_v: V must be k x n");
        let kp = padded_k(k);
        // Extra depth rows of V are zeros.
        let padded;
        let v = if kp == k {
            b
        } else {
            let mut p = b.to_vec();
            p.resize(kp * n, 0);
            padded = p;
            &padded[..]
        };
        BL.pack_b_rows(v, kp, n, out, |rows, j0, dst| {
            interleave4(rows, j0, dst, false)
        })
    }

    /// Rows a multiple of 64 bytes (whole tile steps, read in place) and an odd number of
    /// 64-byte lines apart: 16 tile rows then fall into 16 different L1 sets. With a power
    /// of two stride (P rows of 1,024 or 4,096 keys) every tile load hit one to four sets.
    fn p_row_stride(&self, k: usize) -> usize {
        let kp = padded_k(k);
        if (kp / 64).is_multiple_of(2) {
            kp + 64
        } else {
            kp
        }
    }

    fn gemm_u8s8_packed_strided(&self, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
        if b.layout() == LayoutId::Plain {
            return crate::kernels::strided_u8s8_fallback(self, a, lda, m, b, c);
        }
        self.check(b);
        assert_eq!(c.len(), m * b.n(), "C must be m x n");
        self.run::<false>(a, lda, m, b, c, b.n());
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.layout() == LayoutId::Plain {
            return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
        }
        self.check(b);
        assert_eq!(c.len(), m * b.n(), "C must be m x n");
        self.run::<false>(a, b.k(), m, b, c, b.n());
    }
}

impl Amx {
    /// Panics unless `b` is in this kernel's layout (passing another kernel's is a caller bug,
    /// and reading it would run past its end; the public handle reports it as an error first).
    fn check(&self, b: &PackedB) {
        assert!(
            b.layout() == LayoutId::Amx && b.data().len() == packed_len(b.n(), b.k()),
            "PackedB from '{}' ({} bytes for {} x {}) passed to kernel '{NAME}'",
            b.packed_by(),
            b.data().len(),
            b.n(),
            b.k()
        );
    }
}
