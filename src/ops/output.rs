//! Output conversion (docs/numerics.md, section 4): `O = O32 s_v / divisor` rounded once to
//! f32. A two-operation f64 fast path decides almost every entry; the rest take the exact
//! integer rounding of [`crate::rounding`]. Both give the same bits.

use crate::rounding::output_exact;

/// One output row from its exact O32 row (i32 or i64) and divisor (0 for a fully masked row):
/// docs/numerics.md section 4, correctly rounded: the bits of [`output_exact`].
///
/// Eight entries at a time go through [`dequantize_output_fast`]'s arithmetic
/// without branches (so the compiler vectorises it, with AVX2 or AVX-512 where the CPU has
/// them, see [`crate::simd`]); a group where any entry needs the exact path (about one in 10^7
/// for random data, or an O32 past 2^53) is redone entry by entry.
pub(crate) fn output_row<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32]) {
    output_row_at(crate::simd::level(), o32, divisor, v_scale, out)
}

/// One output row whose columns have their own V scales (`v_scales[c]`, per-channel V) and
/// optionally a mean to add back (`v_mean[c]`, smoothed V): entry `c` is
/// `fl32(fl32(O32[c] * v_scales[c] / divisor) + v_mean[c])` (docs/numerics.md section 6), the
/// first rounding exact as in [`output_row`]. `v_scales` of length 1 is one scale for every
/// column; an empty `v_mean` adds nothing, and neither does a fully masked row (divisor 0).
pub(crate) fn output_row_channels<T: O32>(
    o32: &[T],
    divisor: u32,
    v_scales: &[f32],
    v_mean: &[f32],
    out: &mut [f32],
) {
    if v_scales.len() != 1 {
        // The mean goes in with the conversion (one pass over the row).
        return channels_at(crate::simd::level(), o32, divisor, v_scales, v_mean, out);
    }
    output_row(o32, divisor, v_scales[0], out);
    // A row that saw no key stays zero (section 2): its weights do not sum to one.
    if divisor != 0 && !v_mean.is_empty() {
        for (o, &m) in out.iter_mut().zip(v_mean) {
            *o += m;
        }
    }
}

crate::simd::dispatch! {
    /// [`channels_body`] compiled for a given [`crate::simd::Level`].
    fn channels_at<T: O32>(
        o32: &[T],
        divisor: u32,
        v_scales: &[f32],
        v_mean: &[f32],
        out: &mut [f32]
    ) => channels_body
}

/// [`channels_rows`] with the mean (when there is one) as a compile-time choice.
#[inline(always)]
fn channels_body<T: O32>(
    o32: &[T],
    divisor: u32,
    v_scales: &[f32],
    v_mean: &[f32],
    out: &mut [f32],
) {
    if v_mean.is_empty() {
        channels_rows(o32, divisor, v_scales, None, out)
    } else {
        channels_rows(o32, divisor, v_scales, Some(v_mean), out)
    }
}

/// Per-channel scales: `q = fl64(fl64(O32 * s_c) * fl64(1 / divisor))`, three roundings of
/// at most 2^-53 each, so `q` is within 3 f64 ulps of the exact quotient: inside the window
/// of 16 ulps around the f32 halfway points that [`output_row`]'s check declines, so the same
/// check (per entry, in integer lanes) proves the rounding to f32 correct; the rest take
/// [`output_exact`]. One division per row instead of one per channel. With `mean`, each entry
/// then gets `mean[c]` added in f32 (the second rounding of section 6), in the same pass.
#[inline(always)]
fn channels_rows<T: O32>(
    o32: &[T],
    divisor: u32,
    v_scales: &[f32],
    mean: Option<&[f32]>,
    out: &mut [f32],
) {
    const GROUP: usize = 8;
    if divisor == 0 {
        // A row that saw no key stays zero (section 2), mean or not.
        out.fill(0.0);
        return;
    }
    let inv = 1.0 / divisor as f64;
    let one = |o: &mut f32, x: T, s: f32| {
        let x: i64 = x.into();
        *o = output_exact(x, s, divisor);
    };
    let zeros = [0f32; GROUP];
    let mut outs = out.chunks_exact_mut(GROUP);
    let mut ins = o32.chunks_exact(GROUP);
    let mut scales = v_scales.chunks_exact(GROUP);
    let mut means = mean.unwrap_or(&[]).chunks_exact(GROUP);
    for ((o, x), s) in (&mut outs).zip(&mut ins).zip(&mut scales) {
        let x: [T; GROUP] = x.try_into().expect("group");
        let s: &[f32; GROUP] = s.try_into().expect("group");
        let o: &mut [f32; GROUP] = o.try_into().expect("group");
        let m: &[f32; GROUP] = match mean {
            Some(_) => means
                .next()
                .expect("a mean per column")
                .try_into()
                .expect("group"),
            None => &zeros,
        };
        let mut bad = 0u64;
        for ((o, &x), &s) in o.iter_mut().zip(&x).zip(s) {
            let q = (x.to_f64() * s as f64) * inv;
            // A zero product (x or s zero) is exact: +0.0, as output_exact gives.
            bad |= undecided(x, q);
            *o = q as f32 + 0.0;
        }
        if bad != 0 {
            for ((o, &x), &s) in o.iter_mut().zip(&x).zip(s) {
                one(o, x, s);
            }
        }
        if mean.is_some() {
            for (o, &m) in o.iter_mut().zip(m) {
                *o += m;
            }
        }
    }
    let rest_means = means.remainder();
    for (c, ((o, &x), &s)) in outs
        .into_remainder()
        .iter_mut()
        .zip(ins.remainder())
        .zip(scales.remainder())
        .enumerate()
    {
        one(o, x, s);
        if mean.is_some() {
            *o += rest_means[c];
        }
    }
}

