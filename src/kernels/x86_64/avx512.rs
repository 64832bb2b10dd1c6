//! The AVX-512 kernels, `avx512vnni` (F, BW, VL, VNNI) and `avx512vbmi` (the same plus VBMI).
//!
//! GEMMs use `vpdpbusd`, which adds four u8 x s8 products into each i32 lane without any
//! intermediate saturation (its lanes wrap like the i32 accumulators, and only where the true
//! result would not fit i32, which the trait's depth limits exclude):
//! - P x V is u8 x s8 already: exact as is.
//! - Q x K^T is s8 x s8: K is packed as `k + 128` (u8), and every row of C starts from
//!   `-128 * sum_t Q[i][t]`, so `sum q (k + 128) - 128 sum q = sum q k` for every i8 value,
//!   -128 included.
//!
//! Neither product packs A: the micro-kernel broadcasts 4 bytes straight from A's rows (a copy
//! is made only when the depth is not a multiple of 4, to zero-pad the last group).
//!
//! IndexSoftmax: the exact f64 index of [`super::index_consts`]; the table lookup is one or two
//! `vpermb`/`vpermi2b` with VBMI, else a `vpshufb` per 16-entry slice of the table. The
//! Normalized finish looks up a 256-byte result table the same way (VBMI) or in scalar code.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{
    index_consts, index_consts_f32, normalize_table, run_groups, Blocking, Tile, GROUP_BYTES,
};
use crate::kernels::{KernelImpl, LayoutId, PackedB};
use crate::lut::Lut;

const VNNI: &str = "avx512vnni";
const VBMI: &str = "avx512vbmi";

/// Zmm vectors per micro-tile row: 64 columns.
const NV: usize = 4;
/// Micro-tile: 6 rows x 64 columns (24 zmm accumulators, 4 B vectors, 1 broadcast).
const BL: Blocking = Blocking {
    mr: 6,
    nr: 16 * NV,
    kg: 4,
    kc: 64,
    mc: 32,
};

/// An AVX-512 kernel. Only the `detect_*` functions create one, after checking the CPU, so
/// holding a reference proves that AVX-512 F/BW/VL/VNNI (and VBMI if `vbmi`) may run.
pub struct Avx512 {
    vbmi: bool,
}

fn has_base() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

impl Avx512 {
    pub fn detect_vnni() -> Option<&'static Avx512> {
        static K: OnceLock<Option<Avx512>> = OnceLock::new();
        K.get_or_init(|| has_base().then_some(Avx512 { vbmi: false }))
            .as_ref()
    }

    pub fn detect_vbmi() -> Option<&'static Avx512> {
        static K: OnceLock<Option<Avx512>> = OnceLock::new();
        K.get_or_init(|| {
            (has_base() && is_x86_feature_detected!("avx512vbmi")).then_some(Avx512 { vbmi: true })
        })
        .as_ref()
    }

    /// `c = a * b (+ row_init)` with A read in place (copied only to pad a ragged depth).
    /// `A_U8`: A holds the unsigned operand (P x V), else B does (K packed as k + 128).
    fn run<const A_U8: bool>(
        &self,
        a: &[u8],
        b: &PackedB,
        row_init: Option<&[i32]>,
        m: usize,
        c: &mut [i32],
    ) {
        run_groups(&BL, a, b, row_init, m, c, |t| {
            // SAFETY: `self` proves AVX-512 F/BW/VNNI support; `run_tiles` guarantees the
            // tile's pointer ranges (see `Tile`), and `rows <= BL.mr`.
            unsafe { micro_dispatch::<A_U8>(t) }
        });
    }
}

