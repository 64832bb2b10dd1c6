//! The Armv8.0 Advanced SIMD kernel, and the row operations that all aarch64 kernels share
//! (IndexSoftmax, the Normalized finish, the f32 softmax): those need nothing past NEON.
//!
//! GEMM: both operands are widened to i16 and multiplied with `smlal`/`smlal2` by lane, which
//! is exact for every i8 and u8 value (a product of two i16 lands in i32; no intermediate i16
//! sum, so -128 * -128 + -128 * -128 cannot saturate as it would with `smull` + `smlal`).
//!
//! IndexSoftmax index: `idx = round_half_up(x)`, `x = D (N-1) / T`, `0 <= D <= T <= 2^30`,
//! `N - 1 <= 255`. We compute `p = fl(D * c)` in f64 with `c = fl(fl((N-1) / T) (1 + 2^-44))`
//! and round `p` to nearest with ties away from zero (`fcvtau`), which for `p >= 0` is
//! `floor(p + 1/2)`. Each of the three roundings is relative `2^-53`, so `p = x (1 + eta)` with
//! `2^-45 < eta < 2^-43`: `p` is never below `x`, and at most `256 * 2^-43 = 2^-35` above it.
//! If `x` is a tie (`k + 1/2`), `p` is strictly above it and below `k + 1 + 1/2`, so the result
//! is `k + 1`, as the contract's half-up rounding says. Otherwise `x + 1/2 = (2 D (N-1) + T) / (2T)` is
//! at least `1 / (2T) >= 2^-31` below the next integer, which the `2^-35` cannot reach. So the
//! result is the exact index of docs/numerics.md for every input; the tests probe both sides of every bucket
//! boundary.

use core::arch::aarch64::*;

use super::{drive, own_layout, pack_rows, Layout, MR, NR};
use crate::kernels::{KernelImpl, LayoutId, PackedB};
use crate::lut::Lut;
use crate::reference;

/// Proof that the CPU has Advanced SIMD (every Linux aarch64 CPU does, but we still ask).
pub struct Neon {
    _proof: (),
}

static NEON: Neon = Neon { _proof: () };

impl Neon {
    /// The kernel, if this CPU has NEON.
    pub fn new() -> Option<&'static Neon> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(&NEON)
    }
}

const NAME: &str = "neon";
const LAYOUT: Layout = Layout { kr: 1, k_step: 8 };
const LAYOUT_ID: LayoutId = LayoutId::Neon;

impl KernelImpl for Neon {
    shared_kernel_methods!();

    fn pack_k_into(&self, b: &[i8], n: usize, k: usize, out: &mut [i8]) {
        LAYOUT.pack_k(b, n, k, 0, out)
    }

    fn gemm_s8s8_packed(&self, a: &[i8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_s8s8_nt(a, b.data(), m, b.n(), b.k(), c);
        }
        let (k, kp) = (b.k(), LAYOUT.padded_k(b.k()));
        let strip = |i0, rows, s: &mut [i8]| {
            pack_rows(a, k, kp, i0, rows, s);
            [0; MR]
        };
        // SAFETY: NEON is present (we hold a `Neon`); `tile` reads MR * kp strip elements and
        // NR * kp panel bytes and writes one 8 x 8 tile, as `drive` requires.
        unsafe { drive(LAYOUT, m, b, c, strip, tile::<i8>) }
    }

    fn pack_v_into(&self, b: &[i8], k: usize, n: usize, out: &mut [i8]) {
        LAYOUT.pack_v(b, k, n, 0, out)
    }

    fn gemm_u8s8_packed(&self, a: &[u8], m: usize, b: &PackedB, c: &mut [i32]) {
        if !own_layout(b, LAYOUT_ID, LAYOUT) {
            return self.gemm_u8s8(a, b.data(), m, b.n(), b.k(), c);
        }
        let (k, kp) = (b.k(), LAYOUT.padded_k(b.k()));
        let strip = |i0, rows, s: &mut [u8]| {
            pack_rows(a, k, kp, i0, rows, s);
            [0; MR]
        };
        // SAFETY: as in `gemm_s8s8_packed`.
        unsafe { drive(LAYOUT, m, b, c, strip, tile::<u8>) }
    }
}

/// An A element type that widens exactly to i16.
trait WidenA: Copy + Default {
    /// Loads 8 elements and widens them.
    ///
    /// # Safety
    /// NEON must be available and `p..p + 8` readable.
    unsafe fn load8(p: *const Self) -> int16x8_t;
}

