//! The Armv8.6 int8 matrix-multiply kernel (FEAT_I8MM): SMMLA for the scores, USMMLA for
//! P x V (u8 x s8 directly, no offset trick).
//!
//! One `smmla`/`usmmla` multiplies a 2 x 8 block of A by the transpose of a 2 x 8 block of B
//! into a 2 x 2 block of i32 (`[c00, c01, c10, c11]`), exactly for every input byte. A strip
//! of 8 rows is repacked as row pairs, `[chunk of 8 depth][pair][row 2q: 8 bytes, row 2q+1: 8
//! bytes]`, so that each 16-byte load is one left operand; packed B has the same shape per
//! column pair (see the parent module). The 8 x 8 tile is 4 x 4 accumulators; the 2 x 2
//! blocks are unzipped into rows with `zip1`/`zip2` on 64-bit lanes at the end.
//!
//! `vmmlaq_s32`/`vusmmlaq_s32` are still unstable in `core::arch::aarch64` (Rust 1.96,
//! `stdarch_neon_i8mm`), so both instructions are written with `asm!` inside functions compiled
//! with `i8mm`.

use core::arch::aarch64::*;
use core::arch::asm;

use super::{drive, neon, own_layout, Layout, MR, NR};
use crate::kernels::{Kernel, PackedB};
use crate::softmax::Lut;

/// Proof that the CPU has NEON and the int8 matrix-multiply instructions.
pub struct I8mm {
    _proof: (),
}

static I8MM: I8mm = I8mm { _proof: () };

impl I8mm {
    /// The kernel, if this CPU has FEAT_I8MM.
    pub fn new() -> Option<&'static I8mm> {
        (std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("i8mm"))
        .then_some(&I8MM)
    }
}

const NAME: &str = "i8mm";
const LAYOUT: Layout = Layout { kr: 8, k_step: 8 };

impl Kernel for I8mm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn gemm_s8s8_nt(&self, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        let packed = self.pack_k(b, n, k);
        self.gemm_s8s8_packed(a, m, &packed, c)
    }

    fn gemm_u8s8(&self, a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        let packed = self.pack_v(b, k, n);
        self.gemm_u8s8_packed(a, m, &packed, c)
    }

    fn index_softmax_row(
        &self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        // SAFETY: an `I8mm` value exists only if the CPU has NEON.
        unsafe { neon::index_softmax_row(row, valid, lut, threshold, e) }
    }

    fn normalize_row(&self, p: &mut [u8], sum: u32) {
        // SAFETY: as above.
        unsafe { neon::normalize_row(p, sum) }
    }

    fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
        // SAFETY: as above.
        unsafe { neon::softmax_f32_row(row, valid) }
    }

    fn pack_k(&self, b: &[i8], n: usize, k: usize) -> PackedB {
        LAYOUT.pack(n, k, 0, NAME, |j, t| b[j * k + t])
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, NAME, LAYOUT) {
            return self.gemm_s8s8_nt(a, &b.data, m, b.n, b.k, c);
        }
        let k = b.k;
        let strip = |i0, rows, s: &mut [i8]| {
            pack_pairs(a, k, i0, rows, s);
            [0; MR]
        };
        // SAFETY: we hold an `I8mm`, so NEON and SMMLA are present; `tile_smmla` reads MR * kp
        // strip bytes and NR * kp panel bytes and writes one 8 x 8 tile, as `drive` requires.
        unsafe { drive(LAYOUT, m, b, c, strip, tile_smmla) }
    }

    fn pack_v(&self, b: &[i8], k: usize, n: usize) -> PackedB {
        LAYOUT.pack(n, k, 0, NAME, |j, t| b[t * n + j])
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, NAME, LAYOUT) {
            return self.gemm_u8s8(a, &b.data, m, b.n, b.k, c);
        }
        let k = b.k;
        let strip = |i0, rows, s: &mut [u8]| {
            pack_pairs(a, k, i0, rows, s);
            [0; MR]
        };
        // SAFETY: as in `gemm_s8s8_packed`, with USMMLA.
        unsafe { drive(LAYOUT, m, b, c, strip, tile_usmmla) }
    }
}

/// Packs rows `i0..i0 + rows` of the row-major `m x k` matrix `a` as row pairs (module docs),
/// zero past `rows` and past `k`.
fn pack_pairs<T: Copy + Default>(a: &[T], k: usize, i0: usize, rows: usize, strip: &mut [T]) {
    strip.fill(T::default());
    for r in 0..rows {
        let src = &a[(i0 + r) * k..(i0 + r + 1) * k];
        let (pair, half) = (r / 2, r % 2);
        for (chunk, part) in src.chunks(8).enumerate() {
            let at = chunk * MR * 8 + pair * 16 + half * 8;
            strip[at..at + part.len()].copy_from_slice(part);
        }
    }
}

/// `acc += a (2 x 8, signed) * b (2 x 8, signed)^T`.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; callers are compiled with `i8mm`.
    unsafe {
        asm!(
            "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc += a (2 x 8, unsigned) * b (2 x 8, signed)^T`.
#[inline(always)]
unsafe fn usmmla(mut acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: as in `smmla`.
    unsafe {
        asm!(
            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

macro_rules! mmla_tile {
    ($name:ident, $a:ty, $zero_a:expr, $load_a:ident, $mmla:ident) => {
        /// The 8 x 8 micro-kernel: per chunk of 8 depth values, 4 A pairs times 4 B pairs.
        #[target_feature(enable = "neon,i8mm")]
        unsafe fn $name(
            a: *const $a,
            b: *const i8,
            kp: usize,
            corr: &[i32; MR],
            c: *mut i32,
            ldc: usize,
        ) {
            let mut acc = [[vdupq_n_s32(0); NR / 2]; MR / 2];
            let mut off = 0;
            while off < kp * MR {
                let mut av = [$zero_a; MR / 2];
                let mut bv = [vdupq_n_s8(0); NR / 2];
                for q in 0..MR / 2 {
                    // SAFETY: the strip and the panel hold 8 * kp bytes; this chunk is 64.
                    unsafe {
                        av[q] = $load_a(a.add(off + 16 * q));
                        bv[q] = vld1q_s8(b.add(off + 16 * q));
                    }
                }
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    for (acc, &b) in acc.iter_mut().zip(&bv) {
                        // SAFETY: register-only; this function has `i8mm`.
                        *acc = unsafe { $mmla(*acc, a, b) };
                    }
                }
                off += 64;
            }
            for q in 0..MR / 2 {
                let r0 = c.wrapping_add(2 * q * ldc);
                let r1 = c.wrapping_add((2 * q + 1) * ldc);
                let (c0, c1) = (vdupq_n_s32(corr[2 * q]), vdupq_n_s32(corr[2 * q + 1]));
                for h in 0..2 {
                    let x = vreinterpretq_s64_s32(acc[q][2 * h]);
                    let y = vreinterpretq_s64_s32(acc[q][2 * h + 1]);
                    let top = vreinterpretq_s32_s64(vzip1q_s64(x, y));
                    let bottom = vreinterpretq_s32_s64(vzip2q_s64(x, y));
                    // SAFETY: the caller provides an 8 x 8 destination with row stride ldc.
                    unsafe {
                        vst1q_s32(r0.add(4 * h), vsubq_s32(top, c0));
                        vst1q_s32(r1.add(4 * h), vsubq_s32(bottom, c1));
                    }
                }
            }
        }
    };
}

mmla_tile!(tile_smmla, i8, vdupq_n_s8(0), vld1q_s8, smmla);
mmla_tile!(tile_usmmla, u8, vdupq_n_u8(0), vld1q_u8, usmmla);