/// An exact P x V result entry: i32 (one key chunk) or i64 (chunks summed).
pub(crate) trait O32: Copy + Into<i64> {
    /// The value as f64: exact below 2^53 (every i32), rounded above (the caller's range
    /// check sends those to the exact path). i32 converts directly, which vectorises where
    /// an i64 conversion does not (AVX2 and NEON have no packed i64 -> f64 instruction).
    fn to_f64(self) -> f64;
    /// `|x| >= 2^53`, where the f64 path cannot be used.
    fn past_f64(self) -> bool;
}
impl O32 for i32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn past_f64(self) -> bool {
        false
    }
}
impl O32 for i64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn past_f64(self) -> bool {
        self.unsigned_abs() >= 1 << 53
    }
}

crate::simd::dispatch! {
    /// [`output_row`] compiled for a given [`crate::simd::Level`].
    pub(crate) fn output_row_at<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32])
        => output_row_body
}

#[inline(always)]
fn output_row_body<T: O32>(o32: &[T], divisor: u32, v_scale: f32, out: &mut [f32]) {
    const GROUP: usize = 8;
    let factor = row_factor(v_scale, divisor);
    let one = |o: &mut f32, x: T| {
        let x: i64 = x.into();
        *o = dequantize_output_fast(x, factor).unwrap_or_else(|| output_exact(x, v_scale, divisor));
    };
    if factor == 0.0 {
        out.fill(0.0);
        return;
    }
    let mut outs = out.chunks_exact_mut(GROUP);
    let mut ins = o32.chunks_exact(GROUP);
    for (o, x) in (&mut outs).zip(&mut ins) {
        let x: [T; GROUP] = x.try_into().expect("group");
        let o: &mut [f32; GROUP] = o.try_into().expect("group");
        let mut bad = 0u64;
        for (o, &x) in o.iter_mut().zip(&x) {
            let q = x.to_f64() * factor;
            // A zero entry gives q = +0.0 or -0.0; the exact value is +0.0 (see below).
            bad |= undecided(x, q);
            *o = q as f32;
        }
        if bad != 0 {
            for (o, &x) in o.iter_mut().zip(&x) {
                one(o, x);
            }
        }
    }
    for (o, &x) in outs.into_remainder().iter_mut().zip(ins.remainder()) {
        one(o, x);
    }
}

/// 1 where the f64 estimate `q` of an entry `x` cannot decide its f32 rounding, else 0, all in
/// integer lanes (branch-free, so the group loops vectorise): `x` past 2^53, |q| outside f32's
/// normal range (compared as bit patterns, which order like magnitudes; a zero `q` is exact),
/// or the low 29 bits of `q` within 16 of the f32 halfway point.
#[inline(always)]
fn undecided<T: O32>(x: T, q: f64) -> u64 {
    const MIN_BITS: u64 = (f32::MIN_POSITIVE as f64).to_bits();
    const MAX_BITS: u64 = (f32::MAX as f64).to_bits();
    let bits = q.to_bits();
    let mag = bits & !(1 << 63);
    let low = bits & ((1 << 29) - 1);
    let big = x.past_f64() as u64;
    let range = ((mag.wrapping_sub(MIN_BITS) >= MAX_BITS - MIN_BITS) & (mag != 0)) as u64;
    let near = (low.wrapping_sub((1 << 28) - 16) <= 32) as u64;
    big | range | near
}

/// `s_v / divisor` in f64 (one rounding), the per-row factor of [`dequantize_output_fast`];
/// 0 for a zero divisor.
#[inline]
pub(crate) fn row_factor(s_v: f32, divisor: u32) -> f64 {
    if divisor == 0 {
        0.0
    } else {
        s_v as f64 / divisor as f64
    }
}