impl WidenA for i8 {
    /// # Safety
    /// NEON must be available and the 8 elements at `p` readable.
    #[inline(always)]
    unsafe fn load8(p: *const i8) -> int16x8_t {
        // SAFETY: the caller guarantees 8 readable bytes and NEON.
        unsafe { vmovl_s8(vld1_s8(p)) }
    }
}

impl WidenA for u8 {
    /// # Safety
    /// NEON must be available and the 8 elements at `p` readable.
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> int16x8_t {
        // SAFETY: as above; u8 values fit i16, so the reinterpretation keeps them.
        unsafe { vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p))) }
    }
}

/// The 8 x 8 micro-kernel: 8 depth values per step, each multiplies one widened B row (8
/// columns) by one lane of each of the 8 widened A rows.
///
/// # Safety
/// NEON must be available; `a` must hold `MR * kp` readable elements, `b` `NR * kp` readable bytes,
/// and `c` an 8 x 8 tile of writable values with row stride `ldc`.
#[target_feature(enable = "neon")]
unsafe fn tile<A: WidenA>(
    a: *const A,
    b: *const i8,
    kp: usize,
    corr: &[i32; MR],
    c: *mut i32,
    ldc: usize,
) {
    let mut acc = [[vdupq_n_s32(0); 2]; MR];
    let mut t = 0;
    while t < kp {
        let mut av = [vdupq_n_s16(0); MR];
        for (r, v) in av.iter_mut().enumerate() {
            // SAFETY: row r of the strip has kp >= t + 8 elements.
            *v = unsafe { A::load8(a.add(r * kp + t)) };
        }
        // SAFETY: the panel holds kp * NR bytes; these are depth t..t + 8.
        let (b01, b23, b45, b67) = unsafe {
            let p = b.add(t * NR);
            (
                vld1q_s8(p),
                vld1q_s8(p.add(16)),
                vld1q_s8(p.add(32)),
                vld1q_s8(p.add(48)),
            )
        };
        macro_rules! step {
            ($bv:expr, $lane:literal) => {{
                let bv: int16x8_t = $bv;
                for (acc, &a) in acc.iter_mut().zip(&av) {
                    acc[0] = vmlal_laneq_s16::<$lane>(acc[0], vget_low_s16(bv), a);
                    acc[1] = vmlal_high_laneq_s16::<$lane>(acc[1], bv, a);
                }
            }};
        }
        step!(vmovl_s8(vget_low_s8(b01)), 0);
        step!(vmovl_high_s8(b01), 1);
        step!(vmovl_s8(vget_low_s8(b23)), 2);
        step!(vmovl_high_s8(b23), 3);
        step!(vmovl_s8(vget_low_s8(b45)), 4);
        step!(vmovl_high_s8(b45), 5);
        step!(vmovl_s8(vget_low_s8(b67)), 6);
        step!(vmovl_high_s8(b67), 7);
        t += 8;
    }
    for r in 0..MR {
        let cr = vdupq_n_s32(corr[r]);
        // SAFETY: the caller provides an 8 x 8 destination with row stride ldc.
        unsafe {
            vst1q_s32(c.add(r * ldc), vsubq_s32(acc[r][0], cr));
            vst1q_s32(c.add(r * ldc + 4), vsubq_s32(acc[r][1], cr));
        }
    }
}

/// The 256-byte table as four 64-byte TBL operands.
#[derive(Clone, Copy)]
struct Table256 {
    parts: [uint8x16x4_t; 4],
    /// How many parts hold entries that can be looked up (indices below `64 * used`).
    used: usize,
}

impl Table256 {
    /// # Safety
    /// NEON must be available.
    #[inline(always)]
    unsafe fn load(t: &[u8; 256], entries: usize) -> Self {
        // SAFETY: each part reads 64 bytes inside the 256-byte array; NEON is present.
        let parts = unsafe {
            [
                vld1q_u8_x4(t.as_ptr()),
                vld1q_u8_x4(t.as_ptr().add(64)),
                vld1q_u8_x4(t.as_ptr().add(128)),
                vld1q_u8_x4(t.as_ptr().add(192)),
            ]
        };
        Table256 {
            parts,
            used: entries.div_ceil(64).clamp(1, 4),
        }
    }

    /// `t[idx]` for 16 indices: TBL on the first part, then TBX on the others with the index
    /// shifted down by 64 each time (out-of-range lanes keep what the earlier parts gave).
    ///
    /// # Safety
    /// NEON must be available.
    #[inline(always)]
    unsafe fn lookup(&self, idx: uint8x16_t) -> uint8x16_t {
        // SAFETY: NEON is available (this function's contract); only register operations follow.
        unsafe {
            let mut r = vqtbl4q_u8(self.parts[0], idx);
            for q in 1..self.used {
                r = vqtbx4q_u8(r, self.parts[q], vsubq_u8(idx, vdupq_n_u8(64 * q as u8)));
            }
            r
        }
    }

