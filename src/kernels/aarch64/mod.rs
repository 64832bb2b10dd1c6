//! aarch64 kernels: [`neon::Neon`] (Armv8.0 Advanced SIMD), [`dotprod::Dotprod`] (SDOT/UDOT,
//! Armv8.2+) and [`i8mm::I8mm`] (SMMLA/USMMLA, Armv8.6+). This module owns what they share:
//! run-time detection, the packed B layout, the tiled GEMM loop that drives a kernel's 8 x 8
//! micro-kernel, and the checks that a [`PackedB`] really came from the kernel that reads it.
//!
//! Packed B, for every kernel: columns are cut into panels of [`NR`] (zero-padded past `n`);
//! depth is rounded up to the kernel's `k_step` with zeros. Inside a panel the depth is cut
//! into chunks of `kr` bytes and stored `[chunk][column][kr bytes]`, so one 16-byte load gives
//! the next chunk of 16 / kr columns:
//! - NEON (`kr = 1`): 8 columns of one depth index (widened to i16 in the micro-kernel).
//! - dotprod (`kr = 4`): 4 depth values of 4 columns, the shape of `sdot`/`udot` by element.
//! - i8mm (`kr = 8`): 8 depth values of 2 columns, the 2 x 8 right operand of `smmla`.
//!
//! Scores pack K (`n x k`, already depth-contiguous); P x V packs V (`k x n`), which is a
//! transpose. The dotprod kernel stores V as `v + 128` (u8) for `udot`, see [`dotprod`].
//! A (queries or probabilities) is repacked one 8-row strip at a time inside the GEMM call;
//! that costs `8 * k` bytes per strip against `8 * n * k` multiply-adds.

/// The `KernelImpl` methods that the three aarch64 kernels share word for word: the unpacked
/// GEMMs (pack, then the kernel's packed product), the name (the calling module's `NAME`) and
/// the row operations, which need nothing past NEON and live in [`neon`]. Used inside each
/// `impl KernelImpl` block; every kernel value exists only after its constructor detected NEON.
macro_rules! shared_kernel_methods {
    () => {
        fn name(&self) -> &'static str {
            NAME
        }

        fn layout(&self) -> $crate::kernels::LayoutId {
            LAYOUT_ID
        }

        gemms_via_packing!();

        fn index_softmax_row(
            &self,
            row: &[i32],
            valid: usize,
            lut: &$crate::lut::Lut,
            threshold: i32,
            e: &mut [u8],
        ) -> u32 {
            // SAFETY: an aarch64 kernel value exists only if the CPU has NEON.
            unsafe {
                $crate::kernels::aarch64::neon::index_softmax_row(row, valid, lut, threshold, e)
            }
        }

        fn normalize_row(&self, p: &mut [u8], sum: u32) {
            // SAFETY: as above.
            unsafe { $crate::kernels::aarch64::neon::normalize_row(p, sum) }
        }

        fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
            // SAFETY: as above.
            unsafe { $crate::kernels::aarch64::neon::softmax_f32_row(row, valid) }
        }
    };
}

pub mod dotprod;
pub mod i8mm;
pub mod neon;

use super::{KernelImpl, LayoutId, PackedB};
use std::mem::MaybeUninit;

/// Every aarch64 kernel this CPU can run, slowest first.
pub(crate) fn kernels() -> Vec<&'static dyn KernelImpl> {
    let mut v: Vec<&'static dyn KernelImpl> = Vec::new();
    if let Some(k) = neon::Neon::new() {
        v.push(k);
    }
    if let Some(k) = dotprod::Dotprod::new() {
        v.push(k);
    }
    if let Some(k) = i8mm::I8mm::new() {
        v.push(k);
    }
    v
}

/// Rows of a micro-tile.
pub(crate) const MR: usize = 8;
/// Columns of a micro-tile and of a packed B panel.
pub(crate) const NR: usize = 8;

/// How one kernel lays out its operands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Bytes of one column per depth chunk in packed B.
    pub kr: usize,
    /// Depth is padded to a multiple of this (the micro-kernel's unroll).
    pub k_step: usize,
}

