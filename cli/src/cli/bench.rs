//! `intattention bench`: times one pipeline on seeded random inputs. Set-up (backend
//! preparation, input generation, a KV cache's prefill) happens before the clock starts; each
//! timed run is one attention call, quantization of Q, K, V included for the integer
//! pipelines. With `--kv-cache`, each timed run is one decoding step: `--L` new tokens appended
//! to every sequence's cache (quantized and packed on append) and attention of their queries
//! over the whole cache.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use intattention::backend;
use intattention::{AttnShape, KvCache, Pipeline, TensorView, Workspace};

use super::{resolved_threads, AttnOpts};
use crate::data::{self, Family};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub attn: AttnOpts,
    /// Query length (and key length unless --kv-len is given); with --kv-cache, the tokens
    /// appended and attended per step.
    #[arg(long = "L", default_value_t = 1024)]
    pub len: usize,
    /// Key/value length, for decode-style shapes (Lq != Lk); with --kv-cache, the tokens cached
    /// before the timed steps.
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
    /// Time decoding steps against a KV cache (see the command's description).
    #[arg(long = "kv-cache")]
    pub kv_cache: bool,
    /// With --kv-cache: cached tokens per sequence, comma separated (one per batch row)
    /// [default: --kv-len for every sequence].
    #[arg(long = "seq-lens", value_delimiter = ',')]
    pub seq_lens: Option<Vec<usize>>,
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
    pipe: &'static str,
    backend: String,
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
    variant: Option<&'static str>,
    schedule: String,
    /// `--block-rows` when given (else the fused schedule chose them).
    block_rows: Option<usize>,
    /// `--reuse-output`: one output buffer for every run.
    reuse_output: bool,
    /// `--kv-cache`: decoding steps over a cache of `seq_lens` tokens per sequence.
    kv_cache: bool,
    seq_lens: Option<Vec<usize>>,
    /// Bytes the KV cache holds (with --kv-cache).
    cache_bytes: Option<usize>,
    /// IndexSoftmax table bits (intattn only).
    table_bits: Option<u32>,
    q_scales: String,
    kv_scales: String,
    smooth_k: bool,
    v_channels: bool,
    smooth_v: bool,
    /// The scheme in words (`tensor`, or `q row, kv head, v channel, smooth v`).
    scheme: String,
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
    let kv_heads = a.kv_heads.unwrap_or(a.heads);
    let shape = AttnShape::new(a.batch, a.heads, a.len, a.d)
        .with_kv_heads(kv_heads)
        .with_kv_len(a.kv_len.unwrap_or(a.len));
    shape.validate()?;
    check_work(&shape)?;
    let key_lens = a.key_len.map(|l| vec![l; a.batch]);
    if a.kv_cache && key_lens.is_some() {
        bail!("--key-len and --kv-cache do not go together: the cache's lengths mask the keys");
    }
    let attn = a.attn.attention(key_lens)?;
    let kernel = attn.kernel().name();
    let (times, cache_bytes, seq_lens) = if a.kv_cache {
        let (t, bytes, lens) = time_cache(&a, &attn, &shape)?;
        (t, Some(bytes), Some(lens))
    } else {
        (time_calls(&a, &attn, &shape)?, None, None)
    };
    let s = Stats::of(&times);
    let quant = attn.quantization();
    let kv_total: f64 = match &seq_lens {
        Some(l) => l.iter().map(|&n| (n + a.len) as f64).sum::<f64>() * a.heads as f64,
        None => (shape.batch * shape.heads * shape.kv_len) as f64,
    };
    let macs = 2.0 * kv_total * shape.q_len as f64 * shape.head_dim as f64;
    let report = BenchReport {
        pipe: a.attn.pipe.as_str(),
        backend: a.attn.backend.to_string(),
        kernel,
        threads: resolved_threads(a.attn.threads),
        batch: shape.batch,
        heads: shape.heads,
        kv_heads: shape.kv_heads,
        q_len: shape.q_len,
        kv_len: shape.kv_len,
        d: shape.head_dim,
        // Cached steps always run causal (each new token sees the tokens before it).
        causal: a.attn.causal || a.kv_cache,
        key_len: a.key_len,
        variant: a.attn.reported_variant().map(|v| v.as_str()),
        schedule: format!("{:?}", a.attn.schedule).to_lowercase(),
        block_rows: a.attn.block_rows,
        reuse_output: a.reuse_output,
        kv_cache: a.kv_cache,
        seq_lens,
        cache_bytes,
        table_bits: (attn.pipeline() == Pipeline::IntAttention).then(|| attn.table_bits()),
        q_scales: crate::settings::granularity_name(quant.q).to_string(),
        kv_scales: crate::settings::granularity_name(quant.kv).to_string(),
        smooth_k: quant.smooth_k,
        v_channels: quant.v_per_channel,
        smooth_v: quant.smooth_v,
        scheme: crate::settings::describe(&quant),
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

/// Refuses shapes whose work no machine finishes: more than 2^50 multiply-adds per call
/// (a million seconds at 1 TMAC/s).
fn check_work(shape: &AttnShape) -> Result<()> {
    let macs = 2.0
        * (shape.batch * shape.heads) as f64
        * shape.q_len as f64
        * shape.kv_len as f64
        * shape.head_dim as f64;
    if macs > 2f64.powi(50) {
        bail!(
            "{macs:.3e} multiply-adds per call: more than 2^50, which no machine finishes in a \
             benchmark; use a smaller --L, --kv-len or --heads"
        );
    }
    Ok(())
}

/// Timed calls of the plain attention (no cache).
fn time_calls(
    a: &BenchArgs,
    attn: &intattention::Attention,
    shape: &AttnShape,
) -> Result<Vec<Duration>> {
    let mut runner = backend::prepare(a.attn.backend, attn, shape)?;
    let x = data::generate(Family::Gaussian, shape, a.seed)?;

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
    for _ in 0..a.warmup.max(1) {
        once(&mut reused)?;
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t = Instant::now();
        let out = once(&mut reused)?;
        times.push(t.elapsed());
        // Dropped (freed) outside the timed span.
        std::hint::black_box(out);
    }
    Ok(times)
}

/// Timed decoding steps against a cache prefilled (untimed) with each sequence's tokens. A
/// step appends `--L` tokens to every sequence and attends their queries (causal) to the
/// whole cache; the appended tokens are dropped again after the clock stops, so every step
/// sees the same cache.
fn time_cache(
    a: &BenchArgs,
    attn: &intattention::Attention,
    shape: &AttnShape,
) -> Result<(Vec<Duration>, usize, Vec<usize>)> {
    if a.attn.backend != intattention::Backend::Native {
        bail!("--kv-cache runs on the native backend only");
    }
    let lens = match &a.seq_lens {
        Some(l) if l.len() != shape.batch => {
            bail!(
                "--seq-lens has {} lengths for --batch {}",
                l.len(),
                shape.batch
            )
        }
        Some(l) => l.clone(),
        None => vec![shape.kv_len; shape.batch],
    };
    let attn = attn.clone().with_causal(true);
    let (g, d, lq) = (shape.kv_heads, shape.head_dim, shape.q_len);
    let mut cache = KvCache::new(&attn, shape.batch, g, d)?;
    // Prefill, one sequence at a time, from seeded data.
    for (b, &n) in lens.iter().enumerate() {
        let kv = AttnShape::new(1, g, n.max(1), d);
        let x = data::generate(Family::Gaussian, &kv, a.seed.wrapping_add(b as u64))?;
        let k = TensorView::new(&x.q[..g * n * d], [1, g, n, d])?;
        let v = TensorView::new(&x.k[..g * n * d], [1, g, n, d])?;
        cache.append(b, k, v).context("prefilling the cache")?;
    }
    let cache_bytes = cache.bytes();
    let step = AttnShape::new(shape.batch, shape.heads, lq, d).with_kv_heads(g);
    let x = data::generate(Family::Gaussian, &step.with_kv_len(lq), a.seed ^ 0x5eed)?;
    let q = TensorView::new(&x.q, [shape.batch, shape.heads, lq, d])?;
    let k_new = TensorView::new(&x.k, [shape.batch, g, lq, d])?;
    let v_new = TensorView::new(&x.v, [shape.batch, g, lq, d])?;
    let mut ws = Workspace::new();
    let mut out = vec![0f32; step.q_elems()];
    let mut once = |cache: &mut KvCache| -> Result<Duration> {
        let t = Instant::now();
        cache.append_all(k_new, v_new)?;
        attn.run_cached(&mut ws, cache, q, &mut out)?;
        let dt = t.elapsed();
        for (b, &n) in lens.iter().enumerate() {
            cache.truncate(b, n)?;
        }
        Ok(dt)
    };
    for _ in 0..a.warmup.max(1) {
        once(&mut cache)?;
    }
    let times = (0..a.runs)
        .map(|_| once(&mut cache))
        .collect::<Result<Vec<_>>>()?;
    Ok((times, cache_bytes, lens))
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
        r.pipe, r.backend, r.kernel, r.threads, r.schedule
    );
    if r.pipe == "intattn" || r.pipe == "int8" {
        let bits = r
            .table_bits
            .map_or(String::new(), |b| format!("table bits {b} | "));
        println!("{bits}scales {}", r.scheme);
    }
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
    if let (Some(lens), Some(bytes)) = (&r.seq_lens, r.cache_bytes) {
        println!(
            "KV cache: {} sequences of {:?} tokens, {:.2} MiB; each run appends {} token(s) per \
             sequence and attends to the cache",
            lens.len(),
            lens,
            bytes as f64 / (1 << 20) as f64,
            r.q_len
        );
    }
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