/// The common case of [`dequantize_output`] in two f64 operations: `q = O32 * factor` is
/// within a relative 2^-51 of the exact quotient (two roundings of 2^-53 each), i.e. within
/// 4 ulps of f64. Rounding `q` to f32 then gives the correctly rounded result unless `q` lies
/// within those ulps of a point halfway between two f32 values (the low 29 of the 52 f64
/// mantissa bits are then near `1 << 28`), or outside f32's normal range. Those cases return
/// `None` and take the exact path; they are about one in 10^7 for random data.
#[inline]
pub(crate) fn dequantize_output_fast(o32: i64, factor: f64) -> Option<f32> {
    if o32 == 0 || factor == 0.0 {
        return Some(0.0);
    }
    if o32.unsigned_abs() >= 1 << 53 {
        return None;
    }
    let q = o32 as f64 * factor;
    let a = q.abs();
    if !(a >= f32::MIN_POSITIVE as f64 && a < f32::MAX as f64) {
        return None;
    }
    let low = (q.to_bits() & ((1 << 29) - 1)) as i64;
    if (low - (1 << 28)).abs() <= 16 {
        return None;
    }
    Some(q as f32)
}

#[cfg(test)]
mod tests {
    use super::output_row;
    use crate::reference::dequantize_output;
    use proptest::prelude::*;

    /// `output_row` must give the bits of `dequantize_output` entry by entry, whichever path
    /// (vector group, group redone, remainder) an entry takes.
    fn check<T: super::O32 + std::fmt::Debug>(o32: &[T], s_v: f32, div: u32) {
        for level in crate::simd::levels() {
            let mut got = vec![f32::NAN; o32.len()];
            super::output_row_at(level, o32, div, s_v, &mut got);
            for (i, (&x, &g)) in o32.iter().zip(&got).enumerate() {
                let want = dequantize_output(x.into(), s_v, div);
                assert!(
                    g.to_bits() == want.to_bits(),
                    "{level:?}, entry {i}: {x:?} * {s_v:e} / {div}: got {g:e}, want {want:e}"
                );
            }
        }
        let mut got = vec![f32::NAN; o32.len()];
        output_row(o32, div, s_v, &mut got);
        assert!(got
            .iter()
            .zip(o32)
            .all(|(g, &x)| g.to_bits() == dequantize_output(x.into(), s_v, div).to_bits()));
    }

