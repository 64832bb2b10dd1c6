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
use std::mem::MaybeUninit;

use super::{own_layout, run_strips, Layout, MicroKernel, MR, NR};
use crate::kernels::{strided_s8s8_fallback, strided_u8s8_fallback, KernelImpl, LayoutId, PackedB};

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
const LAYOUT_ID: LayoutId = LayoutId::I8mm;

impl KernelImpl for I8mm {
    shared_kernel_methods!();

    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        if k == 0 || !k.is_multiple_of(16) {
            return LAYOUT.pack_k(b, n, k, 0, out);
        }
        assert_eq!(b.len(), n * k);
        assert_eq!(out.len(), LAYOUT.packed_len(n, k), "packed K length");
        // A panel of 8 keys is a strip of 8 rows: the same row pairs as the A strips.
        let b: &[u8] = bytemuck::cast_slice(b);
        for (p, panel) in out.chunks_exact_mut(NR * k).enumerate() {
            // SAFETY: i8 and MaybeUninit<u8> have one layout; the packer only writes
            // initialised bytes, so `panel` stays initialised.
            let panel = unsafe { &mut *(panel as *mut [i8] as *mut [MaybeUninit<u8>]) };
            pack_pairs_strided(b, k, k, p * NR, NR.min(n - p * NR), MR / 2, panel);
        }
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
        }
        let n = b.n();
        // SAFETY: we hold an `I8mm`, so NEON and SMMLA are present.
        unsafe { run(a, b.k(), m, b, c, n, [tile_smmla, tile4_smmla]) }
    }

    fn gemm_s8s8_packed_strided(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return strided_s8s8_fallback(self, a, m, b, c, ldc);
        }
        // SAFETY: as in `gemm_s8s8_packed`.
        unsafe { run(a, b.k(), m, b, c, ldc, [tile_smmla, tile4_smmla]) }
    }

    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        pack_v_i8mm(b, k, n, out)
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
        }
        let n = b.n();
        // SAFETY: as in `gemm_s8s8_packed`, with USMMLA.
        unsafe { run(a, b.k(), m, b, c, n, [tile_usmmla, tile4_usmmla]) }
    }

    fn gemm_u8s8_packed_strided(&self, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return strided_u8s8_fallback(self, a, lda, m, b, c);
        }
        let n = b.n();
        // SAFETY: as in `gemm_s8s8_packed`, with USMMLA.
        unsafe { run(a, lda, m, b, c, n, [tile_usmmla, tile4_usmmla]) }
    }
}

/// [`run_strips`] with this kernel's strips: row pairs, no corrections.
///
/// # Safety
/// The CPU must have NEON and I8MM; `b` must be in this kernel's own layout.
unsafe fn run<A: bytemuck::Pod>(
    a: &[A],
    lda: usize,
    m: usize,
    b: &PackedB,
    c: &mut [i32],
    ldc: usize,
    tiles: [MicroKernel<A>; 2],
) {
    let k = b.k();
    let pack = |a: &[u8], i0: usize, rows: usize, tile_rows: usize, s: &mut [MaybeUninit<u8>]| {
        pack_pairs_strided(a, lda, k, i0, rows, tile_rows / 2, s);
        [0; MR]
    };
    // SAFETY: the caller's contract; the tiles read the row-pair strips `pack` writes whole.
    unsafe { run_strips(LAYOUT, a, lda, m, b, c, ldc, tiles, pack) }
}

