//! x86-64 SIMD kernels: [`avx2::Avx2`] (AVX2 + FMA), [`avxvnni::AvxVnni`] (AVX2 with the
//! VEX-encoded VNNI dot products for the GEMMs), [`avx512::Avx512`] (AVX-512 F/BW/VL +
//! VNNI, in two flavours: `avx512vnni`, and `avx512vbmi` which also uses VBMI byte permutes for
//! the table lookups) and [`amx::Amx`] (AMX-INT8 tiles for the GEMMs, AVX-512 for the rest).
//! This module owns what they share: run-time detection, the packed operand layouts and the
//! blocked GEMM loop, and the exact arithmetic behind the vectorized IndexSoftmax index and the
//! Normalized finish.
//!
//! Both GEMM families use the same operand shapes. Depth is cut into groups of 4 bytes per
//! row or column (AVX2: 2 values widened to i16, for `vpmaddwd`; AVX-512: 4 bytes, for
//! `vpdpbusd`). B is packed once into panels of `nr` columns, each panel as `[group][column]
//! [4 bytes]`, so one vector load gives the next group of every column of the panel. A stays
//! row-major (widened to i16 for AVX2, zero-padded to whole groups where needed): the
//! micro-kernels broadcast one row's next 4 bytes at a time. Padding is zero.

/// The row operations (IndexSoftmax, Normalized finish, float softmax) of a kernel that
/// borrows them from the kernel in its `rows` field.
macro_rules! rows_from_field {
    () => {
        fn index_softmax_row(
            &self,
            row: &[i32],
            valid: usize,
            lut: &$crate::lut::Lut,
            threshold: i32,
            e: &mut [u8],
        ) -> u32 {
            self.rows.index_softmax_row(row, valid, lut, threshold, e)
        }

        fn normalize_row(&self, p: &mut [u8], sum: u32) {
            self.rows.normalize_row(p, sum)
        }

        fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
            self.rows.softmax_f32_row(row, valid)
        }
    };
}

/// Packing and packed GEMMs of the VNNI kernels (`vpdpbusd` takes one unsigned operand): K
/// packed as `k + 128` (its sign bit flipped) with [`plus128_row_init`] corrections, V as it
/// is, both in 4-byte groups of the blocking `$bl`, in the layout `$layout`. The kernel provides
/// `run::<A_U8>(a, b, row_init, m, c)`, with A the unsigned operand when `A_U8` (P x V), else B
/// (Q K^T).
macro_rules! vnni_packed_gemms {
    ($bl:expr, $layout:expr) => {
        fn layout(&self) -> $crate::kernels::LayoutId {
            $layout
        }

        fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
            let flip = $crate::kernels::x86_64::ColGroups::Bytes { flip: true };
            $bl.pack_b_cols(b, n, k, flip, out);
        }

        fn gemm_s8s8_packed(
            &self,
            a: &[i8],
            m: usize,
            b: &$crate::kernels::PackedB,
            c: &mut [i32],
        ) {
            if b.layout() == $crate::kernels::LayoutId::Plain {
                return self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
            }
            $crate::kernels::x86_64::check_packed(b, $layout, &$bl);
            assert_eq!(a.len(), m * b.k(), "gemm_s8s8_packed: A must be m x k");
            let row_init = $crate::kernels::x86_64::plus128_row_init(a, m, b.k());
            let a = bytemuck::cast_slice(a);
            self.run::<false>(a, b, Some(&row_init), m, c);
        }

        fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
            $bl.pack_b_rows(b, k, n, out, |rows, j0, dst| {
                $crate::kernels::x86_64::interleave4(rows, j0, dst, false)
            });
        }

        fn gemm_u8s8_packed(
            &self,
            a: &[u8],
            m: usize,
            b: &$crate::kernels::PackedB,
            c: &mut [i32],
        ) {
            if b.layout() == $crate::kernels::LayoutId::Plain {
                return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
            }
            $crate::kernels::x86_64::check_packed(b, $layout, &$bl);
            self.run::<true>(a, b, None, m, c);
        }
    };
}