impl KernelImpl for Avx512 {
    fn name(&self) -> &'static str {
        if self.vbmi {
            VBMI
        } else {
            VNNI
        }
    }

    gemms_via_packing!();

    // Both kernels pack the same way, so either reads the other's operands.
    vnni_packed_gemms!(BL, LayoutId::Avx512);

    fn index_softmax_row(
        &self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        assert!(row.len() == e.len() && valid <= row.len());
        // SAFETY: `self` exists only if the CPU has the features of the function called
        // (VBMI only for `vbmi`); lengths checked above.
        unsafe {
            if self.vbmi {
                index_softmax_row_vbmi(row, valid, lut, threshold, e)
            } else {
                index_softmax_row_bw(row, valid, lut, threshold, e)
            }
        }
    }

    fn normalize_row(&self, p: &mut [u8], sum: u32) {
        if sum == 0 {
            p.fill(0);
            return;
        }
        let t = normalize_table(sum);
        if self.vbmi {
            // SAFETY: `self.vbmi` is set only when the CPU has AVX-512 VBMI.
            unsafe { lookup256_vbmi(p, &t) }
        } else {
            for v in p.iter_mut() {
                *v = t[*v as usize];
            }
        }
    }

    fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
        assert!(valid <= row.len());
        // SAFETY: `self` proves AVX-512 F support; `valid` checked above.
        unsafe { softmax_f32_row(row, valid) }
    }
}

/// # Safety
/// AVX-512 F/BW and VNNI must be available; the tile's pointers must cover what [`Tile`] says, with
/// `t.rows <= 6`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_dispatch<const A_U8: bool>(t: &Tile) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe { micro_by_rows!(micro, t, A_U8) }
}

/// Mask of the first `lanes` (<= 16) of 16.
#[inline]
fn mask16(lanes: usize) -> __mmask16 {
    ((1u32 << lanes) - 1) as __mmask16
}

/// Mask of the first `lanes` (<= 64) of 64.
#[inline]
fn mask64(lanes: usize) -> __mmask64 {
    if lanes >= 64 {
        !0
    } else {
        (1u64 << lanes) - 1
    }
}

/// One `R x 64` tile: `R` rows of A's 4-byte groups against one B panel (see [`Tile`]);
/// `A_U8` says which operand `vpdpbusd` takes as unsigned.
///
/// # Safety
/// AVX-512 F/BW and VNNI must be available; the tile's pointers must cover what [`Tile`] says.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const R: usize, const A_U8: bool>(t: &Tile) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); NV]; R];
        let mut masks = [0 as __mmask16; NV];
        for (v, m) in masks.iter_mut().enumerate() {
            *m = mask16(t.cols.saturating_sub(16 * v).min(16));
        }
        if t.accumulate {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                    // Masked-off lanes are not read, so a pointer past C's last column is fine.
                    let p = t.c.wrapping_add(r * t.ldc + 16 * v);
                    *acc_rv = _mm512_maskz_loadu_epi32(masks[v], p);
                }
            }
        } else if !t.row_init.is_null() {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                *acc_r = [_mm512_set1_epi32(*t.row_init.add(r)); NV];
            }
        }
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.groups {
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, bvv) in bv.iter_mut().enumerate() {
                *bvv = _mm512_loadu_si512(b.add(64 * v) as *const __m512i);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32((a.add(r * t.lda) as *const i32).read_unaligned());
                for v in 0..NV {
                    acc_r[v] = if A_U8 {
                        _mm512_dpbusd_epi32(acc_r[v], av, bv[v])
                    } else {
                        _mm512_dpbusd_epi32(acc_r[v], bv[v], av)
                    };
                }
            }
            a = a.add(GROUP_BYTES);
            b = b.add(64 * NV);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, acc_rv) in acc_r.iter().enumerate() {
                let p = t.c.wrapping_add(r * t.ldc + 16 * v);
                _mm512_mask_storeu_epi32(p, masks[v], *acc_rv);
            }
        }
    }
}