    /// [`Table256::lookup`] with the number of used parts fixed at compile time (`USED ==
    /// self.used`): no loop and no test per lookup, for the loops that run it per 16 scores.
    ///
    /// # Safety
    /// NEON must be available.
    #[inline(always)]
    unsafe fn lookup_n<const USED: usize>(&self, idx: uint8x16_t) -> uint8x16_t {
        debug_assert_eq!(USED, self.used);
        // SAFETY: NEON is available (this function's contract); only register operations follow.
        unsafe {
            let mut r = vqtbl4q_u8(self.parts[0], idx);
            if USED > 1 {
                r = vqtbx4q_u8(r, self.parts[1], vsubq_u8(idx, vdupq_n_u8(64)));
            }
            if USED > 2 {
                r = vqtbx4q_u8(r, self.parts[2], vsubq_u8(idx, vdupq_n_u8(128)));
            }
            if USED > 3 {
                r = vqtbx4q_u8(r, self.parts[3], vsubq_u8(idx, vdupq_n_u8(192)));
            }
            r
        }
    }
}

/// `max(row)` of a non-empty row.
///
/// # Safety
/// NEON must be available; `row` must not be empty.
#[target_feature(enable = "neon")]
unsafe fn max_i32(row: &[i32]) -> i32 {
    let mut mv = [vdupq_n_s32(i32::MIN); 4];
    let mut chunks = row.chunks_exact(16);
    for ch in &mut chunks {
        // SAFETY: the chunk has 16 elements.
        let v = unsafe { vld1q_s32_x4(ch.as_ptr()) };
        mv[0] = vmaxq_s32(mv[0], v.0);
        mv[1] = vmaxq_s32(mv[1], v.1);
        mv[2] = vmaxq_s32(mv[2], v.2);
        mv[3] = vmaxq_s32(mv[3], v.3);
    }
    let all = vmaxq_s32(vmaxq_s32(mv[0], mv[1]), vmaxq_s32(mv[2], mv[3]));
    chunks
        .remainder()
        .iter()
        .fold(vmaxvq_s32(all), |m, &s| m.max(s))
}

/// Exact table indices of 4 distances `0 <= D <= T` as the two f64 vectors `fcvtau` gives
/// (module docs): element `i` of `d` ends up in the low byte of u64 lane `i`.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn index4(d: int32x4_t, c: float64x2_t) -> [uint64x2_t; 2] {
    // SAFETY: NEON is available (this function's contract); only register operations follow.
    unsafe {
        let lo = vcvtq_f64_s64(vmovl_s32(vget_low_s32(d)));
        let hi = vcvtq_f64_s64(vmovl_high_s32(d));
        [
            vcvtaq_u64_f64(vmulq_f64(lo, c)),
            vcvtaq_u64_f64(vmulq_f64(hi, c)),
        ]
    }
}

/// The constants of one row's vector index pass (see [`index_softmax_row`]).
struct IndexPass {
    mv: int32x4_t,
    tv: int32x4_t,
    c: float64x2_t,
    table: Table256,
    pick_lo: uint8x16_t,
    pick_hi: uint8x16_t,
}

impl IndexPass {
    /// The table values of the whole 16-score chunks of `row` into `e`, with `USED` table
    /// parts; returns the partial sums and how many scores were done.
    ///
    /// # Safety
    /// NEON must be available, `USED == self.table.used`, and `e.len() >= row.len()`.
    #[target_feature(enable = "neon")]
    unsafe fn run<const USED: usize>(&self, row: &[i32], e: &mut [u8]) -> (uint32x4_t, usize) {
        // In registers for the whole loop (through `self` they were reloaded per chunk).
        let (mv, tv, c) = (self.mv, self.tv, self.c);
        let (table, pick_lo, pick_hi) = (self.table, self.pick_lo, self.pick_hi);
        let mut acc = vdupq_n_u32(0);
        let mut rows = row.chunks_exact(16);
        let mut outs = e.chunks_exact_mut(16);
        for (s, o) in (&mut rows).zip(&mut outs) {
            // SAFETY: the chunk has 16 elements; NEON is present (this function's contract).
            let sv = unsafe { vld1q_s32_x4(s.as_ptr()) };
            // m - S >= 0; saturating at i32::MAX changes nothing once clamped to T <= 2^30.
            let d = |v| vminq_s32(vqsubq_s32(mv, v), tv);
            // SAFETY: NEON is present.
            let (i0, i1, i2, i3) = unsafe {
                (
                    index4(d(sv.0), c),
                    index4(d(sv.1), c),
                    index4(d(sv.2), c),
                    index4(d(sv.3), c),
                )
            };
            let u8s = |a: [uint64x2_t; 2], b: [uint64x2_t; 2]| {
                uint8x16x4_t(
                    vreinterpretq_u8_u64(a[0]),
                    vreinterpretq_u8_u64(a[1]),
                    vreinterpretq_u8_u64(b[0]),
                    vreinterpretq_u8_u64(b[1]),
                )
            };
            let ib = vqtbx4q_u8(vqtbl4q_u8(u8s(i0, i1), pick_lo), u8s(i2, i3), pick_hi);
            // SAFETY: indices are <= N - 1 <= 255; USED is the table's part count.
            let ev = unsafe { table.lookup_n::<USED>(ib) };
            // SAFETY: the output chunk has 16 bytes.
            unsafe { vst1q_u8(o.as_mut_ptr(), ev) };
            acc = vpadalq_u16(acc, vpaddlq_u8(ev));
        }
        (acc, row.len() / 16 * 16)
    }
}

