//! Exact rounding of an output entry (docs/numerics.md, section 4): `O32 * s_v / divisor`
//! rounded once to the nearest f32, ties to even, by integer arithmetic. A numerical primitive
//! like the exponent table: the scalar reference and the output conversion both use it.

/// Contract section 4's dequantization `O = O32 s_v / divisor` (divisor 255 for P with scale
/// 1/255, the row sum for Deferred), rounded once from the exact real value to the nearest f32,
/// ties to even, by exact integer arithmetic. One rounding makes the output independent of
/// evaluation order, so every schedule gives the same bits; `O32 (s_v / divisor)` in f64 rounds
/// three times and can miss a halfway case. A fully masked row (`divisor == 0`) gives 0. `s_v`
/// must be finite and non-negative.
pub fn output_exact(o32: i64, s_v: f32, divisor: u32) -> f32 {
    if divisor == 0 || o32 == 0 || s_v == 0.0 {
        return 0.0;
    }
    let bits = s_v.to_bits();
    let (m, e) = match (bits >> 23) & 0xff {
        0 => (bits & 0x7f_ffff, -149),
        exp => ((bits & 0x7f_ffff) | 1 << 23, exp as i32 - 150),
    };
    // |O32| m: below 2^87.
    let n = o32.unsigned_abs() as u128 * m as u128;
    // The quotient n / divisor rounded to odd at 53 bits: rounding that to f32 (24 bits) is then
    // a correct single rounding (round-to-odd with two spare bits never double-rounds).
    let (odd, exp2) = if n < 1 << 53 {
        let (x, d) = (n as f64, divisor as f64);
        let q = x / d;
        // x - q d is exact for a correctly rounded quotient; its sign says which way q erred.
        let r = (-q).mul_add(d, x);
        let q = if r != 0.0 && q.to_bits() & 1 == 0 {
            f64::from_bits(if r > 0.0 {
                q.to_bits() + 1
            } else {
                q.to_bits() - 1
            })
        } else {
            q
        };
        (q, e)
    } else {
        let up = n.leading_zeros() - 1;
        let num = n << up;
        let (q, rem) = (num / divisor as u128, num % divisor as u128);
        let drop = 128 - q.leading_zeros() - 53;
        let mut top = (q >> drop) as u64;
        if rem != 0 || q & ((1 << drop) - 1) != 0 {
            top |= 1;
        }
        (top as f64, e + drop as i32 - up as i32)
    };
    // |exp2| stays far inside f64's exponent range, so the scaling is exact.
    let mag = (odd * f64::from_bits(((exp2 + 1023) as u64) << 52)) as f32;
    if o32 < 0 {
        -mag
    } else {
        mag
    }
}