impl Layout {
    pub fn padded_k(&self, k: usize) -> usize {
        k.div_ceil(self.k_step) * self.k_step
    }

    /// Length of packed B for `n` columns of depth `k`.
    pub fn packed_len(&self, n: usize, k: usize) -> usize {
        n.div_ceil(NR) * NR * self.padded_k(k)
    }

    /// Packs K (`n x k` row-major, so column `j` of B is row `j` of K) into the layout of the
    /// module docs, XOR-ing every byte with `flip` (0x80 turns s8 `v` into u8 `v + 128`).
    /// Padding stays 0 (not 0 ^ flip): the matching A entries are 0 too. `out` is zeroed and
    /// [`Layout::packed_len`] long.
    pub fn pack_k(&self, b: &[i8], n: usize, k: usize, flip: u8, out: &mut [i8]) {
        assert_eq!(b.len(), n * k, "pack_k: {} bytes for {n} x {k}", b.len());
        assert_eq!(out.len(), self.packed_len(n, k), "packed K length");
        match self.kr {
            1 => pack_k_kr::<1>(out, b, n, k, self.padded_k(k), flip),
            4 => pack_k_kr::<4>(out, b, n, k, self.padded_k(k), flip),
            8 => pack_k_kr::<8>(out, b, n, k, self.padded_k(k), flip),
            kr => unreachable!("no aarch64 layout has kr = {kr}"),
        }
    }

    /// Packs V (`k x n` row-major, so column `j` of B is column `j` of V: a transpose) into
    /// the layout of the module docs, XOR-ing every byte with `flip`; padding stays 0. `out`
    /// is zeroed and [`Layout::packed_len`] long.
    pub fn pack_v(&self, b: &[i8], k: usize, n: usize, flip: u8, out: &mut [i8]) {
        assert_eq!(b.len(), n * k, "pack_v: {} bytes for {k} x {n}", b.len());
        assert_eq!(out.len(), self.packed_len(n, k), "packed V length");
        match self.kr {
            1 => pack_v_kr::<1>(out, b, n, k, self.padded_k(k), flip),
            4 => pack_v_kr::<4>(out, b, n, k, self.padded_k(k), flip),
            8 => pack_v_kr::<8>(out, b, n, k, self.padded_k(k), flip),
            kr => unreachable!("no aarch64 layout has kr = {kr}"),
        }
    }
}

/// `x ^ flip` on every byte of a chunk.
#[inline(always)]
fn flip_bytes<const KR: usize>(x: [i8; KR], flip: u8) -> [i8; KR] {
    x.map(|v| (v as u8 ^ flip) as i8)
}

/// [`Layout::pack_k`] for chunks of `KR` depth bytes: each chunk of a K row is `KR`
/// contiguous bytes, copied whole (a 1-, 4- or 8-byte move); a partial last chunk is copied
/// byte by byte and its padding stays zero.
fn pack_k_kr<const KR: usize>(data: &mut [i8], b: &[i8], n: usize, k: usize, kp: usize, flip: u8) {
    if kp == 0 {
        return;
    }
    for (p, panel) in data.chunks_exact_mut(NR * kp).enumerate() {
        for jj in 0..NR.min(n - p * NR) {
            let j = p * NR + jj;
            let row = &b[j * k..(j + 1) * k];
            let mut src = row.chunks_exact(KR);
            let mut dst = panel.chunks_exact_mut(KR).skip(jj).step_by(NR);
            for (s, d) in (&mut src).zip(&mut dst) {
                let s: [i8; KR] = s.try_into().expect("chunk of KR bytes");
                d.copy_from_slice(&flip_bytes(s, flip));
            }
            let tail = src.remainder();
            if let Some(d) = dst.next() {
                for (d, &s) in d.iter_mut().zip(tail) {
                    *d = (s as u8 ^ flip) as i8;
                }
            }
        }
    }
}

