//! Packed B operands: which kernel's layout a buffer is in ([`LayoutId`]), where each value
//! of K or V sits in it ([`Geom`]), and the [`PackedB`] that carries both. The byte geometry
//! lets the KV cache write one new token into a packed page without repacking the page.

use crate::memory::AlignedVec;

/// The packed layouts, one per family of kernels that read the same bytes (each architecture
/// constructs its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(dead_code)]
pub(crate) enum LayoutId {
    /// K as `n x k` row-major (keys are rows), V as `k x n` row-major: the caller's layout.
    Plain,
    /// `avx2`: groups of 2 depth values widened to i16, 16-column panels.
    Avx2,
    /// `avxvnni`: groups of 4 bytes, 16-column panels, K stored as `k + 128`.
    AvxVnni,
    /// `avx512vnni` and `avx512vbmi`: groups of 4 bytes, 64-column panels, K as `k + 128`.
    Avx512,
    /// `amx`: groups of 4 bytes, 16-column panels, depth padded to 64.
    Amx,
    /// `neon`: one depth value per group, 8-column panels, depth padded to 8.
    Neon,
    /// `dotprod`: groups of 4 bytes, 8-column panels, depth padded to 16, V as `v + 128`.
    Dotprod,
    /// `i8mm`: groups of 8 bytes, 8-column panels, depth padded to 8.
    I8mm,
}

/// Where the values of a packed B (`n` columns of depth `k`) live: columns in panels of `nr`,
/// each panel `[group][column][kr values]` with the depth padded with zeros to `depth_step`,
/// each value `bytes` wide (i16 little-endian when 2), stored XOR 0x80 when `flip` (u8
/// `v + 128`; padding stays 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub nr: usize,
    pub kr: usize,
    pub depth_step: usize,
    pub bytes: usize,
    pub flip: bool,
}

impl Geom {
    const fn new(nr: usize, kr: usize, depth_step: usize, bytes: usize, flip: bool) -> Geom {
        Geom {
            nr,
            kr,
            depth_step,
            bytes,
            flip,
        }
    }

    /// Depth padded to whole steps.
    pub fn padded(&self, k: usize) -> usize {
        k.next_multiple_of(self.depth_step)
    }

    /// Bytes of a packed B with `n` columns of depth `k`.
    pub fn len(&self, n: usize, k: usize) -> usize {
        n.div_ceil(self.nr) * self.nr * self.padded(k) * self.bytes
    }

    /// Byte offset of column `col`, depth `t` in a packed B of depth `k`.
    pub fn offset(&self, col: usize, t: usize, k: usize) -> usize {
        let kp = self.padded(k);
        let (panel, jj) = (col / self.nr, col % self.nr);
        let (g, r) = (t / self.kr, t % self.kr);
        ((panel * self.nr * kp) + g * self.nr * self.kr + jj * self.kr + r) * self.bytes
    }

    /// Stores `v` at column `col`, depth `t` of `out` (a packed B of depth `k`).
    pub fn put(&self, out: &mut [i8], col: usize, t: usize, k: usize, v: i8) {
        let at = self.offset(col, t, k);
        if self.bytes == 2 {
            let b = (v as i16).to_le_bytes();
            out[at] = b[0] as i8;
            out[at + 1] = b[1] as i8;
        } else {
            out[at] = if self.flip { (v as u8 ^ 0x80) as i8 } else { v };
        }
    }
}

impl LayoutId {
    /// The geometry of packed K (columns are keys, depth is the head dimension) and of packed
    /// V (columns are the head dimension, depth is keys); `None` for the plain layout.
    pub fn geoms(self) -> Option<(Geom, Geom)> {
        use LayoutId::*;
        let g = |nr, kr, step, bytes, flip_k, flip_v| {
            (
                Geom::new(nr, kr, step, bytes, flip_k),
                Geom::new(nr, kr, step, bytes, flip_v),
            )
        };
        Some(match self {
            Plain => return None,
            Avx2 => g(16, 2, 2, 2, false, false),
            AvxVnni => g(16, 4, 4, 1, true, false),
            Avx512 => g(64, 4, 4, 1, true, false),
            Amx => g(16, 4, 64, 1, false, false),
            Neon => g(8, 1, 8, 1, false, false),
            Dotprod => g(8, 4, 16, 1, false, true),
            I8mm => g(8, 8, 8, 1, false, false),
        })
    }

    /// Bytes of packed K with `n` keys of depth `k`.
    pub fn k_len(self, n: usize, k: usize) -> usize {
        match self.geoms() {
            Some((gk, _)) => gk.len(n, k),
            None => n * k,
        }
    }

    /// Bytes of packed V with `k` keys (depth) of `n` columns.
    pub fn v_len(self, k: usize, n: usize) -> usize {
        match self.geoms() {
            Some((_, gv)) => gv.len(n, k),
            None => n * k,
        }
    }