/// Packs rows `i0..i0 + rows` (`rows <= 2 * pairs`) of `a`, whose rows are `lda` apart, as
/// `pairs` row pairs (module docs: `[chunk of 8 depth][pair][16 bytes]`), zero past `rows` and
/// past `k`, writing every one of the first `2 * pairs * kp` bytes of `strip`.
fn pack_pairs_strided(
    a: &[u8],
    lda: usize,
    k: usize,
    i0: usize,
    rows: usize,
    pairs: usize,
    strip: &mut [MaybeUninit<u8>],
) {
    let kp = LAYOUT.padded_k(k);
    assert!(rows <= 2 * pairs && strip.len() >= 2 * pairs * kp);
    assert!(rows == 0 || a.len() >= (i0 + rows - 1) * lda + k);
    if k.is_multiple_of(16) {
        // SAFETY: NEON is part of the aarch64 target; the rows read lie inside `a` and the
        // 2 * pairs * k bytes written inside `strip` (asserted above; kp = k here).
        unsafe {
            pack_pairs_rows_neon(
                a.as_ptr().add(i0 * lda),
                lda,
                k,
                rows,
                pairs,
                strip.as_mut_ptr().cast(),
            )
        };
        return;
    }
    let strip = &mut strip[..2 * pairs * kp];
    for x in strip.iter_mut() {
        x.write(0);
    }
    for r in 0..rows {
        let src = &a[(i0 + r) * lda..(i0 + r) * lda + k];
        let (pair, half) = (r / 2, r % 2);
        for (chunk, part) in src.chunks(8).enumerate() {
            let at = chunk * 2 * pairs * 8 + pair * 16 + half * 8;
            for (dst, &v) in strip[at..at + part.len()].iter_mut().zip(part) {
                dst.write(v);
            }
        }
    }
}

/// [`pack_pairs_strided`] with `k` a multiple of 16: per row pair and 16 depth values, two
/// loads (zeros for a row past `rows`), `zip1`/`zip2` on 64-bit lanes, two stores.
///
/// # Safety
/// Rows `0..rows` of `a` (stride `lda`) must be readable for `k` bytes, `strip` writable for
/// `2 * pairs * k` bytes, `rows <= 2 * pairs`, and `k` a multiple of 16.
#[target_feature(enable = "neon")]
unsafe fn pack_pairs_rows_neon(
    a: *const u8,
    lda: usize,
    k: usize,
    rows: usize,
    pairs: usize,
    strip: *mut u8,
) {
    if rows == 2 * pairs {
        // Every row present (the common case): no per-row test in the loop.
        for c2 in 0..k / 16 {
            for q in 0..pairs {
                // SAFETY: as below, with both rows of every pair inside `a`.
                unsafe {
                    let x = vreinterpretq_u64_u8(vld1q_u8(a.add(2 * q * lda + 16 * c2)));
                    let y = vreinterpretq_u64_u8(vld1q_u8(a.add((2 * q + 1) * lda + 16 * c2)));
                    let d = strip.add(2 * c2 * pairs * 16 + 16 * q);
                    vst1q_u8(d, vreinterpretq_u8_u64(vzip1q_u64(x, y)));
                    vst1q_u8(d.add(pairs * 16), vreinterpretq_u8_u64(vzip2q_u64(x, y)));
                }
            }
        }
        return;
    }
    let zero = vdupq_n_u8(0);
    for c2 in 0..k / 16 {
        for q in 0..pairs {
            // SAFETY: rows below `rows` hold k >= 16 c2 + 16 bytes; the destination chunks
            // 2 c2 and 2 c2 + 1 of pair q lie inside the 2 * pairs * k bytes of the strip.
            unsafe {
                let row = |r: usize| {
                    if r < rows {
                        vld1q_u8(a.add(r * lda + 16 * c2))
                    } else {
                        zero
                    }
                };
                let x = vreinterpretq_u64_u8(row(2 * q));
                let y = vreinterpretq_u64_u8(row(2 * q + 1));
                let d = strip.add(2 * c2 * pairs * 16 + 16 * q);
                vst1q_u8(d, vreinterpretq_u8_u64(vzip1q_u64(x, y)));
                vst1q_u8(d.add(pairs * 16), vreinterpretq_u8_u64(vzip2q_u64(x, y)));
            }
        }
    }
}

