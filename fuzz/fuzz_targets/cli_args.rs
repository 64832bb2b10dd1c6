//! Fuzz target: `intattention run` and `intattention softmax` in-process, on fuzzed input
//! files (raw bytes, or well-formed arrays of small fuzzed shapes) and fuzzed flags. The CLI
//! module is the one the binary runs (the `intattention-cli` crate), from argument parsing to
//! the output file. Every outcome must be `Ok` or an `Err`: a panic or abort is a
//! bug. Arrays hold at most 1024 elements, so one input runs in milliseconds.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use clap::Parser;
use intattention_cli::cli;
use intattention_cli::npy;
use libfuzzer_sys::fuzz_target;

/// Elements per generated array: keeps Lq x Lk x d small.
const MAX_ELEMS: usize = 1024;

/// The contents of one input file.
#[derive(Arbitrary, Debug)]
enum Input {
    /// The command's dtype, shaped as the case's shape says: the way to runs that succeed.
    Fitting,
    /// Raw bytes: the reader's error paths inside a command.
    Raw(Vec<u8>),
    /// A well-formed file of any dtype (float32, int32, uint8, bool) and shape.
    Other { dtype: u8, dims: Vec<u8> },
}

/// The shapes of a case: Q is [Lq, d] or [B, H, Lq, d], K and V [Lk, d] or [B, Hkv, Lk, d],
/// scores and masks [Lq, Lk].
#[derive(Arbitrary, Debug)]
struct Dims {
    four_d: bool,
    batch: u8,
    heads: u8,
    kv_heads: u8,
    q_len: u8,
    kv_len: u8,
    d: u8,
}

impl Dims {
    fn q(&self) -> Vec<usize> {
        self.shape(self.heads, self.q_len)
    }
    fn kv(&self) -> Vec<usize> {
        self.shape(self.kv_heads, self.kv_len)
    }
    // Never zero here: zero-length dimensions come from `Input::Other`.
    fn scores(&self) -> Vec<usize> {
        vec![
            1 + usize::from(self.q_len % 64),
            1 + usize::from(self.kv_len % 64),
        ]
    }
    fn shape(&self, heads: u8, len: u8) -> Vec<usize> {
        let (len, d) = (1 + usize::from(len % 32), 1 + usize::from(self.d % 32));
        if self.four_d {
            let (b, h) = (1 + usize::from(self.batch % 2), 1 + usize::from(heads % 4));
            vec![b, h, len, d]
        } else {
            vec![len, d]
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Output {
    Fresh,
    /// The same file as the first input.
    OnInput,
    /// In a directory that does not exist.
    MissingDir,
    /// A directory.
    Dir,
}

#[derive(Arbitrary, Debug)]
enum Threshold {
    /// Mapped into the valid range 1..=2^30.
    Valid(u32),
    Any(i32),
    Scales(f32, f32, u8),
}

#[derive(Arbitrary, Debug)]
enum Case {
    Run {
        dims: Dims,
        q: Input,
        k: Input,
        v: Input,
        values: Vec<u32>,
        pipe: u8,
        variant: u8,
        bits: u8,
        clip: Option<f32>,
        scale: Option<f32>,
        causal: bool,
        schedule: u8,
        threads: u8,
        block_rows: Option<u8>,
        key_lens: Option<Vec<u8>>,
        out: Output,
    },
    Softmax {
        dims: Dims,
        scores: Input,
        values: Vec<u32>,
        threshold: Threshold,
        variant: u8,
        bits: u8,
        clip: Option<f32>,
        mask: Option<Input>,
        sums: bool,
        out: Output,
    },
}

/// A directory of this process's own under the temporary directory (scripts/fuzz.sh points
/// TMPDIR at tmpfs: every output is synced to disk).
fn workdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("intattention-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a-dir")).expect("a scratch directory");
        dir
    })
}

/// A shape of at most four dimensions and `MAX_ELEMS` elements (zero-length ones included).
fn capped(dims: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut n = 1;
    for d in dims.into_iter().take(4) {
        let d = d.min(MAX_ELEMS / n);
        shape.push(d);
        n *= d.max(1);
    }
    shape
}

/// The npy dtypes an input can have, as `Input::Other`'s `dtype` picks them.
const F32: u8 = 0;
const I32: u8 = 1;
const U8: u8 = 2;
const BOOL: u8 = 3;