/// Largest of `row` (not empty).
#[target_feature(enable = "avx512f")]
fn row_max(row: &[i32]) -> i32 {
    // Four accumulators over whole groups of 64, then the masked rest.
    let mut acc = [_mm512_set1_epi32(i32::MIN); 4];
    let mut groups = row.chunks_exact(64);
    for g in &mut groups {
        for (q, a) in acc.iter_mut().enumerate() {
            // SAFETY: lanes 16 q .. 16 q + 16 of a 64-entry chunk are inside it.
            let v = unsafe { _mm512_loadu_epi32(g.as_ptr().add(16 * q)) };
            *a = _mm512_max_epi32(*a, v);
        }
    }
    let rest = groups.remainder();
    let mut mx = _mm512_max_epi32(
        _mm512_max_epi32(acc[0], acc[1]),
        _mm512_max_epi32(acc[2], acc[3]),
    );
    for i in (0..rest.len()).step_by(16) {
        let m = mask16((rest.len() - i).min(16));
        // SAFETY: only the lanes of `m`, all inside `rest`, are read.
        let v = unsafe { _mm512_mask_loadu_epi32(mx, m, rest.as_ptr().wrapping_add(i)) };
        mx = _mm512_max_epi32(mx, v);
    }
    _mm512_reduce_max_epi32(mx)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn lookup_perm(t: &[__m512i; 4], len: usize, idx: __m512i) -> __m512i {
    if len <= 64 {
        _mm512_permutexvar_epi8(idx, t[0])
    } else if len <= 128 {
        _mm512_permutex2var_epi8(t[0], idx, t[1])
    } else {
        let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
        let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
        _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi)
    }
}

/// `vpshufb` per 16-entry slice of the table (AVX-512 BW).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn lookup_shuf(t: &[__m512i; 16], chunks: usize, idx: __m512i) -> __m512i {
    let mut out = _mm512_setzero_si512();
    for (c, tc) in t.iter().enumerate().take(chunks) {
        // Bytes of this slice map to 0x70..=0x7f, all others to >= 0x80 (pshufb gives 0).
        let local = _mm512_sub_epi8(idx, _mm512_set1_epi8((16 * c) as i8));
        let sel = _mm512_adds_epu8(local, _mm512_set1_epi8(0x70));
        out = _mm512_or_si512(out, _mm512_shuffle_epi8(*tc, sel));
    }
    out
}

/// Loads 64 bytes of a 256-byte table.
#[inline]
#[target_feature(enable = "avx512f")]
fn load64(t: &[u8; 256], at: usize) -> __m512i {
    let s = &t[at..at + 64];
    // SAFETY: `s` holds 64 bytes.
    unsafe { _mm512_loadu_si512(s.as_ptr() as *const __m512i) }
}

/// Per-row values of the IndexSoftmax loop, as vectors.
struct RowConsts {
    max: __m512i,
    threshold: __m512i,
    scale: __m512d,
    bias: __m512d,
    scale_f: __m512,
    lo_f: __m512,
    hi_f: __m512,
    perm: __m512i,
}

/// Zeroes `e[valid..]`; for a row with kept entries, returns the loop constants.
#[inline]
#[target_feature(enable = "avx512f")]
fn row_setup(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> Option<RowConsts> {
    e[valid..].fill(0);
    if valid == 0 {
        return None;
    }
    let (scale, bias) = index_consts(lut, threshold);
    let (scale_f, lo_f, hi_f) = index_consts_f32(lut, threshold);
    Some(RowConsts {
        max: _mm512_set1_epi32(row_max(&row[..valid])),
        threshold: _mm512_set1_epi32(threshold),
        scale: _mm512_set1_pd(scale),
        bias: _mm512_set1_pd(bias),
        scale_f: _mm512_set1_ps(scale_f),
        lo_f: _mm512_set1_ps(lo_f),
        hi_f: _mm512_set1_ps(hi_f),
        // Byte order fix-up after the in-lane packs: dword 4 (t % 4) + t / 4 goes to slot t.
        perm: _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
    })
}

/// Table indices of the (up to) 64 scores at `src`, `rem` of them kept, as bytes in order:
/// the f32 screen of [`index_consts_f32`], and the f64 index of [`index_consts`] for the whole
/// group when any lane is undecided.
/// Safety: the first `min(rem, 64)` i32 at `src` must be readable.
///
/// # Safety
/// AVX-512 F/BW/VL must be available and the first `min(rem, 64)` scores at `src` readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn index_bytes64(src: *const i32, rem: usize, k: &RowConsts) -> __m512i {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        const FLOOR: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
        let mut idx = [_mm512_setzero_si512(); 4];
        let mut undecided = 0;
        for (q, iq) in idx.iter_mut().enumerate() {
            let m = mask16(rem.saturating_sub(16 * q).min(16));
            // Masked-off lanes are neither read nor used (their bytes are zeroed by the caller).
            let s = _mm512_maskz_loadu_epi32(m, src.wrapping_add(16 * q));
            // m - S wraps in i32 but is exact read as u32 (0 <= m - S < 2^32); min with T.
            let d = _mm512_cvtepi32_ps(_mm512_min_epu32(_mm512_sub_epi32(k.max, s), k.threshold));
            let lo = _mm512_cvt_roundps_epi32::<FLOOR>(_mm512_fmadd_ps(d, k.scale_f, k.lo_f));
            let hi = _mm512_cvt_roundps_epi32::<FLOOR>(_mm512_fmadd_ps(d, k.scale_f, k.hi_f));
            undecided |= _mm512_mask_cmpneq_epi32_mask(m, lo, hi);
            *iq = hi;
        }
        if undecided != 0 {
            idx = index_f64(src, rem, k);
        }
        let w01 = _mm512_packus_epi32(idx[0], idx[1]);
        let w23 = _mm512_packus_epi32(idx[2], idx[3]);
        _mm512_permutexvar_epi32(k.perm, _mm512_packus_epi16(w01, w23))
    }
}