/// Packs V (`k x n` row-major) for this kernel: column `j`'s depth chunk `c` is bytes `8 c ..
/// 8 c + 8` of column `j`, so every 8 x 8 block of V is stored transposed.
fn pack_v_i8mm(b: &[i8], k: usize, n: usize, out: &mut [i8]) {
    if k == 0 || !k.is_multiple_of(8) || !n.is_multiple_of(NR) {
        return LAYOUT.pack_v(b, k, n, 0, out);
    }
    assert_eq!(b.len(), k * n);
    assert_eq!(out.len(), LAYOUT.packed_len(n, k), "packed V length");
    for (p, panel) in out.chunks_exact_mut(NR * k).enumerate() {
        for (c, chunk) in panel.chunks_exact_mut(64).enumerate() {
            // SAFETY: NEON is part of the aarch64 target; the block's rows 8c..8c + 8 and
            // columns 8p..8p + 8 lie inside the k x n matrix (k and n multiples of 8), and the
            // chunk has 64 bytes.
            unsafe {
                transpose_8x8(
                    b.as_ptr().add(8 * c * n + NR * p).cast(),
                    n,
                    chunk.as_mut_ptr().cast(),
                )
            };
        }
    }
}

/// Writes the transpose of the 8 x 8 byte block at `src` (row stride `stride`) to the 64
/// contiguous bytes at `dst`: three rounds of `trn1`/`trn2` on 8-, 16- and 32-bit elements.
///
/// # Safety
/// `src + r * stride .. + 8` must be readable for r < 8 and `dst .. dst + 64` writable.
#[target_feature(enable = "neon")]
unsafe fn transpose_8x8(src: *const u8, stride: usize, dst: *mut u8) {
    // SAFETY: the caller guarantees the 8 rows of 8 bytes.
    let r: [uint8x8_t; 8] = std::array::from_fn(|i| unsafe { vld1_u8(src.add(i * stride)) });
    // Bytes: t[2i] holds columns 0, 2, 4, 6 of rows 2i and 2i + 1 interleaved; t[2i + 1] the
    // odd columns.
    let mut t = [vdup_n_u16(0); 8];
    for i in 0..4 {
        t[2 * i] = vreinterpret_u16_u8(vtrn1_u8(r[2 * i], r[2 * i + 1]));
        t[2 * i + 1] = vreinterpret_u16_u8(vtrn2_u8(r[2 * i], r[2 * i + 1]));
    }
    // Halfwords: u[h][x] holds columns x and x + 4 of rows 4h..4h + 4.
    let mut u = [[vdup_n_u32(0); 4]; 2];
    for h in 0..2 {
        let (a0, a1, b0, b1) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
        u[h][0] = vreinterpret_u32_u16(vtrn1_u16(a0, b0));
        u[h][2] = vreinterpret_u32_u16(vtrn2_u16(a0, b0));
        u[h][1] = vreinterpret_u32_u16(vtrn1_u16(a1, b1));
        u[h][3] = vreinterpret_u32_u16(vtrn2_u16(a1, b1));
    }
    for x in 0..4 {
        let lo = vreinterpret_u8_u32(vtrn1_u32(u[0][x], u[1][x]));
        let hi = vreinterpret_u8_u32(vtrn2_u32(u[0][x], u[1][x]));
        // SAFETY: columns x and x + 4 go to bytes 8x and 8 (x + 4) of the 64-byte destination.
        unsafe {
            vst1_u8(dst.add(8 * x), lo);
            vst1_u8(dst.add(8 * (x + 4)), hi);
        }
    }
}

/// One depth chunk of the 8 x 8 tile: `ld1` four A pairs (v0-v3) and four B pairs (v4-v7),
/// 64 bytes each with post-increment, then 16 matrix multiply-accumulates into v16-v31
/// (accumulator `4 q + h` = A pair `q` times B pair `h`).
macro_rules! mmla_chunk {
    ($op:literal) => {
        concat!(
            "ld1 {{v0.16b, v1.16b, v2.16b, v3.16b}}, [{a}], #64\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{b}], #64\n",
            $op,
            " v16.4s, v0.16b, v4.16b\n",
            $op,
            " v17.4s, v0.16b, v5.16b\n",
            $op,
            " v18.4s, v0.16b, v6.16b\n",
            $op,
            " v19.4s, v0.16b, v7.16b\n",
            $op,
            " v20.4s, v1.16b, v4.16b\n",
            $op,
            " v21.4s, v1.16b, v5.16b\n",
            $op,
            " v22.4s, v1.16b, v6.16b\n",
            $op,
            " v23.4s, v1.16b, v7.16b\n",
            $op,
            " v24.4s, v2.16b, v4.16b\n",
            $op,
            " v25.4s, v2.16b, v5.16b\n",
            $op,
            " v26.4s, v2.16b, v6.16b\n",
            $op,
            " v27.4s, v2.16b, v7.16b\n",
            $op,
            " v28.4s, v3.16b, v4.16b\n",
            $op,
            " v29.4s, v3.16b, v5.16b\n",
            $op,
            " v30.4s, v3.16b, v6.16b\n",
            $op,
            " v31.4s, v3.16b, v7.16b\n",
        )
    };
}

