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

pub mod dotprod;
pub mod i8mm;
pub mod neon;

use super::{Kernel, PackedB};

/// Every aarch64 kernel this CPU can run, slowest first.
pub fn kernels() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = Vec::new();
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

    /// Packs B given as `get(column, depth)` into the layout of the module docs, XOR-ing every
    /// byte with `flip` (0x80 turns s8 `v` into u8 `v + 128`).
    pub fn pack(
        &self,
        n: usize,
        k: usize,
        flip: u8,
        name: &'static str,
        get: impl Fn(usize, usize) -> i8,
    ) -> PackedB {
        let kp = self.padded_k(k);
        let kr = self.kr;
        let mut data = vec![0i8; self.packed_len(n, k)];
        // With k == 0 there is nothing to store (and chunks of 0 bytes do not exist).
        if kp == 0 {
            return PackedB {
                data,
                sums: Vec::new(),
                n,
                k,
                packed_by: name,
            };
        }
        for (p, panel) in data.chunks_exact_mut(NR * kp).enumerate() {
            for (c, chunk) in panel.chunks_exact_mut(NR * kr).enumerate() {
                for (jj, col) in chunk.chunks_exact_mut(kr).enumerate() {
                    let j = p * NR + jj;
                    for (r, dst) in col.iter_mut().enumerate() {
                        let t = c * kr + r;
                        // Padding stays 0 (not 0 ^ flip): the matching A entries are 0 too.
                        if j < n && t < k {
                            *dst = (get(j, t) as u8 ^ flip) as i8;
                        }
                    }
                }
            }
        }
        PackedB {
            data,
            sums: Vec::new(),
            n,
            k,
            packed_by: name,
        }
    }
}

/// True if `b` is in `name`'s own layout, false if it is [`PackedB::plain`] (the caller then
/// runs the unpacked product on `b.data`). Panics for any other buffer: reading another
/// kernel's layout would go out of bounds in the micro-kernels, and passing one is a bug in the
/// caller (the trait requires the same kernel), never a consequence of user input.
pub(crate) fn own_layout(b: &PackedB, name: &'static str, layout: Layout) -> bool {
    if b.packed_by == "plain" && b.data.len() == b.n * b.k {
        return false;
    }
    assert!(
        b.packed_by == name && b.data.len() == layout.packed_len(b.n, b.k),
        "PackedB from '{}' ({} bytes for {} x {}) passed to kernel '{name}'",
        b.packed_by,
        b.data.len(),
        b.n,
        b.k
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
    let (n, k) = (b.n, b.k);
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
        for (p, panel) in b.data.chunks_exact(NR * kp).enumerate() {
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
