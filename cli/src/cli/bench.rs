//! `intattention bench`: times one pipeline on seeded random inputs. Set-up (backend
//! preparation, input generation) happens before the clock starts; each timed run is one
//! `AttentionRunner::run` call, quantization of Q, K, V included for the integer pipelines.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use intattention::backend;
use intattention::data::{self, Family};
use intattention::{kernels, AttnShape, Backend, Pipeline, Schedule, SoftmaxVariant};

use super::{resolved_threads, AttnOpts};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub attn: AttnOpts,
    /// Query length (and key length unless --kv-len is given).
    #[arg(long = "L", default_value_t = 1024)]
    pub len: usize,
    /// Key/value length, for decode-style shapes (Lq != Lk).
    #[arg(long = "kv-len")]
    pub kv_len: Option<usize>,
    /// Head dimension.
    #[arg(long = "d", default_value_t = 64)]
    pub d: usize,
    #[arg(long, default_value_t = 1)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention) [default: --heads].
    #[arg(long = "kv-heads")]
    pub kv_heads: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Valid key length of every batch row (key padding).
    #[arg(long = "key-len")]
    pub key_len: Option<usize>,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Seed of the random inputs (standard normal Q, K, V).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write every run into one output buffer (`run_into`) instead of a new vector per run.
    #[arg(long)]
    pub reuse_output: bool,
}

/// The result of a benchmark; field names are stable (scripts read the `--json` form).
#[derive(Debug, serde::Serialize)]
struct BenchReport {
    #[serde(serialize_with = "intattention::accuracy::pipeline_name")]
    pipe: Pipeline,
    backend: Backend,
    kernel: &'static str,
    threads: usize,
    batch: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    d: usize,
    causal: bool,
    key_len: Option<usize>,
    variant: Option<SoftmaxVariant>,
    schedule: Schedule,
    /// `--block-rows` when given (else the fused schedule chose them).
    block_rows: Option<usize>,
    /// `--reuse-output`: one output buffer for every run.
    reuse_output: bool,
    seed: u64,
    warmup: usize,
    runs: usize,
    mean_ms: f64,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Nominal multiply-accumulates per second at the median time: 2 Lq Lk d per head (Q K^T
    /// plus P V), ignoring masks.
    gmacs: f64,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let shape = AttnShape {
        batch: a.batch,
        heads: a.heads,
        kv_heads: a.kv_heads.unwrap_or(a.heads),
        q_len: a.len,
        kv_len: a.kv_len.unwrap_or(a.len),
        head_dim: a.d,
    };
    shape.validate()?;
    let key_lens = a.key_len.map(|l| vec![l; a.batch]);
    let attn = a.attn.attention(key_lens);
    let kernel = kernels::active()?.name();
    let mut runner = backend::prepare(a.attn.backend, &attn, &shape)?;
    let x = data::generate(Family::Gaussian, &shape, a.seed)?;

    // With --reuse-output the warm-up runs write the buffer too, so its pages are in place.
    let mut reused = vec![0f32; if a.reuse_output { shape.q_elems() } else { 0 }];
    let mut once = |reused: &mut Vec<f32>| -> Result<Option<Vec<f32>>> {
        if a.reuse_output {
            runner.run_into(&x.q, &x.k, &x.v, reused)?;
            Ok(None)
        } else {
            Ok(Some(runner.run(&x.q, &x.k, &x.v)?))
        }
    };
    for i in 0..a.warmup.max(1) {
        let out = once(&mut reused)?;
        if i == 0 {
            let out = out.as_deref().unwrap_or(&reused);
            if let Some(j) = out.iter().position(|v| !v.is_finite()) {
                bail!(
                    "the {} pipeline produced {} at output index {j}",
                    a.attn.pipe,
                    out[j]
                );
            }
        }
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t = Instant::now();
        let out = once(&mut reused)?;
        times.push(t.elapsed());
        // Dropped (freed) outside the timed span, as before --reuse-output existed.
        std::hint::black_box(out);
    }
    let s = Stats::of(&times);
    let macs = 2.0
        * (shape.batch * shape.heads) as f64
        * (shape.q_len * shape.kv_len) as f64
        * shape.head_dim as f64;
    let report = BenchReport {
        pipe: a.attn.pipe,
        backend: runner.backend(),
        kernel,
        threads: resolved_threads(a.attn.threads),
        batch: shape.batch,
        heads: shape.heads,
        kv_heads: shape.kv_heads,
        q_len: shape.q_len,
        kv_len: shape.kv_len,
        d: shape.head_dim,
        causal: a.attn.causal,
        key_len: a.key_len,
        variant: a.attn.reported_variant(),
        schedule: a.attn.schedule,
        block_rows: a.attn.block_rows,
        reuse_output: a.reuse_output,
        seed: a.seed,
        warmup: a.warmup,
        runs: a.runs,
        mean_ms: s.mean * 1e3,
        median_ms: s.median * 1e3,
        min_ms: s.min * 1e3,
        max_ms: s.max * 1e3,
        gmacs: macs / s.median / 1e9,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &BenchReport) {
    let variant = r.variant.map_or(String::new(), |v| format!(" variant {v}"));
    let mut rows = r
        .block_rows
        .map_or(String::new(), |n| format!(" | block rows {n}"));
    if r.reuse_output {
        rows += " | output reused";
    }
    println!(
        "pipe {} | backend {} | kernel {} | threads {} | schedule {}{variant}{rows}",
        r.pipe,
        r.backend,
        r.kernel,
        r.threads,
        format!("{:?}", r.schedule).to_lowercase()
    );
    let mut masks = Vec::new();
    if r.causal {
        masks.push("causal".to_string());
    }
    if let Some(l) = r.key_len {
        masks.push(format!("key_len {l}"));
    }
    println!(
        "shape batch {} heads {} kv_heads {} q_len {} kv_len {} d {}{}",
        r.batch,
        r.heads,
        r.kv_heads,
        r.q_len,
        r.kv_len,
        r.d,
        if masks.is_empty() {
            String::new()
        } else {
            format!(" ({})", masks.join(", "))
        }
    );
    println!(
        "{} runs after {} warm-up: mean {:.3} ms  median {:.3} ms  min {:.3} ms  max {:.3} ms",
        r.runs, r.warmup, r.mean_ms, r.median_ms, r.min_ms, r.max_ms
    );
    println!(
        "{:.2} GMAC/s (2*Lq*Lk*d MACs per head at the median time)",
        r.gmacs
    );
}

/// Summary of run times, in seconds.
struct Stats {
    mean: f64,
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    /// `times` must not be empty.
    fn of(times: &[Duration]) -> Stats {
        let mut s: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            mean: s.iter().sum::<f64>() / n as f64,
            median,
            min: s[0],
            max: s[n - 1],
        }
    }
}