macro_rules! mmla_tile {
    ($name:ident, $a:ty, $op:literal) => {
        /// The 8 x 8 micro-kernel: per chunk of 8 depth values, 4 A pairs times 4 B pairs,
        /// the whole depth loop in one `asm!` block (two chunks per iteration, then the odd
        /// one): the accumulators stay in v16-v31 and each operand set is one `ld1` of four
        /// registers, about 1.2 instructions per multiply-accumulate instruction. The strip
        /// closures of this kernel never produce row corrections (no offset trick), so `corr`
        /// is all zeros and not read.
        #[target_feature(enable = "neon,i8mm")]
        unsafe fn $name(
            a: *const $a,
            b: *const i8,
            kp: usize,
            corr: &[i32; MR],
            c: *mut i32,
            ldc: usize,
        ) {
            debug_assert!(corr.iter().all(|&x| x == 0));
            debug_assert!(kp > 0 && kp % 8 == 0);
            let z = vdupq_n_s32(0);
            let mut acc = [z; 16];
            let chunks = kp / 8;
            // SAFETY: the strip holds MR * kp = 64 * chunks bytes and the panel NR * kp bytes
            // (the caller's contract); the block reads exactly `chunks` chunks of 64 bytes from
            // each, advancing copies of the pointers. It writes only the named registers; the
            // callee-saved v8-v15 are not touched. `i8mm` is enabled for this function.
            unsafe {
                asm!(
                    "lsr {p}, {n}, #1",
                    "cbz {p}, 2f",
                    "1:",
                    mmla_chunk!($op),
                    mmla_chunk!($op),
                    "subs {p}, {p}, #1",
                    "b.ne 1b",
                    "2:",
                    "tbz {n}, #0, 3f",
                    mmla_chunk!($op),
                    "3:",
                    n = in(reg) chunks,
                    p = out(reg) _,
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    inout("v16") acc[0], inout("v17") acc[1], inout("v18") acc[2],
                    inout("v19") acc[3], inout("v20") acc[4], inout("v21") acc[5],
                    inout("v22") acc[6], inout("v23") acc[7], inout("v24") acc[8],
                    inout("v25") acc[9], inout("v26") acc[10], inout("v27") acc[11],
                    inout("v28") acc[12], inout("v29") acc[13], inout("v30") acc[14],
                    inout("v31") acc[15],
                    options(nostack, readonly)
                );
            }
            // SAFETY: the caller provides an 8 x 8 destination with row stride ldc.
            unsafe { store_pairs(&acc, c, ldc) };
        }
    };
}

/// Writes a tile's accumulators to `c` (row stride `ldc`): accumulator `4 q + h` holds the
/// 2 x 2 block of row pair `q` and column pair `h`, unzipped into rows with `zip1`/`zip2` on
/// 64-bit lanes; `acc.len() / 2` rows of 8 columns.
///
/// # Safety
/// `c` must be writable for those rows, 8 entries each, `ldc` apart.
#[inline(always)]
unsafe fn store_pairs(acc: &[int32x4_t], c: *mut i32, ldc: usize) {
    for q in 0..acc.len() / 4 {
        let r0 = c.wrapping_add(2 * q * ldc);
        let r1 = c.wrapping_add((2 * q + 1) * ldc);
        for h in 0..2 {
            // SAFETY: register operations, then stores to rows 2q and 2q + 1, columns 4h..4h + 4,
            // inside the destination (this function's contract).
            unsafe {
                let x = vreinterpretq_s64_s32(acc[4 * q + 2 * h]);
                let y = vreinterpretq_s64_s32(acc[4 * q + 2 * h + 1]);
                vst1q_s32(r0.add(4 * h), vreinterpretq_s32_s64(vzip1q_s64(x, y)));
                vst1q_s32(r1.add(4 * h), vreinterpretq_s32_s64(vzip2q_s64(x, y)));
            }
        }
    }
}

