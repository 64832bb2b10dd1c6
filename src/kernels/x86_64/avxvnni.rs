//! The AVX-VNNI kernel, `avxvnni`: CPUs with AVX2 and the VEX-encoded VNNI dot products but
//! no AVX-512 (Intel client cores from Alder Lake on; also present on Sapphire Rapids and on
//! AMD Zen 5, where the AVX-512 kernels come first).
//!
//! GEMMs: `vpdpbusd` on 256-bit vectors, the arithmetic of [`super::avx512`] at half the
//! width: four u8 x s8 products summed straight into an i32 lane (no i16 step, so nothing
//! saturates). P x V multiplies u8 P by s8 V as they are. Q K^T packs K + 128 as u8 (the sign
//! bit flipped) against s8 Q and starts every row of C at `-128 * sum(q_row)`: exact for every
//! s8 input, -128 included (`sum_k (k + 128) q = sum_k k q + 128 sum q`, in wrapping i32 as the
//! trait's depth limits keep the true result inside i32). Against [`super::avx2`]'s widening
//! `vpmaddwd` + `vpaddd` (16 products in two instructions) this is 32 products in one.
//!
//! Row operations (IndexSoftmax, the Normalized finish, float softmax) are the AVX2 kernel's.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::avx2::{tile_start, tile_store, Avx2};
use super::{run_groups, Blocking, Tile, GROUP_BYTES};
use crate::kernels::{KernelImpl, LayoutId, PackedB};

const NAME: &str = "avxvnni";

/// Vectors of 8 i32 lanes per row of a micro-tile.
const NV: usize = 2;

/// Micro-tile: 6 rows x 16 columns (12 ymm accumulators, 2 B vectors, 1 broadcast); a panel
/// block of 256 groups (16 KiB) stays in L1.
const BL: Blocking = Blocking {
    mr: 6,
    nr: 8 * NV,
    kg: 4,
    kc: 256,
    mc: 32,
};

/// The AVX-VNNI kernel. Only [`AvxVnni::detect`] creates one, after checking the CPU, so
/// holding a reference proves that AVX2, FMA and AVX-VNNI instructions may run.
pub struct AvxVnni {
    rows: &'static Avx2,
}

impl AvxVnni {
    pub fn detect() -> Option<&'static AvxVnni> {
        static K: OnceLock<Option<AvxVnni>> = OnceLock::new();
        K.get_or_init(|| {
            let rows = Avx2::detect()?;
            is_x86_feature_detected!("avxvnni").then_some(AvxVnni { rows })
        })
        .as_ref()
    }

    /// C = A x packed B (+ `row_init` per row), A as bytes: u8 when `A_U8`, else s8.
    fn run<const A_U8: bool>(
        &self,
        a: &[u8],
        b: &PackedB,
        row_init: Option<&[i32]>,
        m: usize,
        c: &mut [i32],
    ) {
        run_groups(&BL, a, b, row_init, m, c, |t| {
            // SAFETY: `self` proves AVX2 and AVX-VNNI support; `run_tiles` guarantees the
            // tile's pointer ranges (see `Tile`), and `rows <= BL.mr`.
            unsafe { micro_dispatch::<A_U8>(t) }
        });
    }
}

impl KernelImpl for AvxVnni {
    fn name(&self) -> &'static str {
        NAME
    }

    gemms_via_packing!();

    vnni_packed_gemms!(BL, LayoutId::AvxVnni);

    rows_from_field!();
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn micro_dispatch<const A_U8: bool>(t: &Tile) {
    // SAFETY: the caller's guarantees, passed on.
    unsafe { micro_by_rows!(micro, t, A_U8) }
}

/// One `R x 16` tile (see [`Tile`]): `R` rows of 4-byte groups against one B panel, A u8 and
/// B s8 when `A_U8`, else A s8 and B u8 (K + 128).
///
/// # Safety
/// AVX2 and AVX-VNNI must be available; the tile's pointers must cover what [`Tile`] says.
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn micro<const R: usize, const A_U8: bool>(t: &Tile) {
    // SAFETY: (whole body) loads and stores stay inside the tile's C rows (`cols` lanes, via
    // lane masks at a ragged edge), its A rows (`groups` groups of 4 bytes each) and its B
    // panel (`groups` groups of 64 bytes), as `run_tiles` guarantees.
    unsafe {
        let (mut acc, lanes) = tile_start::<R>(t);
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.groups {
            let bv: [__m256i; NV] =
                std::array::from_fn(|v| _mm256_loadu_si256(b.add(32 * v) as *const __m256i));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((a.add(r * t.lda) as *const i32).read_unaligned());
                for v in 0..NV {
                    acc_r[v] = if A_U8 {
                        _mm256_dpbusd_avx_epi32(acc_r[v], av, bv[v])
                    } else {
                        _mm256_dpbusd_avx_epi32(acc_r[v], bv[v], av)
                    };
                }
            }
            a = a.add(GROUP_BYTES);
            b = b.add(8 * NV * GROUP_BYTES);
        }
        tile_store(t, &acc, lanes);
    }
}
