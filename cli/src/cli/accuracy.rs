//! `intattention accuracy`: the accuracy report of [`intattention::accuracy`] as a table or
//! JSON, on seeded random inputs or (`--real`) on the stored real-activation suite.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::accuracy::{self, AccuracyConfig, RealConfig, RealSuite, LARGE_LEN, REAL_DIR};
use crate::data::Family;
use intattention::lut::DEFAULT_CLIP;

use crate::settings::Settings;
use intattention::{Pipeline, SoftmaxVariant};

#[derive(Args, Debug)]
pub struct AccuracyArgs {
    /// Input families, comma separated: gaussian, peaked, flat, outlier, causal [default: all].
    #[arg(long, value_delimiter = ',')]
    pub families: Vec<Family>,
    /// Sequence lengths, comma separated.
    #[arg(long = "L", value_delimiter = ',', default_values_t = [128usize, 1024, 4096])]
    pub lens: Vec<usize>,
    /// Also run L = 16384 (slow: minutes, and about 2 GiB per unfused float pipeline).
    #[arg(long)]
    pub large: bool,
    /// Head dimension.
    #[arg(long = "d", default_value_t = 64)]
    pub d: usize,
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Pipelines, comma separated [default: all four].
    #[arg(long, value_delimiter = ',')]
    pub pipes: Vec<Pipeline>,
    /// IndexSoftmax variants of the intattn pipeline [default: all three].
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<SoftmaxVariant>,
    #[command(flatten)]
    pub settings: Settings,
    /// IndexSoftmax clip c in logit units.
    #[arg(long, default_value_t = DEFAULT_CLIP, allow_negative_numbers = true)]
    pub clip: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (0: one per core); results do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run on the real-activation suite (Q, K, V of every head of a real model) in DIR
    /// [default: tests/data/real] instead of random inputs; reports the mean and worst head.
    #[arg(
        long,
        value_name = "DIR",
        num_args = 0..=1,
        default_missing_value = REAL_DIR,
        conflicts_with_all = ["families", "lens", "large", "d", "heads", "batch", "seed"]
    )]
    pub real: Option<PathBuf>,
}

pub fn run(a: AccuracyArgs) -> Result<()> {
    if let Some(dir) = a.real.clone() {
        return run_real(a, dir);
    }
    let defaults = AccuracyConfig::default();
    let mut lens = a.lens;
    if a.large && !lens.contains(&LARGE_LEN) {
        lens.push(LARGE_LEN);
    }
    if let Some(&l) = lens.iter().find(|&&l| l == 0) {
        bail!("--L: lengths must be at least 1, got {l}");
    }
    let cfg = AccuracyConfig {
        families: or_default(a.families, defaults.families),
        lens,
        batch: a.batch,
        heads: a.heads,
        head_dim: a.d,
        pipelines: or_default(a.pipes, defaults.pipelines),
        variants: or_default(a.variants, defaults.variants),
        settings: a.settings,
        clip: a.clip,
        seed: a.seed,
        threads: a.threads,
    };
    let report = accuracy::run(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn run_real(a: AccuracyArgs, dir: PathBuf) -> Result<()> {
    // The default is relative to the repository root; from elsewhere, fall back to the suite of
    // the source tree this binary was built from.
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REAL_DIR);
    let dir =
        if dir.as_path() == std::path::Path::new(REAL_DIR) && !dir.exists() && built_in.exists() {
            built_in
        } else {
            dir
        };
    let defaults = RealConfig::default();
    let cfg = RealConfig {
        pipelines: or_default(a.pipes, defaults.pipelines),
        variants: or_default(a.variants, defaults.variants),
        settings: a.settings,
        clip: a.clip,
        threads: a.threads,
    };
    let suite = RealSuite::load(&dir)?;
    let report = accuracy::run_real(&suite, &cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// An empty list on the command line means "all".
fn or_default<T>(given: Vec<T>, default: Vec<T>) -> Vec<T> {
    if given.is_empty() {
        default
    } else {
        given
    }
}