/// [`Layout::pack_v`] for chunks of `KR` depth bytes: a full panel and chunk is a `KR x NR`
/// block of V (KR rows, NR = 8 contiguous columns) stored transposed, `NR` runs of `KR`
/// bytes; blocks on the right or bottom edge go element by element.
fn pack_v_kr<const KR: usize>(data: &mut [i8], b: &[i8], n: usize, k: usize, kp: usize, flip: u8) {
    if kp == 0 {
        return;
    }
    for (p, panel) in data.chunks_exact_mut(NR * kp).enumerate() {
        let j0 = p * NR;
        let cols = NR.min(n - j0);
        for (c, chunk) in panel.chunks_exact_mut(NR * KR).enumerate() {
            let t0 = c * KR;
            if t0 >= k {
                break;
            }
            if cols == NR && t0 + KR <= k {
                let mut rows = [[0i8; NR]; KR];
                for (r, row) in rows.iter_mut().enumerate() {
                    let at = (t0 + r) * n + j0;
                    *row = b[at..at + NR].try_into().expect("NR columns");
                }
                let mut out = [[0i8; KR]; NR];
                for (jj, o) in out.iter_mut().enumerate() {
                    for (r, v) in o.iter_mut().enumerate() {
                        *v = rows[r][jj];
                    }
                }
                for (d, o) in chunk.chunks_exact_mut(KR).zip(out) {
                    d.copy_from_slice(&flip_bytes(o, flip));
                }
            } else {
                for (jj, d) in chunk.chunks_exact_mut(KR).take(cols).enumerate() {
                    for (r, v) in d.iter_mut().enumerate().take(k - t0) {
                        *v = (b[(t0 + r) * n + j0 + jj] as u8 ^ flip) as i8;
                    }
                }
            }
        }
    }
}

/// True if `b` is in `id`'s own layout, false if it is the plain layout (the caller then runs
/// the unpacked product on `b.data()`). Panics for any other buffer: reading another kernel's
/// layout would go out of bounds in the micro-kernels; the public [`super::Kernel`] handle
/// reports a mismatch as an error before a kernel sees it.
pub(crate) fn own_layout(b: &PackedB, id: LayoutId, layout: Layout) -> bool {
    if b.layout() == LayoutId::Plain && b.data().len() == b.n() * b.k() {
        return false;
    }
    assert!(
        b.layout() == id && b.data().len() == layout.packed_len(b.n(), b.k()),
        "PackedB from '{}' ({} bytes for {} x {}) passed to kernel '{}'",
        b.packed_by(),
        b.data().len(),
        b.n(),
        b.k(),
        id.name()
    );
    true
}

/// One micro-kernel call: an 8 x 8 tile of C from a packed A strip (`a`, the kernel's own strip
/// layout), the packed B panel `b` (`kp` deep), written to `c` with row stride `ldc`, and the
/// per-row correction `corr` subtracted from every entry of its row.
pub(crate) type MicroKernel<A> =
    unsafe fn(a: *const A, b: *const i8, kp: usize, corr: &[i32; MR], c: *mut i32, ldc: usize);

