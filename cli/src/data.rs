//! Seeded input generators: the random number generator behind benchmark inputs and the input
//! families of the accuracy report (gaussian, peaked, flat, outlier channels, causal).
//!
//! The generator is our own SplitMix64 rather than a `rand` crate so that a seed names the same
//! numbers forever: a dependency upgrade (rand has changed its algorithms and its normal
//! sampler between major versions) must not silently change benchmark inputs or the accuracy
//! tables people compare against. SplitMix64 passes BigCrush, is a handful of integer
//! operations, and its output is fully specified by its published constants. Normals come from
//! Box-Muller in f64, whose output is likewise fixed by the formula (up to the platform's
//! `ln`/`cos`, which only move the last bits).

use std::fmt;
use std::str::FromStr;

use crate::error::{param_err, Error, Result};
use intattention::AttnShape;

/// SplitMix64 (Steele, Lea and Flood, 2014), with a cached second Box-Muller normal.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare_normal: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n >= 1`); the modulo bias is below 2^-40 for any `n` we use.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal by Box-Muller; each pair of uniforms gives two normals.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - uniform() is in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` normals with standard deviation `std`, as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

/// The input families of the accuracy report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Q, K, V standard normal: logits about N(0, 1), medium entropy.
    Gaussian,
    /// Low entropy: each query is a scaled copy of a few keys, so a handful of logits stand
    /// far above the rest.
    Peaked,
    /// High entropy: logits spread by about 0.05, rows close to uniform. This is where
    /// Normalized IndexSoftmax's 8-bit probability floor loses mass at long rows.
    Flat,
    /// Gaussian with a few channels of K and V 20x larger: the per-tensor int8 scale is set by
    /// the outliers, so ordinary channels keep only a few quantization levels.
    Outlier,
    /// Gaussian with a causal mask.
    Causal,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Gaussian,
        Family::Peaked,
        Family::Flat,
        Family::Outlier,
        Family::Causal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Gaussian => "gaussian",
            Family::Peaked => "peaked",
            Family::Flat => "flat",
            Family::Outlier => "outlier",
            Family::Causal => "causal",
        }
    }

    /// Whether the family is meant to run with a causal mask.
    pub fn causal(self) -> bool {
        self == Family::Causal
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gaussian" | "normal" => Ok(Family::Gaussian),
            "peaked" | "low-entropy" => Ok(Family::Peaked),
            "flat" | "high-entropy" => Ok(Family::Flat),
            "outlier" | "outliers" => Ok(Family::Outlier),
            "causal" => Ok(Family::Causal),
            _ => param_err(format!(
                "unknown input family '{s}' (expected gaussian, peaked, flat, outlier or causal)"
            )),
        }
    }
}

