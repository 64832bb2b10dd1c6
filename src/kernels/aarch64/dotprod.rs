//! The Armv8.2 dot-product kernel (FEAT_DotProd): SDOT for the scores, UDOT for P x V.
//!
//! Scores: `sdot` by element, 4 depth values of 4 columns of K against 4 depth values of one
//! query row, i8 x i8 summed exactly into i32 (-128 included).
//!
//! P x V: without FEAT_I8MM there is no u8 x s8 dot product. V is packed as `v + 128` (u8),
//! `udot` computes `sum p (v + 128)` in u32 and the kernel subtracts `128 * sum_j p[j]` per row.
//! The u32 sum is at most `255 * 255 * k`, below 2^32 for every allowed depth
//! (`k <= MAX_K_U8S8`), and the true result fits i32, so wrapping i32 arithmetic on the bits is
//! exact.
//!
//! `vdotq_laneq_s32`/`vdotq_laneq_u32` are still unstable in `core::arch::aarch64` (Rust 1.96,
//! `stdarch_neon_dotprod`), so the two instructions are written with `asm!` inside functions
//! compiled with `dotprod`, which lets the assembler accept them.

use core::arch::aarch64::*;
use core::arch::asm;

use std::mem::MaybeUninit;

use super::{own_layout, pack_rows_strided, run_strips, Layout, MR, MR4, NR};
use crate::kernels::{strided_s8s8_fallback, strided_u8s8_fallback, KernelImpl, LayoutId, PackedB};

/// Proof that the CPU has NEON and the dot-product instructions.
pub struct Dotprod {
    _proof: (),
}

static DOTPROD: Dotprod = Dotprod { _proof: () };

impl Dotprod {
    /// The kernel, if this CPU has FEAT_DotProd.
    pub fn new() -> Option<&'static Dotprod> {
        (std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("dotprod"))
        .then_some(&DOTPROD)
    }
}

const NAME: &str = "dotprod";
const LAYOUT: Layout = Layout { kr: 4, k_step: 16 };
const LAYOUT_ID: LayoutId = LayoutId::Dotprod;

impl KernelImpl for Dotprod {
    shared_kernel_methods!();

    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        LAYOUT.pack_k(b, n, k, 0, out)
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
        }
        let k = b.k();
        // SAFETY: we hold a `Dotprod`, so NEON and SDOT are present; `b` is in our layout.
        unsafe { run_s8(a, k, m, b, c, b.n()) }
    }

    fn gemm_s8s8_packed_strided(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return strided_s8s8_fallback(self, a, m, b, c, ldc);
        }
        // SAFETY: as in `gemm_s8s8_packed`.
        unsafe { run_s8(a, b.k(), m, b, c, ldc) }
    }

    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        LAYOUT.pack_v(b, k, n, 0x80, out)
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
        }
        // SAFETY: as in `gemm_s8s8_packed`, with UDOT.
        unsafe { run_u8(a, b.k(), m, b, c) }
    }

    fn gemm_u8s8_packed_strided(&self, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return strided_u8s8_fallback(self, a, lda, m, b, c);
        }
        // SAFETY: as in `gemm_s8s8_packed`, with UDOT.
        unsafe { run_u8(a, lda, m, b, c) }
    }
}

/// Q K^T through [`run_strips`]: row-major strips, no corrections.
///
/// # Safety
/// The CPU must have NEON and SDOT; `b` must be in this kernel's own layout.
unsafe fn run_s8(a: &[i8], lda: usize, m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
    let (k, kp) = (b.k(), LAYOUT.padded_k(b.k()));
    let pack = |a: &[u8], i0, rows, tile_rows, s: &mut [MaybeUninit<u8>]| {
        pack_rows_strided(a, lda, k, kp, i0, rows, tile_rows, s);
        [0; MR]
    };
    // SAFETY: the caller's contract; the tiles read the row-major strips `pack` writes whole.
    unsafe { run_strips(LAYOUT, a, lda, m, b, c, ldc, [tile_sdot, tile4_sdot], pack) }
}

/// P x V through [`run_strips`]: row-major strips of P against `v + 128`, each row corrected by
/// `128 * sum(p)` (module docs).
///
/// # Safety
/// The CPU must have NEON and UDOT; `b` must be in this kernel's own layout.
unsafe fn run_u8(a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
    let (k, kp) = (b.k(), LAYOUT.padded_k(b.k()));
    let pack = |a: &[u8], i0: usize, rows: usize, tile_rows, s: &mut [MaybeUninit<u8>]| {
        pack_rows_strided(a, lda, k, kp, i0, rows, tile_rows, s);
        let mut corr = [0i32; MR];
        for (r, cr) in corr.iter_mut().enumerate().take(rows) {
            let row = &a[(i0 + r) * lda..(i0 + r) * lda + k];
            let sum: u32 = row.iter().map(|&p| p as u32).sum();
            // <= 128 * 255 * MAX_K_U8S8 < 2^31.
            *cr = (128 * sum) as i32;
        }
        corr
    };
    // SAFETY: as in `run_s8`, with UDOT.
    unsafe {
        run_strips(
            LAYOUT,
            a,
            lda,
            m,
            b,
            c,
            b.n(),
            [tile_udot, tile4_udot],
            pack,
        )
    }
}