/// The tiled GEMM loop shared by all three kernels: `c[m x n] = A * B` with B packed by
/// [`Layout::pack`], A given row-major (`m x k`). `pack_strip` packs rows `i0..i0 + rows` of A
/// into the strip buffer (zero past `rows` and past `k`) and returns the per-row corrections.
///
/// # Safety
/// `kernel` must be safe to call on this CPU, and must read at most `MR * kp` elements of the
/// strip and `NR * kp` bytes of the panel and write an 8 x 8 tile at `c` with stride `ldc`.
pub(crate) unsafe fn drive<A: Copy + Default>(
    layout: Layout,
    m: usize,
    b: &PackedB,
    c: &mut [i32],
    mut pack_strip: impl FnMut(usize, usize, &mut [A]) -> [i32; MR],
    kernel: MicroKernel<A>,
) {
    let (n, k) = (b.n(), b.k());
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0);
        return;
    }
    let kp = layout.padded_k(k);
    let mut strip = vec![A::default(); MR * kp];
    let mut edge = [0i32; MR * NR];
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let corr = pack_strip(i0, rows, &mut strip);
        for (p, panel) in b.data().chunks_exact(NR * kp).enumerate() {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            let panel_ptr = panel.as_ptr();
            if rows == MR && cols == NR {
                // SAFETY: the tile [i0, i0 + 8) x [j0, j0 + 8) lies inside c (m x n, row
                // stride n); the strip holds MR * kp elements and the panel NR * kp bytes.
                unsafe {
                    kernel(
                        strip.as_ptr(),
                        panel_ptr,
                        kp,
                        &corr,
                        c.as_mut_ptr().add(i0 * n + j0),
                        n,
                    )
                };
            } else {
                // SAFETY: as above, with the 8 x 8 scratch tile as destination (stride NR).
                unsafe { kernel(strip.as_ptr(), panel_ptr, kp, &corr, edge.as_mut_ptr(), NR) };
                for r in 0..rows {
                    c[(i0 + r) * n + j0..][..cols].copy_from_slice(&edge[r * NR..][..cols]);
                }
            }
        }
    }
}

/// Rows of the small tile. A decoding step multiplies 1-4 query rows per key/value head (the
/// query heads of one group): the 8-row tile would spend half or more of its work on zero rows,
/// and its partial tiles go through a scratch tile and a copy.
pub(crate) const MR4: usize = 4;

/// Strip buffers of at most this many bytes live on the stack (depth up to 512 for 8 rows): a
/// decoding step makes one call per cache page, and a heap strip per call cost more than the
/// strip's packing.
const STACK_STRIP: usize = 4096;

/// `c = A * B` for `A` of `m` rows `lda >= k` apart (`k = b.k()`, one-byte elements) and packed
/// B in `layout`, `c` of `m` rows `ldc >= n` apart (entries between rows untouched). Strips of
/// 8 rows go to `tiles[0]`, a last strip of at most [`MR4`] rows to `tiles[1]` (which writes 4
/// rows). `pack(a, i0, rows, tile_rows, strip)` packs rows `i0..i0 + rows` of `a` (as bytes)
/// into the kernel's strip layout for a `tile_rows`-row tile, writing every one of the strip's
/// first `tile_rows * kp` bytes, and returns the per-row corrections.
///
/// # Safety
/// The CPU must run `tiles`; `b` must be in the kernel's own layout (`layout`), and `tiles[i]`
/// must read at most `tile_rows * kp` strip bytes and `NR * kp` panel bytes and write one tile
/// of 8 (or 4) rows x 8 columns at the given row stride.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_strips<A: bytemuck::Pod>(
    layout: Layout,
    a: &[A],
    lda: usize,
    m: usize,
    b: &PackedB,
    c: &mut [i32],
    ldc: usize,
    tiles: [MicroKernel<A>; 2],
    mut pack: impl FnMut(&[u8], usize, usize, usize, &mut [MaybeUninit<u8>]) -> [i32; MR],
) {
    let (n, k) = (b.n(), b.k());
    assert!(
        lda >= k
            && ldc >= n
            && (m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n)),
        "A must be m rows lda >= k apart and C m rows ldc >= n apart"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0);
        }
        return;
    }
    // A is i8 or u8: the strip is packed as bytes.
    let a: &[u8] = bytemuck::cast_slice(a);
    let kp = layout.padded_k(k);
    // Left uninitialised: every strip is written whole before a tile reads it, and zeroing
    // 4 KiB per call cost a decoding step (one call per cache page) more than its packing.
    let mut on_stack = [MaybeUninit::<u8>::uninit(); STACK_STRIP];
    let mut on_heap;
    let strip: &mut [MaybeUninit<u8>] = if MR * kp <= STACK_STRIP {
        &mut on_stack[..MR * kp]
    } else {
        on_heap = Box::<[u8]>::new_uninit_slice(MR * kp);
        &mut on_heap
    };
    let mut edge = [0i32; MR * NR];
    let mut i0 = 0;
    while i0 < m {
        let left = m - i0;
        let (tile_rows, tile) = if left <= MR4 {
            (MR4, tiles[1])
        } else {
            (MR, tiles[0])
        };
        let rows = left.min(tile_rows);
        let corr = pack(a, i0, rows, tile_rows, strip);
        // The tile reads the strip's first tile_rows * kp bytes, all written by `pack`.
        let strip_ptr = strip.as_ptr().cast::<A>();
        // Whole tiles straight into C with plain pointer steps (an iterator over the panels
        // cost about 9 instructions per tile more), then the tiles that need the scratch tile.
        let panels = b.data().chunks_exact(NR * kp);
        let direct = if rows == tile_rows { n / NR } else { 0 };
        let (bp, cp) = (b.data().as_ptr(), c.as_mut_ptr());
        for p in 0..direct {
            // SAFETY: the tile's rows i0..i0 + rows, columns 8p..8p + 8 lie inside `c`
            // (asserted above: row stride ldc >= n, 8p + 8 <= n); the strip's first
            // tile_rows * kp bytes were all written by `pack`; panel p's NR * kp bytes lie
            // inside `b` (own layout: n.div_ceil(NR) panels); the CPU runs `tile` (the
            // caller's contract).
            unsafe {
                tile(
                    strip_ptr,
                    bp.add(p * NR * kp),
                    kp,
                    &corr,
                    cp.add(i0 * ldc + p * NR),
                    ldc,
                )
            };
        }
        for (p, panel) in panels.enumerate().skip(direct) {
            let j0 = p * NR;
            let cols = NR.min(n - j0);
            // SAFETY: as above, into the 8 x 8 scratch tile (row stride NR).
            unsafe { tile(strip_ptr, panel.as_ptr(), kp, &corr, edge.as_mut_ptr(), NR) };
            for r in 0..rows {
                c[(i0 + r) * ldc + j0..][..cols].copy_from_slice(&edge[r * NR..][..cols]);
            }
        }
        i0 += rows;
    }
}

