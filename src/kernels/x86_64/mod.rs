//! x86-64 SIMD kernels: [`avx2::Avx2`] (AVX2 + FMA) and [`avx512::Avx512`] (AVX-512 F/BW/VL +
//! VNNI, in two flavours: `avx512vnni`, and `avx512vbmi` which also uses VBMI byte permutes for
//! the table lookups). This module owns what they share: run-time detection, the packed
//! operand layouts and the blocked GEMM loop, and the exact arithmetic behind the vectorized
//! IndexSoftmax index and the Normalized finish.
//!
//! Both GEMM families use the same packed shape. Depth is cut into groups of `GROUP_BYTES`
//! bytes per row or column (AVX2: 2 values widened to i16, for `vpmaddwd`; AVX-512: 4 bytes,
//! for `vpdpbusd`). B is stored in panels of `nr` columns, each panel as `[group][column][4
//! bytes]`, so one vector load gives the next group of every column of the panel; A is stored
//! in strips of `mr` rows as `[group][row][4 bytes]`, so one 32-bit broadcast gives the next
//! group of one row. Padding (depth past `k`, columns past `n`, rows past `m`) is zero.

pub mod avx2;
pub mod avx512;

use super::Kernel;
use crate::reference;
use crate::softmax::Lut;

/// Every x86-64 kernel this CPU can run, slowest first.
pub fn kernels() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = Vec::new();
    if let Some(k) = avx2::Avx2::detect() {
        v.push(k);
    }
    if let Some(k) = avx512::Avx512::detect_vnni() {
        v.push(k);
    }
    if let Some(k) = avx512::Avx512::detect_vbmi() {
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
    /// Length in bytes of packed A with `m` rows and depth `k`.
    pub fn packed_a_len(&self, m: usize, k: usize) -> usize {
        self.strips(m) * self.mr * self.groups(k) * GROUP_BYTES
    }

    /// Packs B into panels. `fill(col, group, out)` writes the 4 bytes of one column's group
    /// (zeros already in place for padding columns, which are never passed).
    pub fn pack_b(
        &self,
        n: usize,
        k: usize,
        mut fill: impl FnMut(usize, usize, &mut [u8]),
    ) -> Vec<i8> {
        let groups = self.groups(k);
        let mut out = vec![0u8; self.packed_b_len(n, k)];
        let panel_bytes = groups * self.nr * GROUP_BYTES;
        if panel_bytes > 0 {
            for (p, panel) in out.chunks_exact_mut(panel_bytes).enumerate() {
                let cols = (n - p * self.nr).min(self.nr);
                for (g, group) in panel.chunks_exact_mut(self.nr * GROUP_BYTES).enumerate() {
                    for (j, dst) in group.chunks_exact_mut(GROUP_BYTES).take(cols).enumerate() {
                        fill(p * self.nr + j, g, dst);
                    }
                }
            }
        }
        out.into_iter().map(|b| b as i8).collect()
    }

    /// Packs A into strips. `fill(row, group, out)` writes the 4 bytes of one row's group.
    pub fn pack_a(
        &self,
        m: usize,
        k: usize,
        mut fill: impl FnMut(usize, usize, &mut [u8]),
    ) -> Vec<u8> {
        let groups = self.groups(k);
        let mut out = vec![0u8; self.packed_a_len(m, k)];
        let strip_bytes = groups * self.mr * GROUP_BYTES;
        if strip_bytes == 0 {
            return out;
        }
        for (s, strip) in out.chunks_exact_mut(strip_bytes).enumerate() {
            let rows = (m - s * self.mr).min(self.mr);
            for (g, group) in strip.chunks_exact_mut(self.mr * GROUP_BYTES).enumerate() {
                for (r, dst) in group.chunks_exact_mut(GROUP_BYTES).take(rows).enumerate() {
                    fill(s * self.mr + r, g, dst);
                }
            }
        }
        out
    }
}

/// One micro-tile of work, handed by [`run_tiles`] to a kernel's register-blocked routine.
///
/// The routine computes, for `r < rows` and `j < cols`,
/// `c[r * ldc + j] = base + sum over groups of dot(a row r, b column j)` where `base` is the
/// current `c` value when `accumulate`, else `init[j]` when `init` is not null, else 0.
/// [`run_tiles`] guarantees that `a` points at `groups * a_stride` readable bytes (`a_stride =
/// mr * 4`), `b` at `groups * nr * 4` readable bytes, `init` (if not null) at `nr` readable
/// values, and that rows `0..rows` of `c` with stride `ldc` have `cols` writable values each.
pub(crate) struct Tile {
    pub a: *const u8,
    pub a_stride: usize,
    pub b: *const u8,
    pub groups: usize,
    pub c: *mut i32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
    pub init: *const i32,
}