/// IndexSoftmax exponent pass, see [`KernelImpl::index_softmax_row`].
///
/// # Safety
/// NEON must be available, and the preconditions of
/// [`crate::kernels::KernelImpl::index_softmax_row`] must hold (`row.len() == e.len()`, `valid <=
/// row.len()`).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn index_softmax_row(
    row: &[i32],
    valid: usize,
    lut: &Lut,
    threshold: i32,
    e: &mut [u8],
) -> u32 {
    let (e, masked) = e.split_at_mut(valid);
    masked.fill(0);
    let row = &row[..valid];
    if valid == 0 {
        return 0;
    }
    // SAFETY: NEON is present (this function's contract).
    let m = unsafe { max_i32(row) };
    let table = unsafe { Table256::load(lut.padded(), lut.entries().len()) };
    let mv = vdupq_n_s32(m);
    let tv = vdupq_n_s32(threshold);
    let c = vdupq_n_f64(lut.max_index() as f64 / threshold as f64 * (1.0 + 2f64.powi(-44)));
    // Byte 0 of u64 lanes 0..8 of four vectors (table 0..64), then of the next four.
    let pick = |first: bool| {
        let mut ix = [0xffu8; 16];
        for (i, v) in ix.iter_mut().enumerate() {
            if (i < 8) == first {
                *v = 8 * (i % 8) as u8;
            }
        }
        // SAFETY: 16 bytes are read from a 16-byte array.
        unsafe { vld1q_u8(ix.as_ptr()) }
    };
    let (pick_lo, pick_hi) = (pick(true), pick(false));
    let pass = IndexPass {
        mv,
        tv,
        c,
        table,
        pick_lo,
        pick_hi,
    };
    // SAFETY: NEON is present; `table.used` is the pass's part count in every arm.
    let (acc, done) = unsafe {
        match table.used {
            1 => pass.run::<1>(row, e),
            2 => pass.run::<2>(row, e),
            3 => pass.run::<3>(row, e),
            _ => pass.run::<4>(row, e),
        }
    };
    let (rows, outs) = (&row[done..], &mut e[done..]);
    let entries = lut.entries();
    let mut sum = vaddvq_u32(acc);
    for (&s, o) in rows.iter().zip(outs) {
        let d = (m as i64 - s as i64).min(threshold as i64);
        let v = entries[reference::table_index(d, lut.max_index(), threshold)];
        *o = v;
        sum += v as u32;
    }
    sum
}

/// Normalized finish, see [`KernelImpl::normalize_row`]. Rows long enough to amortise it use a
/// 256-entry table of `(510 e + sum) / (2 sum)` built without divisions.
///
/// # Safety
/// NEON must be available, and `sum >= p[j]` for every `j`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn normalize_row(p: &mut [u8], sum: u32) {
    if sum == 0 {
        p.fill(0);
        return;
    }
    if p.len() < 64 {
        reference::normalize_row(p, sum);
        return;
    }
    // (510 e + s) = q (2 s) + r with 0 <= r < 2 s, stepped from e = 0 (q = 0, r = s); adding 510
    // adds (510 / 2s, 510 % 2s) and at most one carry. The `as u8` matches the reference's
    // truncation for values no valid row produces (e > sum).
    let s2 = 2 * sum as u64;
    let (dq, dr) = (510 / s2, 510 % s2);
    let (mut q, mut r) = (0u64, sum as u64);
    let mut t = [0u8; 256];
    for v in t.iter_mut() {
        *v = q as u8;
        q += dq;
        r += dr;
        if r >= s2 {
            r -= s2;
            q += 1;
        }
    }
    // SAFETY: NEON is present.
    let table = unsafe { Table256::load(&t, 256) };
    let mut chunks = p.chunks_exact_mut(16);
    for ch in &mut chunks {
        // SAFETY: the chunk has 16 bytes.
        unsafe {
            let v = vld1q_u8(ch.as_ptr());
            vst1q_u8(ch.as_mut_ptr(), table.lookup(v));
        }
    }
    for v in chunks.into_remainder() {
        *v = t[*v as usize];
    }
}

