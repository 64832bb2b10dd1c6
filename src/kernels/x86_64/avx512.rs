//! The AVX-512 kernels, `avx512vnni` (F, BW, VL, VNNI) and `avx512vbmi` (the same plus VBMI).
//!
//! GEMMs use `vpdpbusd`, which adds four u8 x s8 products into each i32 lane without any
//! intermediate saturation (its lanes wrap like the i32 accumulators, and only where the true
//! result would not fit i32, which the trait's depth limits exclude):
//! - P x V is u8 x s8 already: exact as is.
//! - Q x K^T is s8 x s8: Q is packed as `q + 128` (u8), and every column starts from
//!   `-128 * sum_t K[j][t]`, computed once when K is packed, so
//!   `sum (q + 128) k - 128 sum k = sum q k` for every i8 value, -128 included.
//!
//! IndexSoftmax: the exact f64 index of [`super::index_consts`]; the table lookup is one or two
//! `vpermb`/`vpermi2b` with VBMI, else a `vpshufb` per 16-entry slice of the table. The
//! Normalized finish looks up a 256-byte result table the same way (VBMI) or in scalar code.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{check_packed, index_consts, normalize_table, run_tiles, Blocking, Tile};
use crate::kernels::{Kernel, PackedB};
use crate::softmax::Lut;

const VNNI: &str = "avx512vnni";
const VBMI: &str = "avx512vbmi";
/// Both kernels pack the same way, so either may read the other's operands.
const LAYOUTS: [&str; 2] = [VNNI, VBMI];

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

    fn run(&self, pa: &[u8], b: &PackedB, m: usize, c: &mut [i32]) {
        assert_eq!(c.len(), m * b.n, "C must be m x n");
        let init = (!b.sums.is_empty()).then_some(&b.sums[..]);
        run_tiles(&BL, pa, &b.data, init, m, b.n, b.k, c, |t| {
            // SAFETY: `self` proves AVX-512 F/BW/VNNI support; `run_tiles` guarantees the
            // tile's pointer ranges (see `Tile`), and `rows <= BL.mr`.
            unsafe { micro_dispatch(t) }
        });
    }
}

/// The 4 bytes of depth `4g..4g + 4` of one row or column, zero past `k`.
fn put_group(dst: &mut [u8], k: usize, g: usize, at: impl Fn(usize) -> u8) {
    for (i, d) in dst.iter_mut().enumerate() {
        let t = 4 * g + i;
        *d = if t < k { at(t) } else { 0 };
    }
}