mmla_tile!(tile_smmla, i8, "smmla");
mmla_tile!(tile_usmmla, u8, "usmmla");

/// One depth chunk of the 4 x 8 tile: `ld1` two A pairs (v0-v1, 32 bytes) and four B pairs
/// (v4-v7, 64 bytes), then 8 matrix multiply-accumulates into v16-v23 (accumulator `4 q + h`
/// = A pair `q` times B pair `h`).
macro_rules! mmla_chunk4 {
    ($op:literal) => {
        concat!(
            "ld1 {{v0.16b, v1.16b}}, [{a}], #32\n",
            "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{b}], #64\n",
            $op,
            " v16.4s, v0.16b, v4.16b\n",
            $op,
            " v17.4s, v0.16b, v5.16b\n",
            $op,
            " v18.4s, v0.16b, v6.16b\n",
            $op,
            " v19.4s, v0.16b, v7.16b\n",
            $op,
            " v20.4s, v1.16b, v4.16b\n",
            $op,
            " v21.4s, v1.16b, v5.16b\n",
            $op,
            " v22.4s, v1.16b, v6.16b\n",
            $op,
            " v23.4s, v1.16b, v7.16b\n",
        )
    };
}

macro_rules! mmla_tile4 {
    ($name:ident, $a:ty, $op:literal) => {
        /// The 4 x 8 micro-kernel: as the 8 x 8 one with two A pairs per depth chunk (a strip
        /// of [`super::MR4`] rows, `[chunk][pair][16 bytes]`), 8 accumulators in v16-v23; it writes
        /// rows 0..4 of the tile. `corr` is all zeros and not read.
        #[target_feature(enable = "neon,i8mm")]
        unsafe fn $name(
            a: *const $a,
            b: *const i8,
            kp: usize,
            corr: &[i32; MR],
            c: *mut i32,
            ldc: usize,
        ) {
            debug_assert!(corr.iter().all(|&x| x == 0));
            debug_assert!(kp > 0 && kp % 8 == 0);
            let z = vdupq_n_s32(0);
            let mut acc = [z; 8];
            let chunks = kp / 8;
            // SAFETY: the strip holds MR4 * kp = 32 * chunks bytes and the panel NR * kp bytes
            // (the caller's contract); the block reads exactly `chunks` chunks of 32 and 64
            // bytes, advancing copies of the pointers. It writes only the named registers; the
            // callee-saved v8-v15 are not touched. `i8mm` is enabled for this function.
            unsafe {
                asm!(
                    "lsr {p}, {n}, #1",
                    "cbz {p}, 2f",
                    "1:",
                    mmla_chunk4!($op),
                    mmla_chunk4!($op),
                    "subs {p}, {p}, #1",
                    "b.ne 1b",
                    "2:",
                    "tbz {n}, #0, 3f",
                    mmla_chunk4!($op),
                    "3:",
                    n = in(reg) chunks,
                    p = out(reg) _,
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    out("v0") _, out("v1") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    inout("v16") acc[0], inout("v17") acc[1], inout("v18") acc[2],
                    inout("v19") acc[3], inout("v20") acc[4], inout("v21") acc[5],
                    inout("v22") acc[6], inout("v23") acc[7],
                    options(nostack, readonly)
                );
            }
            // SAFETY: the caller provides a 4 x 8 destination with row stride ldc.
            unsafe { store_pairs(&acc, c, ldc) };
        }
    };
}

mmla_tile4!(tile4_smmla, i8, "smmla");
mmla_tile4!(tile4_usmmla, u8, "usmmla");