/// `micro::<R, ..>(t)` for the tile's row count `R = t.rows` (1 to 6, the `mr` of every
/// register-tiled kernel here), extra const arguments passed through.
macro_rules! micro_by_rows {
    ($micro:ident, $t:expr $(, $extra:ident)*) => {
        match $t.rows {
            6 => $micro::<6 $(, $extra)*>($t),
            5 => $micro::<5 $(, $extra)*>($t),
            4 => $micro::<4 $(, $extra)*>($t),
            3 => $micro::<3 $(, $extra)*>($t),
            2 => $micro::<2 $(, $extra)*>($t),
            _ => $micro::<1 $(, $extra)*>($t),
        }
    };
}

pub mod amx;
pub mod avx2;
pub mod avx512;
pub mod avxvnni;

use super::{KernelImpl, LayoutId};

use crate::lut::Lut;
use crate::reference;

/// Every x86-64 kernel this CPU can run, slowest first.
pub(crate) fn kernels() -> Vec<&'static dyn KernelImpl> {
    let mut v: Vec<&'static dyn KernelImpl> = Vec::new();
    if let Some(k) = avx2::Avx2::detect() {
        v.push(k);
    }
    if let Some(k) = avxvnni::AvxVnni::detect() {
        v.push(k);
    }
    if let Some(k) = avx512::Avx512::detect_vnni() {
        v.push(k);
    }
    if let Some(k) = avx512::Avx512::detect_vbmi() {
        v.push(k);
    }
    if let Some(k) = amx::Amx::detect() {
        v.push(k);
    }
    v
}

/// Bytes per (group, row) of packed A and per (group, column) of packed B, in both layouts.
pub(crate) const GROUP_BYTES: usize = 4;

/// Tile and blocking sizes of one GEMM family.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    /// Rows of a micro-tile (register rows of accumulators).
    pub mr: usize,
    /// Columns of a micro-tile, and the width of one packed B panel.
    pub nr: usize,
    /// Depth values per group (2 for i16 pairs, 4 for VNNI bytes).
    pub kg: usize,
    /// Groups per depth block, so that one panel block stays in L1.
    pub kc: usize,
    /// Strips of `mr` rows per row block, so that one A block stays in L2.
    pub mc: usize,
}

impl Blocking {
    pub fn groups(&self, k: usize) -> usize {
        k.div_ceil(self.kg)
    }
    pub fn panels(&self, n: usize) -> usize {
        n.div_ceil(self.nr)
    }
    pub fn strips(&self, m: usize) -> usize {
        m.div_ceil(self.mr)
    }
    /// Length in bytes of packed B with `n` columns and depth `k`.
    pub fn packed_b_len(&self, n: usize, k: usize) -> usize {
        self.panels(n) * self.nr * self.groups(k) * GROUP_BYTES
    }