/// The blocked loop nest shared by all packed GEMMs: depth blocks, then row blocks, then
/// panels, then strips, so that one B panel block is reused from L1 by every strip of a row
/// block. `init`, if given, holds one starting value per packed column (panels * nr).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_tiles(
    bl: &Blocking,
    a: &[u8],
    b: &[i8],
    init: Option<&[i32]>,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [i32],
    mut micro: impl FnMut(&Tile),
) {
    let groups = bl.groups(k);
    assert!(c.len() >= m * n, "C too short for {m} x {n}");
    assert_eq!(a.len(), bl.packed_a_len(m, k), "packed A length");
    assert_eq!(b.len(), bl.packed_b_len(n, k), "packed B length");
    if let Some(init) = init {
        assert_eq!(
            init.len(),
            bl.panels(n) * bl.nr,
            "column corrections length"
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    if groups == 0 {
        // Empty depth: the product is the starting value alone.
        for row in c[..m * n].chunks_exact_mut(n) {
            match init {
                Some(init) => row.copy_from_slice(&init[..n]),
                None => row.fill(0),
            }
        }
        return;
    }
    let (strips, panels) = (bl.strips(m), bl.panels(n));
    let a_strip = groups * bl.mr * GROUP_BYTES;
    let b_panel = groups * bl.nr * GROUP_BYTES;
    for g0 in (0..groups).step_by(bl.kc) {
        let gn = (groups - g0).min(bl.kc);
        for s0 in (0..strips).step_by(bl.mc) {
            for p in 0..panels {
                let cols = (n - p * bl.nr).min(bl.nr);
                for s in s0..(s0 + bl.mc).min(strips) {
                    let rows = (m - s * bl.mr).min(bl.mr);
                    let a_off = s * a_strip + g0 * bl.mr * GROUP_BYTES;
                    let b_off = p * b_panel + g0 * bl.nr * GROUP_BYTES;
                    let c_off = s * bl.mr * n + p * bl.nr;
                    micro(&Tile {
                        a: a[a_off..].as_ptr(),
                        a_stride: bl.mr * GROUP_BYTES,
                        b: b[b_off..].as_ptr() as *const u8,
                        groups: gn,
                        c: c[c_off..].as_mut_ptr(),
                        ldc: n,
                        rows,
                        cols,
                        accumulate: g0 > 0,
                        init: match init {
                            Some(init) if g0 == 0 => init[p * bl.nr..].as_ptr(),
                            _ => std::ptr::null(),
                        },
                    });
                }
            }
        }
    }
}

/// Checks that a [`super::PackedB`] has the layout a kernel expects before its raw pointers
/// are used (a layout from another kernel would otherwise be read out of bounds).
pub(crate) fn check_packed(b: &super::PackedB, accepted: &[&str], bl: &Blocking, with_sums: bool) {
    assert!(
        accepted.contains(&b.packed_by),
        "PackedB packed by '{}' given to a kernel that reads {:?} layouts",
        b.packed_by,
        accepted
    );
    assert_eq!(
        b.data.len(),
        bl.packed_b_len(b.n, b.k),
        "PackedB data length"
    );
    if with_sums {
        assert_eq!(b.sums.len(), bl.panels(b.n) * bl.nr, "PackedB sums length");
    }
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
/// For `sum >= 255` each step `v -> v + 1` adds `510 < 2 sum` to the numerator, so the quotient
/// grows by 0 or 1 and one compare per entry replaces the division; smaller sums divide.
pub(crate) fn normalize_table(sum: u32) -> [u8; 256] {
    let mut t = [0u8; 256];
    let s2 = 2 * sum as u64;
    if sum >= 255 {
        // Invariant: num = 510 v + sum = q * s2 + r with 0 <= r < s2.
        let (mut q, mut r) = (0u64, sum as u64);
        for entry in t.iter_mut().skip(1) {
            r += 510;
            if r >= s2 {
                r -= s2;
                q += 1;
            }
            *entry = q as u8;
        }
    } else {
        for (v, entry) in t.iter_mut().enumerate() {
            *entry = ((510 * v as u64 + sum as u64) / s2) as u8;
        }
    }
    t
}