impl Kernel for Avx512 {
    fn name(&self) -> &'static str {
        if self.vbmi {
            VBMI
        } else {
            VNNI
        }
    }

    fn gemm_s8s8_nt(&self, a: &[i8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        let packed = self.pack_k(b, n, k);
        self.gemm_s8s8_packed(a, m, &packed, c);
    }

    fn gemm_u8s8(&self, a: &[u8], b: &[i8], m: usize, n: usize, k: usize, c: &mut [i32]) {
        let packed = self.pack_v(b, k, n);
        self.gemm_u8s8_packed(a, m, &packed, c);
    }

    fn pack_k(&self, b: &[i8], n: usize, k: usize) -> PackedB {
        assert_eq!(b.len(), n * k, "pack_k: K must be n x k");
        let data = BL.pack_b(n, k, |j, g, dst| {
            put_group(dst, k, g, |t| b[j * k + t] as u8)
        });
        // Column corrections for Q packed as q + 128. |sum| <= 128 k, so 128 |sum| fits i32
        // for k <= MAX_K_S8S8.
        let mut sums = vec![0i32; BL.panels(n) * BL.nr];
        for (j, s) in sums.iter_mut().enumerate().take(n) {
            let col: i32 = b[j * k..(j + 1) * k].iter().map(|&x| x as i32).sum();
            *s = col.wrapping_mul(-128);
        }
        PackedB {
            data,
            sums,
            n,
            k,
            packed_by: self.name(),
        }
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.packed_by == "plain" {
            return self.gemm_s8s8_nt(a, &b.data, m, b.n, b.k, c);
        }
        check_packed(b, &LAYOUTS, &BL, true);
        let k = b.k;
        assert_eq!(a.len(), m * k, "gemm_s8s8_packed: A must be m x k");
        // q + 128 as u8 is q's bit pattern with the sign bit flipped.
        let pa = BL.pack_a(m, k, |r, g, dst| {
            put_group(dst, k, g, |t| a[r * k + t] as u8 ^ 0x80)
        });
        self.run(&pa, b, m, c);
    }

    fn pack_v(&self, b: &[i8], k: usize, n: usize) -> PackedB {
        assert_eq!(b.len(), k * n, "pack_v: V must be k x n");
        PackedB {
            data: BL.pack_b(n, k, |j, g, dst| {
                put_group(dst, k, g, |t| b[t * n + j] as u8)
            }),
            sums: Vec::new(),
            n,
            k,
            packed_by: self.name(),
        }
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if b.packed_by == "plain" {
            return self.gemm_u8s8(a, &b.data, m, b.n, b.k, c);
        }
        check_packed(b, &LAYOUTS, &BL, false);
        assert!(b.sums.is_empty(), "gemm_u8s8_packed: V packed by pack_k");
        let k = b.k;
        assert_eq!(a.len(), m * k, "gemm_u8s8_packed: A must be m x k");
        let pa = BL.pack_a(m, k, |r, g, dst| put_group(dst, k, g, |t| a[r * k + t]));
        self.run(&pa, b, m, c);
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro_dispatch(t: &Tile) {
    match t.rows {
        6 => micro::<6>(t),
        5 => micro::<5>(t),
        4 => micro::<4>(t),
        3 => micro::<3>(t),
        2 => micro::<2>(t),
        _ => micro::<1>(t),
    }
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

/// One `R x 64` tile: `R` rows of packed u8 groups against one s8 B panel (see [`Tile`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn micro<const R: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_si512(); NV]; R];
    let masks: [__mmask16; NV] =
        std::array::from_fn(|v| mask16(t.cols.saturating_sub(16 * v).min(16)));
    let base: Option<(*const i32, usize)> = if t.accumulate {
        Some((t.c as *const i32, t.ldc))
    } else if !t.init.is_null() {
        Some((t.init, 0))
    } else {
        None
    };
    if let Some((src, ld)) = base {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                // Masked-off lanes are not read, so a pointer past C's last column is fine.
                let p = src.wrapping_add(r * ld + 16 * v);
                *acc_rv = _mm512_maskz_loadu_epi32(masks[v], p);
            }
        }
    }
    let (mut a, mut b) = (t.a, t.b);
    for _ in 0..t.groups {
        let bv: [__m512i; NV] =
            std::array::from_fn(|v| _mm512_loadu_si512(b.add(64 * v) as *const __m512i));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(4 * r) as *const i32).read_unaligned());
            for v in 0..NV {
                acc_r[v] = _mm512_dpbusd_epi32(acc_r[v], av, bv[v]);
            }
        }
        a = a.add(t.a_stride);
        b = b.add(64 * NV);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, acc_rv) in acc_r.iter().enumerate() {
            let p = t.c.wrapping_add(r * t.ldc + 16 * v);
            _mm512_mask_storeu_epi32(p, masks[v], *acc_rv);
        }
    }
}

/// Largest of `row` (not empty).
#[target_feature(enable = "avx512f")]
fn row_max(row: &[i32]) -> i32 {
    let mut mx = _mm512_set1_epi32(i32::MIN);
    for i in (0..row.len()).step_by(16) {
        let m = mask16((row.len() - i).min(16));
        // SAFETY: only the lanes of `m`, all inside `row`, are read.
        let v = unsafe { _mm512_mask_loadu_epi32(mx, m, row.as_ptr().wrapping_add(i)) };
        mx = _mm512_max_epi32(mx, v);
    }
    _mm512_reduce_max_epi32(mx)
}

/// How a kernel maps 64 table indices (bytes) to 64 table entries.
trait Lookup {
    /// Safety: the CPU must have the features of the implementation.
    unsafe fn lookup(&self, idx: __m512i) -> __m512i;
}

/// `vpermb` / `vpermi2b` on up to four 64-byte slices of the table.
struct PermLookup {
    t: [__m512i; 4],
    len: usize,
}