    /// `output_row_channels` against `dequantize_output` column by column (plus the mean).
    fn check_channels<T: super::O32 + std::fmt::Debug>(
        o32: &[T],
        scales: &[f32],
        mean: &[f32],
        div: u32,
    ) {
        for level in crate::simd::levels() {
            let mut got = vec![f32::NAN; o32.len()];
            super::channels_at(level, o32, div, scales, &[], &mut got);
            for (i, ((&x, &g), &s)) in o32.iter().zip(&got).zip(scales).enumerate() {
                let want = dequantize_output(x.into(), s, div);
                assert!(
                    g.to_bits() == want.to_bits(),
                    "{level:?}, entry {i}: {x:?} * {s:e} / {div}: got {g:e}, want {want:e}"
                );
            }
        }
        let with_mean = |i: usize, x: T| {
            let mut want = dequantize_output(x.into(), scales[i], div);
            if div != 0 && !mean.is_empty() {
                want += mean[i];
            }
            want
        };
        let mut got = vec![f32::NAN; o32.len()];
        super::output_row_channels(o32, div, scales, mean, &mut got);
        for (i, (&x, &g)) in o32.iter().zip(&got).enumerate() {
            let want = with_mean(i, x);
            assert_eq!(g.to_bits(), want.to_bits(), "entry {i} with the mean");
        }
        // The mean added in the conversion pass, on every level.
        for level in crate::simd::levels() {
            let mut got = vec![f32::NAN; o32.len()];
            super::channels_at(level, o32, div, scales, mean, &mut got);
            for (i, (&x, &g)) in o32.iter().zip(&got).enumerate() {
                let want = with_mean(i, x);
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "{level:?}, entry {i} with the mean"
                );
            }
        }
    }

    #[test]
    fn channels_on_halfway_families_and_edges() {
        let scales: Vec<f32> = [
            0.9f32 / 127.0,
            1.0 / 127.0,
            3.0 * 2f32.powi(-20),
            0.1,
            1e-44,
        ]
        .iter()
        .chain(&[3e38, 0.0, 1.0])
        .copied()
        .cycle()
        .take(3000)
        .collect();
        let mean: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) * 1e-3).collect();
        for div in [255u32, 3 * 255, 17 * 255, 256, 7, 1, 0, u32::MAX] {
            let row: Vec<i32> = (-1500..1500).map(|x| x * 255).collect();
            check_channels(&row, &scales, &mean, div);
            check_channels(&row, &scales, &[], div);
            let wide: Vec<i64> = (-1500i64..1493)
                .map(|x| x * 255)
                .chain([1 << 53, -(1 << 53) - 1, i64::MAX, i64::MIN, 0, 1, -1])
                .collect();
            check_channels(&wide, &scales, &mean, div);
        }
        // Exact halfway products with divisor 1 (per channel: s = 1 + k ulps).
        let s: Vec<f32> = (0..1000).map(|k| 1.0 + f32::EPSILON * k as f32).collect();
        let o: Vec<i64> = (0..1000).map(|k| (1 << 24) + 1 + 2 * k).collect();
        check_channels(&o, &s, &[], 1);
    }

    #[test]
    fn output_row_on_halfway_families_and_edges() {
        for s_v in [
            0.9f32 / 127.0,
            1.0 / 127.0,
            3.0 * 2f32.powi(-20),
            0.1,
            1e-44,
            3e38,
            0.0,
        ] {
            for div in [255u32, 3 * 255, 17 * 255, 256, 7, 1, 0, u32::MAX] {
                let row: Vec<i32> = (-1500..1500).map(|x| x * 255).collect();
                check(&row, s_v, div);
                let wide: Vec<i64> = (-1500i64..1500)
                    .map(|x| x * 255)
                    .chain([1 << 53, -(1 << 53) - 1, i64::MAX, i64::MIN, 0, 1, -1])
                    .collect();
                check(&wide, s_v, div);
                let extremes = [i32::MIN, i32::MAX, 0, -1, 1, 255, -255, 7, 9, 13, 17];
                check(&extremes, s_v, div);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn channels_match_the_reference(
            row in prop::collection::vec((any::<i32>(), any::<i64>()), 0..40),
            scales in prop::collection::vec(
                prop_oneof![(0u32..0x7f80_0000).prop_map(f32::from_bits), 1e-4f32..0.05],
                40,
            ),
            div in prop_oneof![Just(255u32), 0u32..100_000, any::<u32>()],
        ) {
            let narrow: Vec<i32> = row.iter().map(|r| r.0).collect();
            let wide: Vec<i64> = row.iter().map(|r| r.1 >> (r.0 as u32 % 40)).collect();
            let n = row.len();
            check_channels(&narrow, &scales[..n], &[], div);
            check_channels(&wide, &scales[..n], &scales[..n], div);
        }

        #[test]
        fn output_row_matches_the_reference(
            row in prop::collection::vec(any::<i32>(), 0..40),
            wide in prop::collection::vec(any::<i64>(), 0..40),
            s_v in prop_oneof![(0u32..0x7f80_0000).prop_map(f32::from_bits), 1e-4f32..0.05],
            div in prop_oneof![Just(255u32), 0u32..100_000, any::<u32>()],
        ) {
            check(&row, s_v, div);
            check(&wide, s_v, div);
        }
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// The fast path either declines or agrees with exact integer arithmetic, over random
    /// values and over constructed near-halfway quotients.
    #[test]
    fn fast_output_path_agrees_with_exact() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut declined = 0;
        for i in 0..400_000 {
            let r = next();
            let o32 = (r as i64 >> (r % 40)) % (1 << 40);
            let s_v = f32::from_bits(0x3800_0000 + (next() as u32 % 0x0800_0000));
            let divisor = match i % 4 {
                0 => 255,
                1 => 1 + (next() % 300) as u32,
                _ => 1 + (next() % (255 << 16)) as u32,
            };
            let exact = output_exact(o32, s_v, divisor);
            match dequantize_output_fast(o32, row_factor(s_v, divisor)) {
                Some(v) => assert_eq!(v.to_bits(), exact.to_bits(), "{o32} {s_v} {divisor}"),
                None => declined += 1,
            }
        }
        assert!(declined < 400, "fast path declined {declined} times");
        // Exact halfway products: o32 * s_v with divisor 1 sits exactly between two f32s.
        for k in 0..1000i64 {
            let s_v = 1.0f32 + f32::EPSILON * k as f32;
            let o32 = (1 << 24) + 1 + 2 * k;
            let exact = output_exact(o32, s_v, 1);
            if let Some(v) = dequantize_output_fast(o32, row_factor(s_v, 1)) {
                assert_eq!(v.to_bits(), exact.to_bits());
            }
            assert_eq!(
                crate::reference::dequantize_output(o32, s_v, 1).to_bits(),
                exact.to_bits()
            );
        }
        assert_eq!(dequantize_output_fast(5, row_factor(0.5, 0)), Some(0.0));
    }
}