/// The exact f64 index of [`index_consts`] for the (up to) 64 scores at `src`, as four
/// vectors of 16 i32. Safety: as [`index_bytes64`].
///
/// # Safety
/// AVX-512 F/BW/VL must be available and the first `min(rem, 64)` scores at `src` readable.
#[cold]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn index_f64(src: *const i32, rem: usize, k: &RowConsts) -> [__m512i; 4] {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let mut idx = [_mm512_setzero_si512(); 4];
        for (q, iq) in idx.iter_mut().enumerate() {
            let m = mask16(rem.saturating_sub(16 * q).min(16));
            let s = _mm512_maskz_loadu_epi32(m, src.wrapping_add(16 * q));
            let d = _mm512_min_epu32(_mm512_sub_epi32(k.max, s), k.threshold);
            let lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(d));
            let hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(d));
            let ilo = _mm512_cvttpd_epi32(_mm512_fmadd_pd(lo, k.scale, k.bias));
            let ihi = _mm512_cvttpd_epi32(_mm512_fmadd_pd(hi, k.scale, k.bias));
            *iq = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ilo), ihi);
        }
        idx
    }
}

/// Stores the kept bytes of `e` (the first `min(rem, 64)`) at `dst` and adds them to the
/// eight u64 lanes of `sum`. Safety: those bytes at `dst` must be writable.
///
/// # Safety
/// AVX-512 F/BW must be available and the first `min(rem, 64)` bytes at `dst` writable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn store_and_sum64(e: __m512i, rem: usize, dst: *mut u8, sum: __m512i) -> __m512i {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let keep = mask64(rem);
        let e = _mm512_maskz_mov_epi8(keep, e);
        _mm512_mask_storeu_epi8(dst as *mut i8, keep, e);
        _mm512_add_epi64(sum, _mm512_sad_epu8(e, _mm512_setzero_si512()))
    }
}

/// IndexSoftmax exponents for one row, 64 entries per step (the last one masked), with
/// `vpermb`/`vpermi2b` lookups.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and VBMI must be available; `row.len() == e.len()` and `valid <=
/// row.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn index_softmax_row_vbmi(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let Some(k) = row_setup(row, valid, lut, threshold, e) else {
            return 0;
        };
        let p = lut.padded();
        let t = [load64(p, 0), load64(p, 64), load64(p, 128), load64(p, 192)];
        let len = lut.entries().len();
        let mut sum = _mm512_setzero_si512();
        // Whole groups with the constant 64 (every mask folds away), then the masked rest.
        let full = valid / 64 * 64;
        for base in (0..full).step_by(64) {
            let idx = index_bytes64(row.as_ptr().add(base), 64, &k);
            let out = lookup_perm(&t, len, idx);
            sum = store_and_sum64(out, 64, e.as_mut_ptr().add(base), sum);
        }
        if full < valid {
            let idx = index_bytes64(row.as_ptr().add(full), valid - full, &k);
            let out = lookup_perm(&t, len, idx);
            sum = store_and_sum64(out, valid - full, e.as_mut_ptr().add(full), sum);
        }
        _mm512_reduce_add_epi64(sum) as u32
    }
}

