//! The AVX2 (+FMA) kernel, `avx2`.
//!
//! GEMMs: both products widen their bytes to i16 at packing time and multiply with `vpmaddwd`
//! (two i16 products summed into an i32 lane). That is exact for every input: a lane sums at
//! most `2 * 255 * 128 = 65,280` in magnitude, and the i32 accumulators wrap only where the
//! true result would not fit i32, which the trait's depth limits exclude. The byte path
//! (`vpmaddubsw`) was not used: it saturates its i16 pair sums for u8 P x s8 V (`2 * 255 *
//! 127 > 32,767`, and IndexSoftmax produces 255 for every entry tied with the row max) and,
//! through the sign trick, for s8 x s8 with -128; made exact it needs as many instructions
//! per product as `vpmaddwd` + `vpaddd` (sign, maddubs, madd, add per 32 products against
//! madd, add per 16), so widening costs nothing in issue slots and needs no special cases.
//!
//! IndexSoftmax: the f32 screen of [`super::index_consts_f32`] in front of the exact f64 index
//! of [`super::index_consts`], then a `vpshufb` lookup per 16-entry slice of the table. Float softmax: a vectorized `exp` with f64 row sums.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{
    check_packed, index_consts, index_consts_f32, index_softmax_tail, interleave2_i16,
    normalize_table, run_tiles, ARows, Blocking, ColGroups, Tile, GROUP_BYTES,
};
use crate::kernels::{KernelImpl, LayoutId, PackedB};
use crate::lut::Lut;

const NAME: &str = "avx2";

/// Micro-tile: 6 rows x 16 columns (12 ymm accumulators, 2 B vectors, 1 broadcast).
const BL: Blocking = Blocking {
    mr: 6,
    nr: 16,
    kg: 2,
    kc: 256,
    mc: 32,
};

/// The AVX2 kernel. Only [`Avx2::detect`] creates one, after checking the CPU, so holding a
/// reference proves that AVX2 and FMA instructions may run.
pub struct Avx2 {
    _private: (),
}

impl Avx2 {
    pub fn detect() -> Option<&'static Avx2> {
        static K: OnceLock<Option<Avx2>> = OnceLock::new();
        K.get_or_init(|| {
            (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
                .then_some(Avx2 { _private: () })
        })
        .as_ref()
    }
}

/// A widened to i16, each row padded to whole pairs; returns the values and the row stride
/// in bytes.
fn widen_rows<T: Copy>(a: &[T], m: usize, k: usize, widen: impl Fn(T) -> i16) -> (Vec<i16>, usize) {
    assert_eq!(a.len(), m * k, "A must be m x k");
    let ldw = k.next_multiple_of(2);
    let mut w = vec![0i16; m * ldw];
    if k > 0 {
        for (dst, src) in w.chunks_exact_mut(ldw).zip(a.chunks_exact(k)) {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = widen(x);
            }
        }
    }
    (w, 2 * ldw)
}

fn i16_bytes(w: &[i16]) -> &[u8] {
    bytemuck::cast_slice(w)
}

impl KernelImpl for Avx2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn layout(&self) -> LayoutId {
        LayoutId::Avx2
    }

    gemms_via_packing!();

    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        BL.pack_b_cols(b, n, k, ColGroups::PairsI16, out)
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.layout() == LayoutId::Plain {
            return self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
        }
        check_packed(b, LayoutId::Avx2, &BL);
        let (w, lda) = widen_rows(a, m, b.k(), i16::from);
        self.run(i16_bytes(&w), lda, b, m, c);
    }

    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        BL.pack_b_rows(b, k, n, out, interleave2_i16)
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.layout() == LayoutId::Plain {
            return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
        }
        check_packed(b, LayoutId::Avx2, &BL);
        let (w, lda) = widen_rows(a, m, b.k(), i16::from);
        self.run(i16_bytes(&w), lda, b, m, c);
    }

    fn index_softmax_row(
        &self,
        row: &[i32],
        valid: usize,
        lut: &Lut,
        threshold: i32,
        e: &mut [u8],
    ) -> u32 {
        assert!(row.len() == e.len() && valid <= row.len());
        // SAFETY: `self` exists only if the CPU has AVX2 and FMA; lengths checked above.
        unsafe { index_softmax_row(row, valid, lut, threshold, e) }
    }

    fn normalize_row(&self, p: &mut [u8], sum: u32) {
        if sum == 0 {
            p.fill(0);
            return;
        }
        let t = normalize_table(sum);
        for v in p.iter_mut() {
            *v = t[*v as usize];
        }
    }

    fn softmax_f32_row(&self, row: &mut [f32], valid: usize) {
        assert!(valid <= row.len());
        // SAFETY: `self` exists only if the CPU has AVX2 and FMA; `valid` checked above.
        unsafe { softmax_f32_row(row, valid) }
    }
}