    /// Packs a B whose columns are stored as rows (`n` rows of `k` values, as K in Q K^T)
    /// into `out` (zeroed, [`Blocking::packed_b_len`] bytes), each group made as `mode` says.
    pub fn pack_b_cols(&self, b: &[i8], n: usize, k: usize, mode: ColGroups, out: &mut [i8]) {
        assert_eq!(b.len(), n * k, "B must be {n} x {k}");
        assert_eq!(self.kg, mode.kg(), "group size of the layout");
        assert_eq!(out.len(), self.packed_b_len(n, k), "packed B length");
        if k == 0 || n == 0 {
            return;
        }
        let out: &mut [u8] = bytemuck::cast_slice_mut(out);
        let (kg, full) = (self.kg, k / self.kg);
        let stride = self.nr * GROUP_BYTES;
        let panel_bytes = self.groups(k) * stride;
        let col = |j: usize| &b[j * k..(j + 1) * k];
        // The groups `from..` of column `j` (at `jj` in its panel), one at a time.
        let scalar = |panel: &mut [u8], j: usize, jj: usize, from: usize| {
            for (g, src) in col(j).chunks(kg).enumerate().skip(from) {
                let at = g * stride + jj * GROUP_BYTES;
                panel[at..at + GROUP_BYTES].copy_from_slice(&mode.group(src));
            }
        };
        for (p, panel) in out.chunks_exact_mut(panel_bytes).enumerate() {
            let cols = (n - p * self.nr).min(self.nr);
            let mut jj = 0;
            while jj + 4 <= cols {
                let j = p * self.nr + jj;
                let src = [col(j), col(j + 1), col(j + 2), col(j + 3)];
                let mut g = 0;
                while g + 4 <= full {
                    let dst = &mut panel[g * stride + jj * GROUP_BYTES..];
                    mode.block4x4(src, g, dst, stride);
                    g += 4;
                }
                for i in 0..4 {
                    scalar(panel, j + i, jj + i, g);
                }
                jj += 4;
            }
            for jj in jj..cols {
                scalar(panel, p * self.nr + jj, jj, 0);
            }
        }
    }

    /// Packs a row-major B (`k` rows of `n` values, as V in P V) into `out` (zeroed,
    /// [`Blocking::packed_b_len`] bytes). For each group `g` and panel, `fill(rows, j0, dst)`
    /// gets the group's rows (`kg` of them, fewer in the last group of a ragged depth) and
    /// writes the 4 bytes of columns `j0..j0 + dst.len() / 4`. Groups are the outer loop, so
    /// B is read once, row after row.
    pub fn pack_b_rows<T: Copy>(
        &self,
        b: &[T],
        k: usize,
        n: usize,
        out: &mut [i8],
        fill: impl Fn(&[&[T]], usize, &mut [u8]),
    ) {
        assert_eq!(b.len(), n * k, "B must be {k} x {n}");
        assert_eq!(out.len(), self.packed_b_len(n, k), "packed B length");
        if n == 0 || k == 0 {
            return;
        }
        let out: &mut [u8] = bytemuck::cast_slice_mut(out);
        let (groups, panels) = (self.groups(k), self.panels(n));
        let group_bytes = self.nr * GROUP_BYTES;
        let panel_bytes = groups * group_bytes;
        for g in 0..groups {
            let r0 = g * self.kg;
            let rows = &b[r0 * n..(r0 + self.kg).min(k) * n];
            let mut slices: [&[T]; GROUP_BYTES] = [&[]; GROUP_BYTES];
            for (s, row) in slices.iter_mut().zip(rows.chunks_exact(n)) {
                *s = row;
            }
            for p in 0..panels {
                let cols = (n - p * self.nr).min(self.nr);
                let at = p * panel_bytes + g * group_bytes;
                fill(
                    &slices[..rows.len() / n],
                    p * self.nr,
                    &mut out[at..at + cols * GROUP_BYTES],
                );
            }
        }
    }
}

/// [`Blocking::pack_b_rows`] for 4 byte rows, each group the four rows' bytes of one column
/// (in order) mapped by `f`; 16 columns at a time with SSE2 when `f` is the identity or a
/// sign flip (`flip`), which is all the kernels need.
pub(crate) fn interleave4(rows: &[&[i8]], j0: usize, dst: &mut [u8], flip: bool) {
    let cols = dst.len() / GROUP_BYTES;
    let mut jj = 0;
    if rows.len() == 4 {
        let x = if flip { -128i8 } else { 0 };
        while jj + 16 <= cols {
            let r: [&[i8]; 4] = std::array::from_fn(|i| &rows[i][j0 + jj..j0 + jj + 16]);
            let out = &mut dst[GROUP_BYTES * jj..GROUP_BYTES * (jj + 16)];
            interleave4_16(r, out, x);
            jj += 16;
        }
    }
    let x = if flip { 0x80u8 } else { 0 };
    for (jj, d) in dst.chunks_exact_mut(GROUP_BYTES).enumerate().skip(jj) {
        for (i, o) in d.iter_mut().enumerate() {
            *o = rows.get(i).map_or(0, |r| r[j0 + jj] as u8 ^ x);
        }
    }
}