/// The same with `vpshufb` lookups (AVX-512 BW without VBMI).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI must be available; `row.len() == e.len()` and `valid <= row.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn index_softmax_row_bw(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let Some(k) = row_setup(row, valid, lut, threshold, e) else {
            return 0;
        };
        let chunks = lut.entries().len().div_ceil(16);
        let mut t = [_mm512_setzero_si512(); 16];
        for (c, tc) in t.iter_mut().enumerate().take(chunks) {
            *tc = _mm512_broadcast_i32x4(_mm_loadu_si128(
                lut.padded()[16 * c..].as_ptr() as *const __m128i
            ));
        }
        let mut sum = _mm512_setzero_si512();
        // Whole groups with the constant 64 (every mask folds away), then the masked rest.
        let full = valid / 64 * 64;
        for base in (0..full).step_by(64) {
            let idx = index_bytes64(row.as_ptr().add(base), 64, &k);
            let out = lookup_shuf(&t, chunks, idx);
            sum = store_and_sum64(out, 64, e.as_mut_ptr().add(base), sum);
        }
        if full < valid {
            let idx = index_bytes64(row.as_ptr().add(full), valid - full, &k);
            let out = lookup_shuf(&t, chunks, idx);
            sum = store_and_sum64(out, valid - full, e.as_mut_ptr().add(full), sum);
        }
        _mm512_reduce_add_epi64(sum) as u32
    }
}

/// `p[i] = t[p[i]]` with `vpermi2b`, 64 bytes per step.
///
/// # Safety
/// AVX-512 F/BW and VBMI must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup256_vbmi(p: &mut [u8], t: &[u8; 256]) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let tabs = [load64(t, 0), load64(t, 64), load64(t, 128), load64(t, 192)];
        for base in (0..p.len()).step_by(64) {
            let m = mask64(p.len() - base);
            let ptr = p.as_mut_ptr().add(base) as *mut i8;
            let idx = _mm512_maskz_loadu_epi8(m, ptr);
            _mm512_mask_storeu_epi8(ptr, m, lookup_perm(&tabs, 256, idx));
        }
    }
}

/// `exp(x)` for `x <= 0` (NaN stays NaN), within about 2 ulp, including subnormal results.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp_nonpositive(x: __m512) -> __m512 {
    // Below -104 the result rounds to 0 anyway. max returns its second operand when either
    // is NaN, so NaN passes through.
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // Cody-Waite: ln 2 = HI + LO with HI short enough that n * HI is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    // Taylor series to degree 7 on |r| <= ln(2)/2: truncation error < 6e-9 relative.
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / c));
    }
    // vscalefps rounds once, so subnormal results are correctly rounded.
    _mm512_scalef_ps(p, n)
}

/// Float softmax over `row[..valid]`, zeros past it; the row sum is accumulated in f64.
///
/// # Safety
/// AVX-512 F must be available and `valid <= row.len()`.
#[target_feature(enable = "avx512f")]
unsafe fn softmax_f32_row(row: &mut [f32], valid: usize) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let (kept, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        if kept.is_empty() {
            return;
        }
        let len = kept.len();
        let ptr = kept.as_mut_ptr();
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..len).step_by(16) {
            let m = mask16((len - i).min(16));
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, m, ptr.add(i)));
        }
        let mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        let mut sum = _mm512_setzero_pd();
        for i in (0..len).step_by(16) {
            let m = mask16((len - i).min(16));
            let x = _mm512_maskz_loadu_ps(m, ptr.add(i));
            let v = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(x, mv)));
            _mm512_mask_storeu_ps(ptr.add(i), m, v);
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            )));
            sum = _mm512_add_pd(sum, _mm512_add_pd(lo, hi));
        }
        let inv = _mm512_set1_ps(1.0 / (_mm512_reduce_add_pd(sum) as f32));
        for i in (0..len).step_by(16) {
            let m = mask16((len - i).min(16));
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, ptr.add(i)), inv);
            _mm512_mask_storeu_ps(ptr.add(i), m, v);
        }
    }
}