/// Copies rows `i0..i0 + rows` of `a` (bytes, rows `lda` apart, `k` each) into the first
/// `tile_rows` rows of a strip with row stride `kp`, zero past `rows` and past `k`, writing
/// every one of the strip's first `tile_rows * kp` bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_rows_strided(
    a: &[u8],
    lda: usize,
    k: usize,
    kp: usize,
    i0: usize,
    rows: usize,
    tile_rows: usize,
    strip: &mut [MaybeUninit<u8>],
) {
    assert!(rows <= tile_rows && kp >= k && strip.len() >= tile_rows * kp);
    assert!(rows == 0 || a.len() >= (i0 + rows - 1) * lda + k);
    for (r, dst) in strip.chunks_exact_mut(kp).take(tile_rows).enumerate() {
        let (head, tail) = dst.split_at_mut(if r < rows { k } else { 0 });
        if r < rows {
            let src = &a[(i0 + r) * lda..(i0 + r) * lda + k];
            // SAFETY: `head` and `src` are k bytes each, distinct (one borrows `a`, the other
            // the strip); u8 and MaybeUninit<u8> have the same layout.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), head.as_mut_ptr().cast(), k) };
        }
        // SAFETY: `tail` is a slice of MaybeUninit<u8>; writing zero bytes initialises it.
        unsafe { std::ptr::write_bytes(tail.as_mut_ptr(), 0, tail.len()) };
    }
}

/// Copies rows `i0..i0 + rows` of the row-major `m x k` matrix `a` into a strip of `MR` rows
/// with row stride `kp`, zero-padded.
pub(crate) fn pack_rows<T: Copy + Default>(
    a: &[T],
    k: usize,
    kp: usize,
    i0: usize,
    rows: usize,
    strip: &mut [T],
) {
    for r in 0..MR {
        let dst = &mut strip[r * kp..(r + 1) * kp];
        if r < rows {
            dst[..k].copy_from_slice(&a[(i0 + r) * k..(i0 + r + 1) * k]);
            dst[k..].fill(T::default());
        } else {
            dst.fill(T::default());
        }
    }
}
