//! Run-time x86-64 feature level for the loops outside the kernels (quantization, output
//! conversion). The crate is compiled for baseline x86-64 (SSE2), where those loops vectorise
//! poorly (no 64-bit compares or i64/f64 conversions, 4-wide floats); copies of the same
//! source compiled with AVX2 or AVX-512 enabled are chosen here once per process. The copies
//! compute the same bits as the baseline: they are the same Rust code, and none of it depends
//! on FMA contraction or other feature-dependent float behaviour (Rust never contracts).
//!
//! On other architectures [`level`] is always the base tier.

use std::sync::OnceLock;

/// A feature tier, lowest first.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tier {
    /// Whatever the target enables by default.
    Base,
    /// AVX2 + FMA (x86-64 only).
    Avx2,
    /// AVX-512 F, BW, DQ, VL (x86-64 only).
    Avx512,
}

/// A tier this CPU has. Only [`levels`] and [`level`] make one (the field is private to this
/// module), which is what makes calling the feature-enabled copies of [`dispatch!`] sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Level(Tier);

impl Level {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn tier(self) -> Tier {
        self.0
    }
}

/// The best level this CPU has, detected once.
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| *levels().last().expect("Base is always present"))
}

/// Every level this CPU has, lowest first (tests run each one).
pub(crate) fn levels() -> Vec<Level> {
    #[allow(unused_mut)]
    let mut v = vec![Level(Tier::Base)];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Level(Tier::Avx2));
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
            {
                v.push(Level(Tier::Avx512));
            }
        }
    }
    v
}

/// Defines `$name(level, args..)`: calls `$body(args..)` compiled for `level`, a [`Level`] of
/// this CPU (the only kind there is).
macro_rules! dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident : $bound:path),*>)? ($($arg:ident : $ty:ty),*) $(-> $ret:ty)?
        => $body:path
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($g: $bound),*>)? (
            level: $crate::simd::Level, $($arg: $ty),*
        ) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")]
                unsafe fn avx512 $(<$($g: $bound),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match level.tier() {
                    // SAFETY: a `Level` is only made by `simd::levels`, which reports AVX2 +
                    // FMA only when the CPU has them.
                    $crate::simd::Tier::Avx2 => return unsafe { avx2($($arg),*) },
                    // SAFETY: as above, for AVX-512 F/BW/DQ/VL.
                    $crate::simd::Tier::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Tier::Base => {}
                }
            }
            let _ = level;
            $body($($arg),*)
        }
    };
}
pub(crate) use dispatch;
