//! Command-line front end: the argument structs of every subcommand (one module each) and the
//! helpers they share (attention options, loading checked inputs).

mod accuracy;
mod bench;
mod run;
mod softmax;
mod validate;

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use intattention::lut::DEFAULT_CLIP;
use intattention::{Attention, Backend, Kernel, Pipeline, Schedule, SoftmaxVariant};

use crate::settings::{Preset, Settings};

use crate::npy::{self, NpyArray};

/// Environment variable that forces a kernel by name (as `--kernel` does), so that scripts and
/// test tiers can run every kernel of a machine.
pub const KERNEL_ENV: &str = "INTATTENTION_KERNEL";

/// Fully integer attention (IntAttention) on CPUs: benchmarks, runs on .npy files, and
/// accuracy against an f64 reference.
#[derive(Parser, Debug)]
#[command(name = "intattention", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Time one pipeline on seeded random inputs (set-up is not timed).
    Bench(bench::BenchArgs),
    /// Run attention on Q, K, V from .npy files and write the output.
    Run(run::RunArgs),
    /// IndexSoftmax over an int32 score matrix from a .npy file.
    Softmax(softmax::SoftmaxArgs),
    /// Compare every pipeline and softmax variant with an f64 reference attention.
    Accuracy(accuracy::AccuracyArgs),
    /// Run the same inputs through the native kernels and ACL and compare (integer results
    /// bit for bit, float results within stated tolerances).
    Validate(validate::ValidateArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Run(a) => run::run(a),
        Command::Softmax(a) => softmax::run(a),
        Command::Accuracy(a) => accuracy::run(a),
        Command::Validate(a) => validate::run(a),
    }
}

/// Options of an attention call shared by `bench` and `run`.
#[derive(Args, Debug, Clone)]
pub struct AttnOpts {
    /// Pipeline: 0|fp32, 1|fp16, 2|int8, 3|intattn.
    #[arg(long, default_value = "intattn")]
    pub pipe: Pipeline,
    /// IndexSoftmax finish (intattn only): normalized, deferred or paper-sim.
    #[arg(long, default_value = "deferred")]
    pub variant: SoftmaxVariant,
    /// IndexSoftmax clip c in logit units (intattn only).
    #[arg(long, default_value_t = DEFAULT_CLIP, allow_negative_numbers = true)]
    pub clip: f32,
    /// Logit scale [default: 1/sqrt(d)].
    #[arg(long, allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Causal mask (key j is masked for query i when j > i + kv_len - q_len).
    #[arg(long)]
    pub causal: bool,
    /// Schedule of the integer pipelines: auto, fused or unfused.
    #[arg(long, default_value = "auto")]
    pub schedule: Schedule,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Query rows per block of the fused schedule [default: from cache sizes and threads].
    #[arg(long)]
    pub block_rows: Option<usize>,
    /// Where attention runs: native or acl (ACL quantizes per tensor: its integer pipelines
    /// take `--quant tensor` unless the scale options say otherwise, and refuse finer ones).
    #[arg(long, default_value = "native")]
    pub backend: Backend,
    /// Kernel (generic, avx2, avxvnni, avx512vnni, avx512vbmi, amx, neon, dotprod, i8mm)
    /// [default: $INTATTENTION_KERNEL, else the fastest this CPU runs].
    #[arg(long)]
    pub kernel: Option<String>,
    #[command(flatten)]
    pub settings: Settings,
}

impl AttnOpts {
    /// The kernel these options name (`--kernel`, else `$INTATTENTION_KERNEL`, else the
    /// fastest).
    pub fn kernel(&self) -> Result<Kernel> {
        let name = match &self.kernel {
            Some(n) => Some(n.clone()),
            None => std::env::var(KERNEL_ENV).ok().filter(|n| !n.is_empty()),
        };
        match name {
            Some(n) => Kernel::by_name(&n).with_context(|| format!("kernel '{n}'")),
            None => Ok(Kernel::best()),
        }
    }

    /// The attention configuration of these options.
    pub fn attention(&self, key_lens: Option<Vec<usize>>) -> Result<Attention> {
        let mut settings = self.settings;
        if self.backend == Backend::Acl && settings.quant.is_none() {
            settings.quant = Some(Preset::Tensor);
        }
        let mut a = settings
            .apply(Attention::new(self.pipe).with_variant(self.variant))
            .with_clip(self.clip)
            .with_causal(self.causal)
            .with_schedule(self.schedule)
            .with_key_lens(key_lens)
            .with_kernel(self.kernel()?)
            .with_executor(crate::threads::executor(self.threads)?);
        if let Some(s) = self.scale {
            a = a.with_scale(s);
        }
        if let Some(r) = self.block_rows {
            a = a.with_block_rows(r);
        }
        Ok(a)
    }

    /// The variant as reports show it: only the IntAttention pipeline has one.
    pub fn reported_variant(&self) -> Option<SoftmaxVariant> {
        (self.pipe == Pipeline::IntAttention).then_some(self.variant)
    }
}

/// The thread count `threads` stands for (0: one per core).
pub fn resolved_threads(threads: usize) -> usize {
    crate::threads::resolved(threads)
}

/// Reads an f32 array and rejects NaN and infinity, naming the file and the position.
pub fn load_f32(path: &Path) -> Result<NpyArray<f32>> {
    let a = npy::read_f32(path)?;
    if let Some(i) = a.data.iter().position(|x| !x.is_finite()) {
        anyhow::bail!(
            "{}: element {} (flat index {i}) is {}; inputs must be finite",
            path.display(),
            unravel(i, &a.shape),
            a.data[i]
        );
    }
    Ok(a)
}

/// `[i, j, ...]` of flat index `i` in a C-order array of `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> String {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = i % d;
        i /= d;
    }
    format!("{idx:?}")
}

/// Writes the f32 output (atomically, see [`npy::Outputs`]), naming the file on failure.
pub fn save_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    npy::write_f32(path, shape, data).with_context(|| "writing the output".to_string())
}

/// Checks the output paths of a command before it reads or computes anything: each can name
/// an output file, and none is an input or another output. An output over its own input is
/// refused rather than allowed: the rename would replace the input, which the user most
/// likely still wants, and two outputs on one path would silently keep only one.
/// `outputs` and `inputs` pair each path with its flag, for the message.
pub fn check_paths(outputs: &[(&str, &Path)], inputs: &[(&str, &Path)]) -> Result<()> {
    for (i, &(flag, out)) in outputs.iter().enumerate() {
        npy::check_output(out)?;
        for &(in_flag, input) in inputs {
            if npy::same_file(out, input) {
                anyhow::bail!(
                    "{flag} {} is the same file as {in_flag} {}: writing it would replace the \
                     input; choose another output path",
                    out.display(),
                    input.display()
                );
            }
        }
        for &(other_flag, other) in &outputs[..i] {
            if npy::same_file(out, other) {
                anyhow::bail!(
                    "{other_flag} and {flag} both name {}: give each output its own path",
                    out.display()
                );
            }
        }
    }
    Ok(())
}