/// 16 columns of 4 rows, interleaved into 64 bytes: `out[4 j + i] = r[i][j] ^ x`.
fn interleave4_16(r: [&[i8]; 4], out: &mut [u8], x: i8) {
    use std::arch::x86_64::*;
    assert!(r.iter().all(|r| r.len() == 16) && out.len() == 64);
    // SAFETY: SSE2 is part of x86-64; the loads read 16 bytes from each 16-byte row and the
    // stores write 64 bytes into `out`, lengths asserted above.
    unsafe {
        let f = _mm_set1_epi8(x);
        let ld = |s: &[i8]| _mm_xor_si128(_mm_loadu_si128(s.as_ptr() as *const __m128i), f);
        let (a, b, c, d) = (ld(r[0]), ld(r[1]), ld(r[2]), ld(r[3]));
        let ab_lo = _mm_unpacklo_epi8(a, b);
        let ab_hi = _mm_unpackhi_epi8(a, b);
        let cd_lo = _mm_unpacklo_epi8(c, d);
        let cd_hi = _mm_unpackhi_epi8(c, d);
        let o = out.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(o, _mm_unpacklo_epi16(ab_lo, cd_lo));
        _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
        _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
        _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
    }
}

/// [`Blocking::pack_b_rows`] for 2 byte rows widened to i16 pairs: the group of column `j` is
/// `(rows[0][j] as i16, rows[1][j] as i16)`, 8 columns at a time with SSE2.
pub(crate) fn interleave2_i16(rows: &[&[i8]], j0: usize, dst: &mut [u8]) {
    let cols = dst.len() / GROUP_BYTES;
    let mut jj = 0;
    if rows.len() == 2 {
        while jj + 8 <= cols {
            let (a, b) = (
                &rows[0][j0 + jj..j0 + jj + 8],
                &rows[1][j0 + jj..j0 + jj + 8],
            );
            interleave2_8(a, b, &mut dst[GROUP_BYTES * jj..GROUP_BYTES * (jj + 8)]);
            jj += 8;
        }
    }
    for (jj, d) in dst.chunks_exact_mut(GROUP_BYTES).enumerate().skip(jj) {
        let lo = (rows[0][j0 + jj] as i16).to_le_bytes();
        let hi = rows.get(1).map_or(0, |r| r[j0 + jj] as i16).to_le_bytes();
        d.copy_from_slice(&[lo[0], lo[1], hi[0], hi[1]]);
    }
}

/// 8 columns of 2 rows, sign-extended and interleaved into 32 bytes.
fn interleave2_8(a: &[i8], b: &[i8], out: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(a.len() == 8 && b.len() == 8 && out.len() == 32);
    // SAFETY: SSE2 is part of x86-64; the loads read 8 bytes of each row and the stores
    // write 32 bytes into `out`, lengths asserted above.
    unsafe {
        // Bytes into the high half of 16-bit lanes, then an arithmetic shift: sign extension.
        let widen = |s: &[i8]| {
            let v = _mm_loadl_epi64(s.as_ptr() as *const __m128i);
            _mm_srai_epi16::<8>(_mm_unpacklo_epi8(v, v))
        };
        let (wa, wb) = (widen(a), widen(b));
        let o = out.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(o, _mm_unpacklo_epi16(wa, wb));
        _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(wa, wb));
    }
}

/// How [`Blocking::pack_b_cols`] turns a column's values into 4-byte groups.
#[derive(Clone, Copy)]
pub(crate) enum ColGroups {
    /// 4 bytes as they are, or with the sign bit flipped (`k + 128` as u8).
    Bytes { flip: bool },
    /// 2 values sign-extended to i16.
    PairsI16,
}