impl Avx2 {
    fn run(&self, a: &[u8], lda: usize, b: &PackedB, m: usize, c: &mut [i32]) {
        assert_eq!(c.len(), m * b.n(), "C must be m x n");
        let a = ARows { data: a, lda };
        run_tiles(&BL, a, b.data(), None, m, b.n(), b.k(), c, |t| {
            // SAFETY: `self` proves AVX2 support; `run_tiles` guarantees the tile's pointer
            // ranges (see `Tile`), and `rows <= BL.mr`.
            unsafe { micro_dispatch(t) }
        });
    }
}

/// # Safety
/// AVX2 and FMA must be available; the tile's pointers must cover what [`Tile`] says, with `t.rows
/// <= 6`.
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_dispatch(t: &Tile) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe { micro_by_rows!(micro, t) }
}

/// Lane mask selecting the first `lanes` of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_mask(lanes: usize) -> __m256i {
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), iota)
}

/// The first `lanes` (0 to 8) i32 at `p` as a vector, zero past them.
///
/// # Safety
/// AVX2 must be available and those `lanes` values readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_lanes(p: *const i32, lanes: usize) -> __m256i {
    // SAFETY: only the first `lanes` values are read (the caller's guarantee).
    unsafe {
        match lanes {
            8 => _mm256_loadu_si256(p as *const __m256i),
            0 => _mm256_setzero_si256(),
            l => _mm256_maskload_epi32(p, lane_mask(l)),
        }
    }
}

/// Stores the first `lanes` (0 to 8) i32 of `v` at `p`.
///
/// # Safety
/// AVX2 must be available and those `lanes` values writable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_lanes(p: *mut i32, lanes: usize, v: __m256i) {
    // SAFETY: only the first `lanes` values are written (the caller's guarantee).
    unsafe {
        match lanes {
            8 => _mm256_storeu_si256(p as *mut __m256i, v),
            0 => {}
            l => _mm256_maskstore_epi32(p, lane_mask(l), v),
        }
    }
}

/// The accumulators an `R x 16` tile of ymm registers starts from (two vectors of 8 i32 per
/// row): C itself when accumulating over depth blocks, else the row values, else zeros; and
/// how many lanes of each vector lie inside C.
///
/// # Safety
/// AVX2 must be available (call it from AVX2 code only); the tile's C rows (when accumulating) and row values must be
/// readable as [`Tile`] says.
// Always inlined (a call would pass the accumulators through memory), and without a
// target feature of its own: `#[inline(always)]` cannot carry one; it runs inside the AVX2
// micro-kernels.
#[inline(always)]
pub(super) unsafe fn tile_start<const R: usize>(t: &Tile) -> ([[__m256i; 2]; R], [usize; 2]) {
    // SAFETY: AVX2 is available (the caller's guarantee).
    let mut acc = [[unsafe { _mm256_setzero_si256() }; 2]; R];
    let lanes = [t.cols.min(8), t.cols.saturating_sub(8).min(8)];
    // SAFETY: the reads stay in the tile's C rows (`cols` lanes) and its R row values.
    unsafe {
        if t.accumulate {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                    *acc_rv = load_lanes(t.c.wrapping_add(r * t.ldc + 8 * v), lanes[v]);
                }
            }
        } else if !t.row_init.is_null() {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                *acc_r = [_mm256_set1_epi32(*t.row_init.add(r)); 2];
            }
        }
    }
    (acc, lanes)
}