/// Q, K, V for one shape, row-major as [`AttnShape`] lays them out.
#[derive(Clone, Debug)]
pub struct Qkv {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// How many keys each peaked query copies, and how strongly.
const PEAKED_KEYS: usize = 2;
const PEAKED_GAIN: f64 = 2.5;
/// Standard deviation of Q in the flat family (logits then spread by about this much).
const FLAT_Q_STD: f64 = 0.05;
/// Outlier channels per head and their magnitude.
const OUTLIER_CHANNELS: usize = 4;
const OUTLIER_FACTOR: f32 = 20.0;

/// Generates Q, K and V of `family` for `shape`. The same `(family, shape, seed)` always gives
/// the same numbers. The causal family's mask is not part of the data: run it with
/// `Attention::causal(true)` (see [`Family::causal`]).
pub fn generate(family: Family, shape: &AttnShape, seed: u64) -> Result<Qkv> {
    shape.validate()?;
    // Distinct streams per tensor, so that changing one tensor's recipe leaves the others.
    let mut rq = Rng::new(seed ^ 0x5151_5151_0000_0001);
    let mut rk = Rng::new(seed ^ 0x4B4B_4B4B_0000_0002);
    let mut rv = Rng::new(seed ^ 0x5656_5656_0000_0003);
    let mut rx = Rng::new(seed ^ 0x5858_5858_0000_0004);
    let k = rk.normal_vec(shape.kv_elems(), 1.0);
    let v = rv.normal_vec(shape.kv_elems(), 1.0);
    let mut qkv = Qkv {
        q: Vec::new(),
        k,
        v,
    };
    match family {
        Family::Gaussian | Family::Causal => qkv.q = rq.normal_vec(shape.q_elems(), 1.0),
        Family::Flat => qkv.q = rq.normal_vec(shape.q_elems(), FLAT_Q_STD),
        Family::Peaked => qkv.q = peaked_queries(shape, &qkv.k, &mut rq, &mut rx),
        Family::Outlier => {
            qkv.q = rq.normal_vec(shape.q_elems(), 1.0);
            let d = shape.head_dim;
            let n = OUTLIER_CHANNELS.min(d);
            // The same channels in every head and token: outliers in real models are features
            // of the embedding, not of a position.
            let mut channels: Vec<usize> = (0..d).collect();
            for i in 0..n {
                let j = i + rx.below(d - i);
                channels.swap(i, j);
            }
            for row in qkv.k.chunks_mut(d).chain(qkv.v.chunks_mut(d)) {
                for &c in &channels[..n] {
                    row[c] *= OUTLIER_FACTOR;
                }
            }
        }
    }
    Ok(qkv)
}

/// Each query row is `gain * (k_a + k_b) / sqrt(2)` plus small noise, with keys `a`, `b` drawn
/// from the query's own K/V head: those logits sit near `gain * sqrt(d / 2)`, far above the
/// others (about N(0, gain^2)), so each row's mass sits on a few keys.
fn peaked_queries(shape: &AttnShape, k: &[f32], rq: &mut Rng, rx: &mut Rng) -> Vec<f32> {
    let d = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    let mut q = Vec::with_capacity(shape.q_elems());
    let norm = PEAKED_GAIN / (PEAKED_KEYS as f64).sqrt();
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let kv = b * shape.kv_heads + h / group;
            let kh = &k[kv * shape.kv_len * d..(kv + 1) * shape.kv_len * d];
            for _ in 0..shape.q_len {
                let mut row = vec![0f64; d];
                for _ in 0..PEAKED_KEYS {
                    let j = rx.below(shape.kv_len);
                    for (r, &x) in row.iter_mut().zip(&kh[j * d..(j + 1) * d]) {
                        *r += norm * x as f64;
                    }
                }
                q.extend(row.iter().map(|&r| (r + 0.1 * rq.normal()) as f32));
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_published_values() {
        // Reference outputs of SplitMix64 seeded with 0 (as in the algorithm's C reference).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let shape = AttnShape::new(1, 2, 16, 8);
        for f in Family::ALL {
            let a = generate(f, &shape, 3).unwrap();
            let b = generate(f, &shape, 3).unwrap();
            let c = generate(f, &shape, 4).unwrap();
            assert_eq!(a.q, b.q);
            assert_eq!(a.k, b.k);
            assert_ne!(a.q, c.q);
            assert_eq!(a.q.len(), shape.q_elems());
            assert_eq!(a.v.len(), shape.kv_elems());
        }
    }

    #[test]
    fn outlier_channels_are_20x() {
        let shape = AttnShape::new(1, 1, 512, 32);
        let x = generate(Family::Outlier, &shape, 1).unwrap();
        let mut rms = vec![0f64; 32];
        for row in x.k.chunks(32) {
            for (r, &v) in rms.iter_mut().zip(row) {
                *r += (v as f64).powi(2) / 512.0;
            }
        }
        let big = rms.iter().filter(|&&r| r.sqrt() > 10.0).count();
        assert_eq!(big, OUTLIER_CHANNELS);
    }
}