impl ColGroups {
    fn kg(self) -> usize {
        match self {
            ColGroups::Bytes { .. } => 4,
            ColGroups::PairsI16 => 2,
        }
    }

    /// One group from up to `kg` values (zero past a ragged depth).
    fn group(self, src: &[i8]) -> [u8; GROUP_BYTES] {
        let mut out = [0u8; GROUP_BYTES];
        match self {
            ColGroups::Bytes { flip } => {
                let x = if flip { 0x80 } else { 0 };
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v as u8 ^ x;
                }
            }
            ColGroups::PairsI16 => {
                for (o, &v) in out.chunks_exact_mut(2).zip(src) {
                    o.copy_from_slice(&(v as i16).to_le_bytes());
                }
            }
        }
        out
    }

    /// Groups `g..g + 4` of four columns, transposed with SSE2: group `g + q` of the four
    /// columns goes to the 16 bytes at `dst[q * stride..]`.
    fn block4x4(self, cols: [&[i8]; 4], g: usize, dst: &mut [u8], stride: usize) {
        use std::arch::x86_64::*;
        let kg = self.kg();
        assert!(cols.iter().all(|c| c.len() >= (g + 4) * kg));
        assert!(dst.len() >= 3 * stride + 16);
        // SAFETY: SSE2 is part of x86-64; each load reads 4 * kg bytes of a column from group
        // g on, and each store writes 16 bytes at q * stride, all inside the lengths asserted
        // above.
        unsafe {
            let load = |c: &[i8]| {
                let p = c.as_ptr().add(g * kg) as *const __m128i;
                match self {
                    ColGroups::Bytes { flip } => _mm_xor_si128(
                        _mm_loadu_si128(p),
                        _mm_set1_epi8(if flip { -128 } else { 0 }),
                    ),
                    ColGroups::PairsI16 => {
                        // Bytes into the high half of 16-bit lanes, then an arithmetic shift.
                        let v = _mm_loadl_epi64(p);
                        _mm_srai_epi16::<8>(_mm_unpacklo_epi8(v, v))
                    }
                }
            };
            let (r0, r1, r2, r3) = (load(cols[0]), load(cols[1]), load(cols[2]), load(cols[3]));
            let t0 = _mm_unpacklo_epi32(r0, r1);
            let t1 = _mm_unpacklo_epi32(r2, r3);
            let t2 = _mm_unpackhi_epi32(r0, r1);
            let t3 = _mm_unpackhi_epi32(r2, r3);
            let o = dst.as_mut_ptr();
            _mm_storeu_si128(o as *mut __m128i, _mm_unpacklo_epi64(t0, t1));
            _mm_storeu_si128(o.add(stride) as *mut __m128i, _mm_unpackhi_epi64(t0, t1));
            _mm_storeu_si128(
                o.add(2 * stride) as *mut __m128i,
                _mm_unpacklo_epi64(t2, t3),
            );
            _mm_storeu_si128(
                o.add(3 * stride) as *mut __m128i,
                _mm_unpackhi_epi64(t2, t3),
            );
        }
    }
}

/// The A operand of a GEMM as [`run_tiles`] reads it: row-major bytes with row stride `lda`
/// (`lda >= 4 * groups`); the group bytes of a row are the row's bytes as they are.
pub(crate) struct ARows<'a> {
    pub data: &'a [u8],
    pub lda: usize,
}