/// `exp(x)` for `x <= 0` (or NaN) within about 1 ulp, denormal results included: Cody-Waite
/// reduction `x = n ln2 + r`, the Cephes degree-6 polynomial for `exp(r)`, and `2^n` applied as
/// two normal factors so that only the final product rounds into the subnormal range.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn exp_nonpositive(x: float32x4_t) -> float32x4_t {
    // SAFETY: NEON is available (this function's contract); only register operations follow.
    unsafe {
        // Below this the result rounds to 0; clamping keeps n >= -150 (vmax/vmin keep NaN).
        let lo = vdupq_n_f32(-104.0);
        let xc = vminq_f32(vmaxq_f32(x, lo), vdupq_n_f32(0.0));
        let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(std::f32::consts::LOG2_E)));
        let r = vfmsq_f32(xc, n, vdupq_n_f32(0.693_359_4));
        let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
        let mut p = vdupq_n_f32(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            5.000_000_1e-1,
        ] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
        let ni = vcvtq_s32_f32(n);
        let n1 = vshrq_n_s32::<1>(ni);
        let n2 = vsubq_s32(ni, n1);
        let bias = vdupq_n_s32(127);
        let s1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
        let s2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
        let y = vmulq_f32(vmulq_f32(y, s1), s2);
        vbslq_f32(vcltq_f32(x, lo), vdupq_n_f32(0.0), y)
    }
}

/// Float softmax, see [`KernelImpl::softmax_f32_row`]. Same steps as the reference (max with
/// `f32::max`'s NaN rule, exp, sum, one reciprocal); the exp and the summation order differ.
///
/// # Safety
/// NEON must be available and `valid <= row.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax_f32_row(row: &mut [f32], valid: usize) {
    let (kept, masked) = row.split_at_mut(valid);
    masked.fill(0.0);
    if kept.is_empty() {
        return;
    }
    let mut mv = vdupq_n_f32(f32::NEG_INFINITY);
    let mut chunks = kept.chunks_exact(4);
    for ch in &mut chunks {
        // SAFETY: the chunk has 4 elements.
        mv = vmaxnmq_f32(mv, unsafe { vld1q_f32(ch.as_ptr()) });
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(vmaxnmvq_f32(mv), |m, &v| m.max(v));
    let mvec = vdupq_n_f32(m);
    let mut sums = [vdupq_n_f32(0.0); 2];
    let mut chunks = kept.chunks_exact_mut(8);
    for ch in &mut chunks {
        for (h, s) in sums.iter_mut().enumerate() {
            // SAFETY: the chunk has 8 elements; NEON is present.
            unsafe {
                let p = ch.as_mut_ptr().add(4 * h);
                let v = exp_nonpositive(vsubq_f32(vld1q_f32(p), mvec));
                vst1q_f32(p, v);
                *s = vaddq_f32(*s, v);
            }
        }
    }
    let rem = chunks.into_remainder();
    let mut tail = [f32::NEG_INFINITY; 8];
    tail[..rem.len()].copy_from_slice(rem);
    for (h, s) in sums.iter_mut().enumerate() {
        // SAFETY: `tail` has 8 elements; padding lanes give exp(-inf) = 0.
        unsafe {
            let p = tail.as_mut_ptr().add(4 * h);
            let v = exp_nonpositive(vsubq_f32(vld1q_f32(p), mvec));
            vst1q_f32(p, v);
            *s = vaddq_f32(*s, v);
        }
    }
    rem.copy_from_slice(&tail[..rem.len()]);
    let inv = 1.0 / vaddvq_f32(vaddq_f32(sums[0], sums[1]));
    let iv = vdupq_n_f32(inv);
    let mut chunks = kept.chunks_exact_mut(4);
    for ch in &mut chunks {
        // SAFETY: the chunk has 4 elements.
        unsafe { vst1q_f32(ch.as_mut_ptr(), vmulq_f32(vld1q_f32(ch.as_ptr()), iv)) };
    }
    for v in chunks.into_remainder() {
        *v *= inv;
    }
}