    /// Writes key `j` (its `d` values) into packed K of `n` keys, depth `d`.
    pub fn put_key(self, out: &mut [i8], n: usize, d: usize, j: usize, key: &[i8]) {
        match self.geoms() {
            Some((gk, _)) => {
                for (t, &v) in key.iter().enumerate() {
                    gk.put(out, j, t, d, v);
                }
            }
            None => {
                let _ = n;
                out[j * d..(j + 1) * d].copy_from_slice(key);
            }
        }
    }

    /// Writes value row `j` (its `d` values) into packed V of `k` keys (depth), `d` columns.
    pub fn put_value(self, out: &mut [i8], k: usize, d: usize, j: usize, row: &[i8]) {
        match self.geoms() {
            Some((_, gv)) => {
                for (c, &v) in row.iter().enumerate() {
                    gv.put(out, c, j, k, v);
                }
            }
            None => {
                let _ = k;
                out[j * d..(j + 1) * d].copy_from_slice(row);
            }
        }
    }

    /// The name of the kernel (family) that packs this layout.
    pub fn name(self) -> &'static str {
        use LayoutId::*;
        match self {
            Plain => "plain",
            Avx2 => "avx2",
            AvxVnni => "avxvnni",
            Avx512 => "avx512",
            Amx => "amx",
            Neon => "neon",
            Dotprod => "dotprod",
            I8mm => "i8mm",
        }
    }
}

/// A B operand in a kernel's own layout: `n` output columns, depth `k`. Made by
/// [`crate::kernels::Kernel::pack_k`] or [`crate::kernels::Kernel::pack_v`]; only the kernel that
/// packed it (or a kernel of the same family) multiplies it.
#[derive(Clone, Debug)]
pub struct PackedB {
    data: AlignedVec<i8>,
    n: usize,
    k: usize,
    layout: LayoutId,
}

impl PackedB {
    pub(crate) fn from_parts(data: AlignedVec<i8>, n: usize, k: usize, layout: LayoutId) -> Self {
        debug_assert_eq!(
            data.len(),
            match layout.geoms() {
                Some((g, _)) => g.len(n, k),
                None => n * k,
            }
        );
        PackedB { data, n, k, layout }
    }

    /// The unpacked layout: a copy of `b` (`n x k` row-major for K, `k x n` row-major for V),
    /// which every kernel multiplies.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] unless `b` holds `n * k` values.
    pub fn plain(b: &[i8], n: usize, k: usize) -> crate::Result<Self> {
        crate::error::check_len("B", crate::error::mul("B", n, k)?, b.len())?;
        Ok(Self::plain_unchecked(b, n, k))
    }

    fn plain_unchecked(b: &[i8], n: usize, k: usize) -> Self {
        PackedB {
            data: AlignedVec::from_slice(b),
            n,
            k,
            layout: LayoutId::Plain,
        }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Depth.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The kernel (family) whose layout this is.
    pub fn packed_by(&self) -> &'static str {
        self.layout.name()
    }

    pub(crate) fn layout(&self) -> LayoutId {
        self.layout
    }

    pub(crate) fn data(&self) -> &[i8] {
        &self.data
    }

    /// The bytes, for writing new keys into a cache page.
    pub(crate) fn data_mut(&mut self) -> &mut [i8] {
        &mut self.data
    }

    /// Storage to reuse for another packing of the same or a smaller size.
    pub(crate) fn into_storage(self) -> AlignedVec<i8> {
        self.data
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::available_impls;

    /// Writing keys and values one at a time through the layout's geometry (what the KV cache
    /// does on every append) gives the same bytes as each kernel's packer, for every kernel
    /// this CPU runs, over ragged sizes around every panel and depth step.
    #[test]
    fn geometry_writes_equal_the_packers() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut byte = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8 as i8
        };
        for kernel in available_impls() {
            let layout = kernel.layout();
            for (n, d) in [
                (1, 1),
                (3, 5),
                (16, 64),
                (17, 63),
                (64, 128),
                (65, 130),
                (256, 128),
                (7, 200),
            ] {
                // K: n keys of d values; V: n keys (depth) of d columns.
                let k: Vec<i8> = (0..n * d).map(|_| byte()).collect();
                let mut packed = vec![0i8; layout.k_len(n, d)];
                kernel.pack_k_into(&k, n, d, &mut packed);
                let mut put = vec![0i8; layout.k_len(n, d)];
                for j in 0..n {
                    layout.put_key(&mut put, n, d, j, &k[j * d..(j + 1) * d]);
                }
                assert!(put == packed, "{}: keys n {n} d {d}", kernel.name());
                let mut packed = vec![0i8; layout.v_len(n, d)];
                kernel.pack_v_into(&k, n, d, &mut packed);
                let mut put = vec![0i8; layout.v_len(n, d)];
                for j in 0..n {
                    layout.put_value(&mut put, n, d, j, &k[j * d..(j + 1) * d]);
                }
                assert!(put == packed, "{}: values n {n} d {d}", kernel.name());
            }
        }
    }
}