/// One micro-tile of work, handed by [`run_tiles`] to a kernel's register-blocked routine.
///
/// The routine computes, for `r < rows` and `j < cols`,
/// `c[r * ldc + j] = base + sum over groups g of dot(4 bytes at a + r * lda + 4 g,
/// 4 bytes of column j in group g of b)` where `base` is the current `c` value when
/// `accumulate`, else `row_init[r]` when `row_init` is not null, else 0.
/// [`run_tiles`] guarantees that those A bytes are readable for `r < rows`, that `b` points at
/// `groups * nr * 4` readable bytes, `row_init` (if not null) at `rows` readable values, and
/// that rows `0..rows` of `c` with stride `ldc` have `cols` writable values each.
pub(crate) struct Tile {
    pub a: *const u8,
    pub lda: usize,
    pub b: *const u8,
    pub groups: usize,
    pub c: *mut i32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
    pub row_init: *const i32,
}

/// The blocked loop nest shared by all packed GEMMs: depth blocks, then row blocks, then
/// panels, then strips, so that one B panel block is reused from L1 by every strip of a row
/// block. `row_init`, if given, holds one starting value per row of C.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_tiles(
    bl: &Blocking,
    a: ARows<'_>,
    b: &[i8],
    row_init: Option<&[i32]>,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [i32],
    mut micro: impl FnMut(&Tile),
) {
    let groups = bl.groups(k);
    assert!(c.len() >= m * n, "C too short for {m} x {n}");
    assert_eq!(b.len(), bl.packed_b_len(n, k), "packed B length");
    if let Some(init) = row_init {
        assert_eq!(init.len(), m, "row corrections length");
    }
    let ARows { data: a_bytes, lda } = a;
    assert!(
        lda >= groups * GROUP_BYTES,
        "A row stride {lda} below the padded depth"
    );
    if m > 0 {
        assert!(
            a_bytes.len() >= (m - 1) * lda + groups * GROUP_BYTES,
            "A too short"
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    if groups == 0 {
        // Empty depth: the product is the starting value alone.
        for (i, row) in c[..m * n].chunks_exact_mut(n).enumerate() {
            row.fill(row_init.map_or(0, |init| init[i]));
        }
        return;
    }
    let (strips, panels) = (bl.strips(m), bl.panels(n));
    let b_panel = groups * bl.nr * GROUP_BYTES;
    for g0 in (0..groups).step_by(bl.kc) {
        let gn = (groups - g0).min(bl.kc);
        for s0 in (0..strips).step_by(bl.mc) {
            for p in 0..panels {
                let cols = (n - p * bl.nr).min(bl.nr);
                for s in s0..(s0 + bl.mc).min(strips) {
                    let rows = (m - s * bl.mr).min(bl.mr);
                    let a_off = s * bl.mr * lda + g0 * GROUP_BYTES;
                    let b_off = p * b_panel + g0 * bl.nr * GROUP_BYTES;
                    let c_off = s * bl.mr * n + p * bl.nr;
                    micro(&Tile {
                        a: a_bytes[a_off..].as_ptr(),
                        lda,
                        b: b[b_off..].as_ptr() as *const u8,
                        groups: gn,
                        c: c[c_off..].as_mut_ptr(),
                        ldc: n,
                        rows,
                        cols,
                        accumulate: g0 > 0,
                        row_init: match row_init {
                            Some(init) if g0 == 0 => init[s * bl.mr..].as_ptr(),
                            _ => std::ptr::null(),
                        },
                    });
                }
            }
        }
    }
}

/// Checks that a [`super::PackedB`] has the layout a kernel expects before its raw pointers
/// are used (a layout from another kernel would otherwise be read out of bounds). The public
/// [`super::Kernel`] handle checks this with an error first; here it guards the engine.
pub(crate) fn check_packed(b: &super::PackedB, layout: LayoutId, bl: &Blocking) {
    assert!(
        b.layout() == layout,
        "PackedB packed by '{}' given to a kernel that reads '{}'",
        b.packed_by(),
        layout.name()
    );
    assert_eq!(
        b.data().len(),
        bl.packed_b_len(b.n(), b.k()),
        "PackedB data length"
    );
}

/// A's rows as the VNNI micro-kernels read them, one 4-byte group at a time: `a` itself when
/// `k` is a multiple of 4, else a copy with every row zero-padded to whole groups. Returns the
/// rows and their stride.
pub(crate) fn group_rows(a: &[u8], m: usize, k: usize) -> (std::borrow::Cow<'_, [u8]>, usize) {
    assert_eq!(a.len(), m * k, "A must be m x k");
    if k.is_multiple_of(GROUP_BYTES) {
        return (std::borrow::Cow::Borrowed(a), k);
    }
    let lda = k.next_multiple_of(GROUP_BYTES);
    let mut v = vec![0u8; m * lda];
    for (dst, src) in v.chunks_exact_mut(lda).zip(a.chunks_exact(k)) {
        dst[..k].copy_from_slice(src);
    }
    (std::borrow::Cow::Owned(v), lda)
}

/// `c = a * b (+ row_init)` for the VNNI kernels: A's rows as bytes (copied only to pad a
/// ragged depth to whole groups), `micro` on every tile of [`run_tiles`].
pub(crate) fn run_groups(
    bl: &Blocking,
    a: &[u8],
    b: &super::PackedB,
    row_init: Option<&[i32]>,
    m: usize,
    c: &mut [i32],
    micro: impl FnMut(&Tile),
) {
    assert_eq!(c.len(), m * b.n(), "C must be m x n");
    let (data, lda) = group_rows(a, m, b.k());
    let a = ARows { data: &data, lda };
    run_tiles(bl, a, b.data(), row_init, m, b.n(), b.k(), c, micro);
}

/// Starting values of C's rows for Q K^T with K packed as `k + 128` (the VNNI kernels, whose
/// `vpdpbusd` needs one unsigned operand): `-128 * sum(q_row)`. `|sum| <= 128 k`, so the
/// product fits i32 for `k <= MAX_K_S8S8`.
pub(crate) fn plus128_row_init(a: &[i8], m: usize, k: usize) -> Vec<i32> {
    if k == 0 {
        return vec![0; m];
    }
    a.chunks_exact(k)
        .map(|row| {
            row.iter()
                .map(|&x| x as i32)
                .sum::<i32>()
                .wrapping_mul(-128)
        })
        .collect()
}

/// Per-row constants of the vectorized IndexSoftmax index, `idx = trunc(D * scale + bias)`
/// evaluated in f64 (one fused multiply-add, or a multiply then an add).
///
/// Why this equals the exact `idx = floor(v)`, `v = (2 D (N-1) + T) / (2 T) = D (N-1)/T + 1/2`,
/// for every `0 <= D <= T <= 2^30`, `N <= 256`:
/// - `scale = fl((N-1)/T)` has relative error <= 2^-53, so `D * scale` is within
///   `255 * 2^-53 < 2^-45` of `D (N-1)/T`; each of the (at most two) roundings of the
///   multiply-add adds at most half an ulp of a value below 256, i.e. 2^-46. The computed `y`
///   is therefore within `2^-44` of `v + 2^-38` (`bias = 1/2 + 2^-38` is exact in f64).
/// - If `v` is an integer, `y >= v + 2^-38 - 2^-44 > v`, and `y < v + 1`: truncation gives `v`.
/// - Otherwise `v`'s numerator is an integer over `2T`, so `v` is at least `1/(2T) >= 2^-31`
///   away from both neighbouring integers, and `y` moves by less than `2^-38 + 2^-44`: the
///   integer part is unchanged.
///
/// `tests/kernels.rs` checks this at every bucket boundary `D = b_i - 1, b_i` for many `T`.
pub(crate) fn index_consts(lut: &Lut, threshold: i32) -> (f64, f64) {
    let scale = lut.max_index() as f64 / threshold as f64;
    let bias = 0.5 + 2f64.powi(-38);
    (scale, bias)
}

/// Per-row constants of the f32 screen in front of [`index_consts`]: `(scale, lo, hi)` with
/// `scale = fl32((N-1)/T)`, `lo = 1/2 - 2^-13`, `hi = 1/2 + 2^-13`. A lane whose
/// `floor(fl32(D) * scale + lo)` and `floor(fl32(D) * scale + hi)` (each one f32 multiply-add)
/// agree has that common value as its exact index; lanes where they differ take the f64 path.
///
/// Why, for `0 <= D <= T <= 2^30`, `N <= 256`, `v = D (N-1)/T + 1/2` (the exact index is
/// `floor(v)`, see [`index_consts`]):
/// - `fl32(D)` and `scale` each carry a relative error below `2^-24 (1 + 2^-29)`, so their exact
///   product is within `255 * 2^-22.9 < 2^-14.9` of `D (N-1)/T`; the multiply-add rounds once, to
///   half an ulp of a value below 256, `2^-17`. Both results are within `2^-14.5 < 2^-13` of
///   `v - 2^-13` and `v + 2^-13`: `y_lo < v < y_hi`.
/// - If `floor(y_lo) = floor(y_hi) = i` then `i <= y_lo < v < y_hi < i + 1`, so `floor(v) = i`.
///   An integer `v` (a tie of the exact rule) always falls between two different floors, as
///   does any `v` within about `2^-13` of an integer: those lanes are recomputed in f64. For
///   scores spread over the row that is about one lane in 4,000.
///
/// `tests/kernels.rs` drives both outcomes: every bucket boundary (where the screen must defer)
/// and random rows (where it decides).
pub(crate) fn index_consts_f32(lut: &Lut, threshold: i32) -> (f32, f32, f32) {
    let scale = (lut.max_index() as f64 / threshold as f64) as f32;
    let eps = 2f32.powi(-13);
    (scale, 0.5 - eps, 0.5 + eps)
}

/// Scalar IndexSoftmax for `row[from..valid]` given the row max: the vector loops' tail.
pub(crate) fn index_softmax_tail(
    row: &[i32],
    from: usize,
    valid: usize,
    max: i32,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let table = lut.entries();
    let mut sum = 0u32;
    for j in from..valid {
        let d = (max as i64 - row[j] as i64).min(threshold as i64);
        let v = table[reference::table_index(d, lut.max_index(), threshold)];
        e[j] = v;
        sum += v as u32;
    }
    sum
}

/// The Normalized finish as a table: `t[v] = (2 * 255 * v + sum) / (2 * sum)` (truncated to u8
/// exactly like [`reference::normalize_row`]) for every byte value `v`. Requires `sum > 0`.
///
/// For `sum >= 255` the entries are independent f64 evaluations `trunc((510 v + sum) * inv +
/// 2^-40)` with `inv = fl(1 / (2 sum))`, which equal the exact quotient `q = (510 v + sum) /
/// (2 sum) <= 255.5`: `510 v + sum < 2^33` is exact; `inv` and the product each add a relative
/// error of at most 2^-53, so at most `2^-44` in absolute terms, and the addition at most
/// half an ulp of 256, `2^-45`. An integer `q` therefore becomes `q + 2^-40 +- 2^-43`, which
/// truncates to `q`; any other `q` is at least `1 / (2 sum) > 2^-33` from both neighbouring
/// integers, farther than the total shift. Smaller sums divide (they are rare: a row's sum
/// includes its maximum's 255).
pub(crate) fn normalize_table(sum: u32) -> [u8; 256] {
    let mut t = [0u8; 256];
    if sum >= 255 {
        let s = sum as f64;
        let inv = 1.0 / (2.0 * s);
        let bias = 2f64.powi(-40);
        for (v, entry) in t.iter_mut().enumerate() {
            *entry = ((510.0 * v as f64 + s) * inv + bias) as u8;
        }
    } else {
        let s2 = 2 * sum as u64;
        for (v, entry) in t.iter_mut().enumerate() {
            *entry = ((510 * v as u64 + sum as u64) / s2) as u8;
        }
    }
    t
}