/// Stores the accumulators of [`tile_start`]'s tile into its C rows, `lanes` of each vector.
///
/// # Safety
/// AVX2 must be available (call it from AVX2 code only); the tile's C rows must be writable
/// as [`Tile`] says.
// Always inlined (a call would pass the accumulators through memory), and without a
// target feature of its own: `#[inline(always)]` cannot carry one; it runs inside the AVX2
// micro-kernels.
#[inline(always)]
pub(super) unsafe fn tile_store<const R: usize>(
    t: &Tile,
    acc: &[[__m256i; 2]; R],
    lanes: [usize; 2],
) {
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, acc_rv) in acc_r.iter().enumerate() {
            // SAFETY: `lanes[v]` values of row r lie inside C (the caller's guarantee).
            unsafe { store_lanes(t.c.wrapping_add(r * t.ldc + 8 * v), lanes[v], *acc_rv) };
        }
    }
}

/// One `R x 16` tile: `R` rows of i16 pairs against one B panel (see [`Tile`]).
///
/// # Safety
/// AVX2 and FMA must be available; the tile's pointers must cover what [`Tile`] says.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro<const R: usize>(t: &Tile) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let (mut acc, lanes) = tile_start::<R>(t);
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.groups {
            let b0 = _mm256_loadu_si256(b as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(32) as *const __m256i);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32((a.add(r * t.lda) as *const i32).read_unaligned());
                acc_r[0] = _mm256_add_epi32(acc_r[0], _mm256_madd_epi16(av, b0));
                acc_r[1] = _mm256_add_epi32(acc_r[1], _mm256_madd_epi16(av, b1));
            }
            a = a.add(GROUP_BYTES);
            b = b.add(64);
        }
        tile_store(t, &acc, lanes);
    }
}

/// Largest of `row` (not empty).
#[target_feature(enable = "avx2")]
fn row_max(row: &[i32]) -> i32 {
    let mut chunks = row.chunks_exact(8);
    let mut mx = _mm256_set1_epi32(i32::MIN);
    for ch in &mut chunks {
        // SAFETY: `ch` holds 8 i32.
        let v = unsafe { _mm256_loadu_si256(ch.as_ptr() as *const __m256i) };
        mx = _mm256_max_epi32(mx, v);
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, mx) };
    let tail = chunks.remainder().iter().copied();
    lanes.into_iter().chain(tail).max().unwrap_or(i32::MIN)
}

/// IndexSoftmax exponents for one row, 32 entries per step (trait preconditions hold).
///
/// # Safety
/// AVX2 and FMA must be available; `row.len() == e.len()` and `valid <= row.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn index_softmax_row(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    e[valid..].fill(0);
    if valid == 0 {
        return 0;
    }
    // One loop per table size (2^b entries, b = 4..=8: 1 to 16 slices of 16), so that the
    // slices and their offsets stay in registers.
    // SAFETY: the caller's guarantees, passed on.
    unsafe {
        match lut.entries().len().div_ceil(16) {
            1 => index_softmax_body::<1>(row, valid, lut, threshold, e),
            2 => index_softmax_body::<2>(row, valid, lut, threshold, e),
            3 | 4 => index_softmax_body::<4>(row, valid, lut, threshold, e),
            5..=8 => index_softmax_body::<8>(row, valid, lut, threshold, e),
            _ => index_softmax_body::<16>(row, valid, lut, threshold, e),
        }
    }
}