/// `acc[l] += sum_t b[4l + t] * a[4 LANE + t]`, signed bytes.
#[inline(always)]
unsafe fn sdot_lane<const LANE: i32>(mut acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; callers are compiled with `dotprod`.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc[l] += sum_t b[4l + t] * a[4 LANE + t]`, unsigned bytes.
#[inline(always)]
unsafe fn udot_lane<const LANE: i32>(
    mut acc: uint32x4_t,
    b: uint8x16_t,
    a: uint8x16_t,
) -> uint32x4_t {
    // SAFETY: as in `sdot_lane`.
    unsafe {
        asm!(
            "udot {acc:v}.4s, {b:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            b = in(vreg) b,
            a = in(vreg) a,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// One micro-kernel body for both signednesses and both tile heights (`$rows`, 8 or 4): 16
/// depth values per step, each A row loaded as 16 bytes, and per group of 4 depth values two B
/// vectors (columns 0-3 and 4-7).
macro_rules! dot_tile {
    ($name:ident, $rows:expr, $a:ty, $acc:ty, $zero:expr, $zero_a:expr, $load:ident, $dot:ident, $to_s32:expr) => {
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $name(
            a: *const $a,
            b: *const i8,
            kp: usize,
            corr: &[i32; MR],
            c: *mut i32,
            ldc: usize,
        ) {
            let mut acc: [[$acc; 2]; $rows] = [[$zero; 2]; $rows];
            let mut t = 0;
            while t < kp {
                let mut av = [$zero_a; $rows];
                for (r, v) in av.iter_mut().enumerate() {
                    // SAFETY: row r of the strip has kp >= t + 16 bytes.
                    *v = unsafe { $load(a.add(r * kp + t)) };
                }
                macro_rules! group {
                    ($g:literal) => {{
                        // SAFETY: the panel holds NR * kp bytes; this is depth group t/4 + g.
                        let (b0, b1) = unsafe {
                            let p = b.add((t / 4 + $g) * 4 * NR).cast::<$a>();
                            ($load(p), $load(p.add(16)))
                        };
                        for (acc, &a) in acc.iter_mut().zip(&av) {
                            // SAFETY: register-only; this function has `dotprod`.
                            unsafe {
                                acc[0] = $dot::<$g>(acc[0], b0, a);
                                acc[1] = $dot::<$g>(acc[1], b1, a);
                            }
                        }
                    }};
                }
                group!(0);
                group!(1);
                group!(2);
                group!(3);
                t += 16;
            }
            for (r, (acc, &corr)) in acc.iter().zip(corr).enumerate() {
                let cr = vdupq_n_s32(corr);
                // SAFETY: the caller provides a $rows x 8 destination with row stride ldc.
                unsafe {
                    vst1q_s32(c.add(r * ldc), vsubq_s32($to_s32(acc[0]), cr));
                    vst1q_s32(c.add(r * ldc + 4), vsubq_s32($to_s32(acc[1]), cr));
                }
            }
        }
    };
}

dot_tile!(
    tile_sdot,
    MR,
    i8,
    int32x4_t,
    vdupq_n_s32(0),
    vdupq_n_s8(0),
    vld1q_s8,
    sdot_lane,
    core::convert::identity
);
dot_tile!(
    tile_udot,
    MR,
    u8,
    uint32x4_t,
    vdupq_n_u32(0),
    vdupq_n_u8(0),
    vld1q_u8,
    udot_lane,
    vreinterpretq_s32_u32
);
// The 4-row tiles of a decoding step's few query rows (see `MR4`).
dot_tile!(
    tile4_sdot,
    MR4,
    i8,
    int32x4_t,
    vdupq_n_s32(0),
    vdupq_n_s8(0),
    vld1q_s8,
    sdot_lane,
    core::convert::identity
);
dot_tile!(
    tile4_udot,
    MR4,
    u8,
    uint32x4_t,
    vdupq_n_u32(0),
    vdupq_n_u8(0),
    vld1q_u8,
    udot_lane,
    vreinterpretq_s32_u32
);