impl Lookup for PermLookup {
    #[inline(always)]
    unsafe fn lookup(&self, idx: __m512i) -> __m512i {
        lookup_perm(&self.t, self.len, idx)
    }
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
struct ShufLookup {
    t: [__m512i; 16],
    chunks: usize,
}

impl Lookup for ShufLookup {
    #[inline(always)]
    unsafe fn lookup(&self, idx: __m512i) -> __m512i {
        lookup_shuf(&self.t, self.chunks, idx)
    }
}

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

/// Loads 64 bytes of a 256-byte table starting at `16 * c * ...`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load64(t: &[u8; 256], at: usize) -> __m512i {
    let s = &t[at..at + 64];
    // SAFETY: `s` holds 64 bytes.
    unsafe { _mm512_loadu_si512(s.as_ptr() as *const __m512i) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn index_softmax_row_vbmi(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let p = lut.padded();
    let look = PermLookup {
        t: [load64(p, 0), load64(p, 64), load64(p, 128), load64(p, 192)],
        len: lut.entries().len(),
    };
    index_softmax_body(row, valid, lut, threshold, e, &look)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn index_softmax_row_bw(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let chunks = lut.entries().len().div_ceil(16);
    let mut t = [_mm512_setzero_si512(); 16];
    for (c, tc) in t.iter_mut().enumerate().take(chunks) {
        *tc = _mm512_broadcast_i32x4(_mm_loadu_si128(
            lut.padded()[16 * c..].as_ptr() as *const __m128i
        ));
    }
    index_softmax_body(row, valid, lut, threshold, e, &ShufLookup { t, chunks })
}

/// IndexSoftmax exponents for one row, 64 entries per step, the last step masked. Inlined
/// into the two entry points above so that it is compiled with their features.
#[inline(always)]
unsafe fn index_softmax_body<L: Lookup>(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
    look: &L,
) -> u32 {
    e[valid..].fill(0);
    if valid == 0 {
        return 0;
    }
    let max = row_max(&row[..valid]);
    let (scale, bias) = index_consts(lut, threshold);
    let mv = _mm512_set1_epi32(max);
    let tv = _mm512_set1_epi32(threshold);
    let (sv, bv) = (_mm512_set1_pd(scale), _mm512_set1_pd(bias));
    // Byte order fix-up after the in-lane packs: dword 4 * (t % 4) + t / 4 goes to slot t.
    let perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let zero = _mm512_setzero_si512();
    let mut sum = zero;
    let src = row.as_ptr();
    for base in (0..valid).step_by(64) {
        let rem = valid - base;
        let idx: [__m512i; 4] = std::array::from_fn(|q| {
            let m = mask16(rem.saturating_sub(16 * q).min(16));
            // Masked-off lanes are neither read nor used (their bytes are zeroed below).
            let s = _mm512_maskz_loadu_epi32(m, src.wrapping_add(base + 16 * q));
            // m - S wraps in i32 but is exact read as u32 (0 <= m - S < 2^32); min with T.
            let d = _mm512_min_epu32(_mm512_sub_epi32(mv, s), tv);
            let lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(d));
            let hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(d));
            let ilo = _mm512_cvttpd_epi32(_mm512_fmadd_pd(lo, sv, bv));
            let ihi = _mm512_cvttpd_epi32(_mm512_fmadd_pd(hi, sv, bv));
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ilo), ihi)
        });
        let w01 = _mm512_packus_epi32(idx[0], idx[1]);
        let w23 = _mm512_packus_epi32(idx[2], idx[3]);
        let bytes = _mm512_permutexvar_epi32(perm, _mm512_packus_epi16(w01, w23));
        let keep = mask64(rem);
        let out = _mm512_maskz_mov_epi8(keep, look.lookup(bytes));
        _mm512_mask_storeu_epi8(e.as_mut_ptr().add(base) as *mut i8, keep, out);
        sum = _mm512_add_epi64(sum, _mm512_sad_epu8(out, zero));
    }
    _mm512_reduce_add_epi64(sum) as u32
}

/// `p[i] = t[p[i]]` with `vpermi2b`, 64 bytes per step.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup256_vbmi(p: &mut [u8], t: &[u8; 256]) {
    let tabs = [load64(t, 0), load64(t, 64), load64(t, 128), load64(t, 192)];
    for base in (0..p.len()).step_by(64) {
        let m = mask64(p.len() - base);
        let ptr = p.as_mut_ptr().add(base) as *mut i8;
        let idx = _mm512_maskz_loadu_epi8(m, ptr);
        _mm512_mask_storeu_epi8(ptr, m, lookup_perm(&tabs, 256, idx));
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
#[target_feature(enable = "avx512f")]
unsafe fn softmax_f32_row(row: &mut [f32], valid: usize) {
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