/// [`index_softmax_row`] for a table of at most `16 C` entries (`valid > 0`); slices past
/// the table are zero and never selected.
///
/// # Safety
/// As [`index_softmax_row`], and `0 < valid`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn index_softmax_body<const C: usize>(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let max = row_max(&row[..valid]);
    let (scale, bias) = index_consts(lut, threshold);
    let chunks = lut.entries().len().div_ceil(16);
    let tables: [__m256i; C] = std::array::from_fn(|c| {
        if c < chunks {
            // SAFETY: the padded table holds 256 bytes, so slice c < 16 is inside it.
            _mm256_broadcastsi128_si256(unsafe {
                _mm_loadu_si128(lut.padded()[16 * c..].as_ptr() as *const __m128i)
            })
        } else {
            _mm256_setzero_si256()
        }
    });
    let offsets: [__m256i; C] = std::array::from_fn(|c| _mm256_set1_epi8((16 * c) as i8));
    let mv = _mm256_set1_epi32(max);
    let tv = _mm256_set1_epi32(threshold);
    let (sv, bv) = (_mm256_set1_pd(scale), _mm256_set1_pd(bias));
    // Eight table indices (as two vectors of four i32) for eight scores.
    let index8 = |s: __m256i| {
        // m - S wraps in i32 but is exact read as u32 (0 <= m - S < 2^32); min with T.
        let d = _mm256_min_epu32(_mm256_sub_epi32(mv, s), tv);
        let lo = _mm256_cvtepi32_pd(_mm256_castsi256_si128(d));
        let hi = _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(d));
        (
            _mm256_cvttpd_epi32(_mm256_fmadd_pd(lo, sv, bv)),
            _mm256_cvttpd_epi32(_mm256_fmadd_pd(hi, sv, bv)),
        )
    };
    // SAFETY: called only with `p` at 16 readable scores (the loop below).
    let bytes16 = |p: *const i32| unsafe {
        let (a0, a1) = index8(_mm256_loadu_si256(p as *const __m256i));
        let (b0, b1) = index8(_mm256_loadu_si256(p.add(8) as *const __m256i));
        _mm_packus_epi16(_mm_packs_epi32(a0, a1), _mm_packs_epi32(b0, b1))
    };
    // The f32 screen of `index_consts_f32`: a lane is decided when no integer lies in
    // (y_lo, y_hi], i.e. when floor(y_hi) <= y_lo (then floor(y_lo) = floor(y_hi), as
    // y_lo <= y_hi); a group of 32 with any undecided lane takes the exact f64 path above.
    let (scale_f, lo_f, hi_f) = index_consts_f32(lut, threshold);
    let (sf, lof, hif) = (
        _mm256_set1_ps(scale_f),
        _mm256_set1_ps(lo_f),
        _mm256_set1_ps(hi_f),
    );
    let screen8 = |s: __m256i| {
        let d = _mm256_cvtepi32_ps(_mm256_min_epu32(_mm256_sub_epi32(mv, s), tv));
        let ylo = _mm256_fmadd_ps(d, sf, lof);
        let fhi = _mm256_floor_ps(_mm256_fmadd_ps(d, sf, hif));
        (
            _mm256_cvttps_epi32(fhi),
            _mm256_cmp_ps::<_CMP_LE_OQ>(fhi, ylo),
        )
    };
    // Dword order after the in-lane packs of four vectors: slot t holds dword 4 (t % 2) + t / 2.
    let unpack = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // SAFETY: called only with `p` at 32 readable scores (the loop below).
    let screen32 = |p: *const i32| unsafe {
        let v: [(__m256i, __m256); 4] =
            std::array::from_fn(|q| screen8(_mm256_loadu_si256(p.add(8 * q) as *const __m256i)));
        let decided = _mm256_and_ps(_mm256_and_ps(v[0].1, v[1].1), _mm256_and_ps(v[2].1, v[3].1));
        let w01 = _mm256_packs_epi32(v[0].0, v[1].0);
        let w23 = _mm256_packs_epi32(v[2].0, v[3].0);
        let idx = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w01, w23), unpack);
        (idx, _mm256_movemask_ps(decided) == 0xff)
    };
    let zero = _mm256_setzero_si256();
    let mut sum = zero;
    let full = valid / 32 * 32;
    for base in (0..full).step_by(32) {
        // SAFETY: base + 32 <= valid <= row.len() == e.len(): 32 scores are read from `row`
        // and 32 bytes written to `e` at `base`.
        unsafe {
            let p = row.as_ptr().add(base);
            let idx = match screen32(p) {
                (idx, true) => idx,
                _ => _mm256_set_m128i(bytes16(p.add(16)), bytes16(p)),
            };
            let mut out = zero;
            for (t, off) in tables.iter().zip(&offsets) {
                // Bytes of this slice map to 0x70..=0x7f, all others to >= 0x80 (pshufb
                // gives 0).
                let local = _mm256_sub_epi8(idx, *off);
                let sel = _mm256_adds_epu8(local, _mm256_set1_epi8(0x70));
                out = _mm256_or_si256(out, _mm256_shuffle_epi8(*t, sel));
            }
            _mm256_storeu_si256(e.as_mut_ptr().add(base) as *mut __m256i, out);
            sum = _mm256_add_epi64(sum, _mm256_sad_epu8(out, zero));
        }
    }
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` holds 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum) };
    let vec_sum = lanes.iter().sum::<u64>() as u32;
    vec_sum + index_softmax_tail(row, full, valid, max, lut, threshold, e)
}

/// `exp(x)` for `x <= 0` (NaN stays NaN), within about 2 ulp, including subnormal results.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp_nonpositive(x: __m256) -> __m256 {
    // Below -104 the result rounds to 0 anyway; clamping keeps 2^n representable.
    // max returns its second operand when either is NaN, so NaN passes through.
    let x = _mm256_max_ps(_mm256_set1_ps(-104.0), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // Cody-Waite: ln 2 = HI + LO with HI short enough that n * HI is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    // Taylor series to degree 7 on |r| <= ln(2)/2: truncation error < 6e-9 relative.
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / c));
    }
    // 2^n for n in [-150, 0] as two normal factors so that subnormal results round once.
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let pow2 = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    };
    _mm256_mul_ps(_mm256_mul_ps(p, pow2(n1)), pow2(n2))
}

/// Float softmax over `row[..valid]`, zeros past it; the row sum is accumulated in f64.
///
/// # Safety
/// AVX2 and FMA must be available; `valid <= row.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_f32_row(row: &mut [f32], valid: usize) {
    // SAFETY: the caller guarantees this function's contract; every access stays in its ranges.
    unsafe {
        let (kept, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        if kept.is_empty() {
            return;
        }
        let full = kept.len() / 8 * 8;
        let tail = kept.len() - full;
        let tail_mask = lane_mask(tail);
        let ptr = kept.as_mut_ptr();
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            mx = _mm256_max_ps(mx, _mm256_loadu_ps(ptr.add(i)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), mx);
        let m = lanes
            .iter()
            .chain(&kept[full..])
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mv = _mm256_set1_ps(m);
        let mut sum = _mm256_setzero_pd();
        let mut add = |v: __m256| {
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
        };
        for i in (0..full).step_by(8) {
            let v = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), mv));
            _mm256_storeu_ps(ptr.add(i), v);
            add(v);
        }
        if tail > 0 {
            let x = _mm256_maskload_ps(ptr.add(full), tail_mask);
            let v = exp_nonpositive(_mm256_sub_ps(x, mv));
            let v = _mm256_and_ps(v, _mm256_castsi256_ps(tail_mask));
            _mm256_maskstore_ps(ptr.add(full), tail_mask, v);
            add(v);
        }
        let mut s = [0f64; 4];
        _mm256_storeu_pd(s.as_mut_ptr(), sum);
        let inv = _mm256_set1_ps(1.0 / (s.iter().sum::<f64>() as f32));
        for i in (0..full).step_by(8) {
            _mm256_storeu_ps(ptr.add(i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(i)), inv));
        }
        if tail > 0 {
            let v = _mm256_mul_ps(_mm256_maskload_ps(ptr.add(full), tail_mask), inv);
            _mm256_maskstore_ps(ptr.add(full), tail_mask, v);
        }
    }
}