/// Writes `input` to `name`; `dtype` and `shape` are what the command expects there.
fn write_input(input: &Input, name: &str, dtype: u8, shape: &[usize], values: &[u32]) -> PathBuf {
    let path = workdir().join(name);
    let (dtype, shape) = match input {
        Input::Raw(b) => {
            std::fs::write(&path, b).expect("scratch file");
            return path;
        }
        Input::Fitting => (dtype, capped(shape.iter().copied())),
        Input::Other { dtype, dims } => (dtype % 4, capped(dims.iter().map(|&d| usize::from(d)))),
    };
    let n = shape.iter().product::<usize>();
    let at = |i: usize| {
        values
            .get(i % values.len().max(1))
            .copied()
            .unwrap_or(i as u32)
    };
    let mut out = Vec::new();
    let written = match dtype {
        // Moderate values, with any bit pattern (NaN, infinities, huge) one time in 256.
        F32 => {
            let x: Vec<f32> = (0..n)
                .map(|i| match at(i) {
                    v if v & 0xff == 0 => f32::from_bits(v),
                    v => (v as i32 >> 8) as f32 / 65536.0,
                })
                .collect();
            npy::write_to(&mut out, &shape, &x)
        }
        I32 => {
            let x: Vec<i32> = (0..n).map(|i| at(i) as i32).collect();
            npy::write_to(&mut out, &shape, &x)
        }
        U8 => {
            let x: Vec<u8> = (0..n).map(|i| at(i) as u8).collect();
            npy::write_to(&mut out, &shape, &x)
        }
        _ => {
            debug_assert_eq!(dtype, BOOL);
            let x: Vec<bool> = (0..n).map(|i| at(i) & 1 == 1).collect();
            npy::write_to(&mut out, &shape, &x)
        }
    };
    written.expect("a small array can be written");
    std::fs::write(&path, out).expect("scratch file");
    path
}

fn out_path(out: &Output, first_input: &Path) -> PathBuf {
    match out {
        Output::Fresh => workdir().join("out.npy"),
        Output::OnInput => first_input.to_path_buf(),
        Output::MissingDir => workdir().join("missing/out.npy"),
        Output::Dir => workdir().join("a-dir"),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args(case: &Case) -> Vec<String> {
    let mut a: Vec<String> = vec!["intattention".into()];
    let mut flag = |name: &str, value: String| {
        a.push(format!("--{name}"));
        a.push(value);
    };
    // The last entry of each list is invalid: the parse errors are part of the space.
    const VARIANTS: [&str; 4] = ["normalized", "deferred", "paper-sim", "exact"];
    match case {
        Case::Run {
            dims,
            q,
            k,
            v,
            values,
            pipe,
            variant,
            bits,
            clip,
            scale,
            causal,
            schedule,
            threads,
            block_rows,
            key_lens,
            out,
        } => {
            let (q, k, v) = (
                write_input(q, "q.npy", F32, &dims.q(), values),
                write_input(k, "k.npy", F32, &dims.kv(), values),
                write_input(v, "v.npy", F32, &dims.kv(), &values[values.len() / 2..]),
            );
            flag("q", s(&q));
            flag("k", s(&k));
            flag("v", s(&v));
            flag("out", s(&out_path(out, &q)));
            flag(
                "pipe",
                ["fp32", "fp16", "int8", "intattn", "4"][*pipe as usize % 5].into(),
            );
            flag("variant", VARIANTS[*variant as usize % 4].into());
            flag("bits", (bits % 11).to_string());
            if let Some(c) = clip {
                flag("clip", c.to_string());
            }
            if let Some(x) = scale {
                flag("scale", x.to_string());
            }
            flag(
                "schedule",
                ["auto", "fused", "unfused"][*schedule as usize % 3].into(),
            );
            flag("threads", (threads % 3).to_string());
            if let Some(r) = block_rows {
                flag("block-rows", r.to_string());
            }
            if let Some(lens) = key_lens {
                let lens: Vec<String> = lens.iter().take(8).map(u8::to_string).collect();
                flag("key-lens", lens.join(","));
            }
            a.insert(1, "run".into());
            if *causal {
                a.push("--causal".into());
            }
        }
        Case::Softmax {
            dims,
            scores,
            values,
            threshold,
            variant,
            bits,
            clip,
            mask,
            sums,
            out,
        } => {
            let scores = write_input(scores, "scores.npy", I32, &dims.scores(), values);
            flag("scores", s(&scores));
            match threshold {
                Threshold::Valid(t) => flag("threshold", (1 + t % (1 << 30)).to_string()),
                Threshold::Any(t) => flag("threshold", t.to_string()),
                Threshold::Scales(sq, sk, d) => flag("scales", format!("{sq},{sk},{d}")),
            }
            flag("variant", VARIANTS[*variant as usize % 4].into());
            flag("bits", (bits % 11).to_string());
            if let Some(c) = clip {
                flag("clip", c.to_string());
            }
            if let Some(m) = mask {
                // Bool, as masks usually are; `Other` gives uint8 and the rest.
                let m = write_input(m, "mask.npy", BOOL, &dims.scores(), values);
                flag("mask", s(&m));
            }
            flag("out", s(&out_path(out, &scores)));
            if *sums {
                flag("sums", s(&workdir().join("sums.npy")));
            }
            a.insert(1, "softmax".into());
        }
    }
    a
}

fuzz_target!(|case: Case| {
    let argv = args(&case);
    // A parse error is a fine outcome; so is any error the command returns.
    if let Ok(cli) = cli::Cli::try_parse_from(&argv) {
        let _ = cli::run(cli);
    }
});
