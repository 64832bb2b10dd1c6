//! The `intattention` binary end to end: round trips of `run` and `softmax` against the
//! library, `bench` output, and every bad-input case giving a message and a non-zero exit
//! (never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use intattention::{
    index_softmax, Attention, AttnShape, IndexSoftmaxParams, Pipeline, ScoreMask, SoftmaxVariant,
};
use intattention_cli::data::{self, Family};
use intattention_cli::npy;

fn bin() -> Command {
    let exe = env!("CARGO_BIN_EXE_intattention");
    match emulator() {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut c = Command::new(parts.next().expect("runner has a program"));
            c.args(parts).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// In the emulated aarch64 tier these tests themselves run under qemu-user, which cannot exec
/// another aarch64 binary directly (binfmt_misc is not mounted): the child exits 127. There the
/// CLI is started through the same runner cargo used (the tier sets it in the environment;
/// QEMU_CPU carries the CPU model). On real aarch64 hardware direct exec works and is used.
fn emulator() -> Option<&'static str> {
    static RUNNER: OnceLock<Option<String>> = OnceLock::new();
    RUNNER
        .get_or_init(|| {
            if !cfg!(target_arch = "aarch64") {
                return None;
            }
            let direct = Command::new(env!("CARGO_BIN_EXE_intattention"))
                .arg("--version")
                .output();
            if matches!(&direct, Ok(o) if o.status.success()) {
                return None;
            }
            Some(
                std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER")
                    .unwrap_or_else(|_| "qemu-aarch64 -L /".to_string()),
            )
        })
        .as_deref()
}

/// A fresh directory per test (tests run in parallel, and several test binaries at once).
fn tmpdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "intattention-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary starts")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a clean failure: non-zero exit, a message containing `needle` on stderr, no panic.
fn assert_fails(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks '{needle}': {err}"
    );
}

fn assert_ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "command failed: {err}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Q, K, V files for `shape` written as `[L, d]` (one head) or `[B, H, L, d]`.
fn write_qkv(dir: &Path, shape: &AttnShape, four_d: bool) -> (PathBuf, PathBuf, PathBuf) {
    let x = data::generate(Family::Gaussian, shape, 11).unwrap();
    let (qs, ks) = if four_d {
        (
            vec![shape.batch, shape.heads, shape.q_len, shape.head_dim],
            vec![shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim],
        )
    } else {
        (
            vec![shape.q_len, shape.head_dim],
            vec![shape.kv_len, shape.head_dim],
        )
    };
    let (q, k, v) = (dir.join("q.npy"), dir.join("k.npy"), dir.join("v.npy"));
    npy::write_f32(&q, &qs, &x.q).unwrap();
    npy::write_f32(&k, &ks, &x.k).unwrap();
    npy::write_f32(&v, &ks, &x.v).unwrap();
    (q, k, v)
}

/// A version 1.0 .npy file with the given header dict and 16 data bytes: a hand-made fixture
/// for headers no well-behaved writer produces.
fn npy_with_header(dict: &str) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    bytes
}

#[test]
fn run_round_trip_matches_the_library_2d() {
    let dir = tmpdir();
    let shape = AttnShape::new(1, 1, 40, 16);
    let (q, k, v) = write_qkv(&dir, &shape, false);
    let x = data::generate(Family::Gaussian, &shape, 11).unwrap();
    for pipe in Pipeline::ALL {
        let o = dir.join(format!("o-{pipe}.npy"));
        assert_ok(&run(&[
            "run",
            "--q",
            s(&q),
            "--k",
            s(&k),
            "--v",
            s(&v),
            "--pipe",
            pipe.as_str(),
            "--out",
            s(&o),
        ]));
        let got = npy::read_f32(&o).unwrap();
        assert_eq!(got.shape, vec![40, 16]);
        let want = Attention::new(pipe).run(&shape, &x.q, &x.k, &x.v).unwrap();
        assert_eq!(got.data, want, "{pipe}");
    }
}

#[test]
fn run_round_trip_4d_gqa_causal_padding_scale() {
    let dir = tmpdir();
    let shape = AttnShape::new(2, 4, 8, 8).with_kv_heads(2).with_kv_len(24);
    let (q, k, v) = write_qkv(&dir, &shape, true);
    let x = data::generate(Family::Gaussian, &shape, 11).unwrap();
    let o = dir.join("o.npy");
    assert_ok(&run(&[
        "run",
        "--q",
        s(&q),
        "--k",
        s(&k),
        "--v",
        s(&v),
        "--pipe",
        "3",
        "--variant",
        "normalized",
        "--causal",
        "--key-lens",
        "20,13",
        "--scale",
        "0.3",
        "--out",
        s(&o),
    ]));
    let got = npy::read_f32(&o).unwrap();
    assert_eq!(got.shape, vec![2, 4, 8, 8]);
    let want = Attention::new(Pipeline::IntAttention)
        .with_variant(SoftmaxVariant::Normalized)
        .with_causal(true)
        .with_key_lens(vec![20, 13])
        .with_scale(0.3)
        .run(&shape, &x.q, &x.k, &x.v)
        .unwrap();
    assert_eq!(got.data, want);
}

fn scores_fixture(dir: &Path) -> (PathBuf, Vec<i32>) {
    // Rows of different spreads, including i32 extremes and a constant row.
    let mut sc = Vec::new();
    for i in 0..6i64 {
        for j in 0..50i64 {
            sc.push(((i * 7919 + j * 104_729) % 20_001 - 10_000) as i32 * (i as i32 + 1));
        }
    }
    sc[0] = i32::MIN;
    sc[1] = i32::MAX;
    for x in &mut sc[250..300] {
        *x = 5;
    }
    let p = dir.join("scores.npy");
    npy::write_i32(&p, &[6, 50], &sc).unwrap();
    (p, sc)
}

#[test]
fn softmax_round_trip_threshold_and_scales() {
    let dir = tmpdir();
    let (sp, sc) = scores_fixture(&dir);
    for variant in SoftmaxVariant::ALL {
        let (out, sums) = (dir.join("p.npy"), dir.join("sums.npy"));
        assert_ok(&run(&[
            "softmax",
            "--scores",
            s(&sp),
            "--threshold",
            "30000",
            "--variant",
            variant.as_str(),
            "--out",
            s(&out),
            "--sums",
            s(&sums),
        ]));
        let params = IndexSoftmaxParams::new(30000, variant).unwrap();
        let mut want = vec![0u8; sc.len()];
        let want_sums = index_softmax(&sc, 6, 50, &params, ScoreMask::None, &mut want).unwrap();
        let got = npy::read_u8(&out).unwrap();
        assert_eq!(got.shape, vec![6, 50]);
        assert_eq!(got.data, want, "{variant}");
        let got_sums = npy::read::<u32>(&sums).unwrap();
        assert_eq!(got_sums.shape, vec![6]);
        assert_eq!(got_sums.data, want_sums.into_vec());
    }
    // --scales s_q,s_k,d: T = round(c / (s_q s_k / sqrt(d))) = round(6.6 / (0.01 * 0.02 / 8)).
    let out = dir.join("p2.npy");
    assert_ok(&run(&[
        "softmax",
        "--scores",
        s(&sp),
        "--scales",
        "0.01,0.02,64",
        "--variant",
        "deferred",
        "--bits",
        "6",
        "--out",
        s(&out),
    ]));
    let params =
        IndexSoftmaxParams::from_scales(0.01, 0.02, 0.125, 6, 6.6, SoftmaxVariant::Deferred)
            .unwrap();
    assert_eq!(params.threshold(), 264_000);
    let mut want = vec![0u8; sc.len()];
    index_softmax(&sc, 6, 50, &params, ScoreMask::None, &mut want).unwrap();
    assert_eq!(npy::read_u8(&out).unwrap().data, want);
}

#[test]
fn softmax_with_bool_and_u8_masks() {
    let dir = tmpdir();
    let (sp, sc) = scores_fixture(&dir);
    let keep: Vec<bool> = (0..300).map(|i| (i * 37) % 5 != 0 && i / 50 != 2).collect();
    let mb = dir.join("mask_bool.npy");
    npy::write(&mb, &[6, 50], &keep).unwrap();
    let mu = dir.join("mask_u8.npy");
    let keep_u8: Vec<u8> = keep.iter().map(|&k| k as u8 * 3).collect();
    npy::write_u8(&mu, &[6, 50], &keep_u8).unwrap();
    let params = IndexSoftmaxParams::new(20000, SoftmaxVariant::Normalized).unwrap();
    let mut want = vec![0u8; 300];
    index_softmax(&sc, 6, 50, &params, ScoreMask::Dense(&keep), &mut want).unwrap();
    assert!(want[100..150].iter().all(|&p| p == 0), "fully masked row");
    for m in [&mb, &mu] {
        let out = dir.join("p.npy");
        assert_ok(&run(&[
            "softmax",
            "--scores",
            s(&sp),
            "--threshold",
            "20000",
            "--variant",
            "normalized",
            "--mask",
            s(m),
            "--out",
            s(&out),
        ]));
        assert_eq!(npy::read_u8(&out).unwrap().data, want);
    }
}

#[test]
fn bench_text_and_json() {
    let text = assert_ok(&run(&[
        "bench", "--pipe", "int8", "--L", "64", "--d", "16", "--warmup", "1", "--runs", "3",
    ]));
    for needle in [
        "pipe int8",
        "kernel ",
        "backend native",
        "threads 1",
        "q_len 64",
        "median",
        "GMAC/s",
    ] {
        assert!(text.contains(needle), "'{needle}' missing from:\n{text}");
    }
    let json = assert_ok(&run(&[
        "bench",
        "--pipe",
        "2",
        "--L",
        "32",
        "--kv-len",
        "48",
        "--d",
        "8",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--batch",
        "2",
        "--causal",
        "--key-len",
        "40",
        "--runs",
        "2",
        "--threads",
        "2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
    for key in [
        "pipe",
        "backend",
        "kernel",
        "threads",
        "batch",
        "heads",
        "kv_heads",
        "q_len",
        "kv_len",
        "d",
        "runs",
        "mean_ms",
        "median_ms",
        "min_ms",
        "max_ms",
        "gmacs",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(v["pipe"], "int8");
    assert_eq!(v["q_len"], 32);
    assert_eq!(v["kv_len"], 48);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["runs"], 2);
    assert_eq!(v["reuse_output"], false);
    let (min, med, max) = (
        v["min_ms"].as_f64().unwrap(),
        v["median_ms"].as_f64().unwrap(),
        v["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= med && med <= max, "{json}");
    // 2 * Lq * Lk * d MACs per head, at the median time.
    let gmacs = 2.0 * 8.0 * 32.0 * 48.0 * 8.0 / (med * 1e-3) / 1e9;
    assert!(
        (v["gmacs"].as_f64().unwrap() - gmacs).abs() < 1e-6 * gmacs,
        "{json}"
    );
}

#[test]
fn bench_reusing_one_output_buffer() {
    for pipe in ["fp32", "fp16", "int8", "intattn"] {
        let json = assert_ok(&run(&[
            "bench",
            "--pipe",
            pipe,
            "--L",
            "40",
            "--d",
            "16",
            "--heads",
            "2",
            "--causal",
            "--threads",
            "2",
            "--runs",
            "2",
            "--reuse-output",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
        assert_eq!(v["reuse_output"], true, "{json}");
        assert!(v["median_ms"].as_f64().unwrap() > 0.0, "{json}");
    }
    let text = assert_ok(&run(&[
        "bench",
        "--L",
        "16",
        "--d",
        "8",
        "--runs",
        "1",
        "--reuse-output",
    ]));
    assert!(text.contains("output reused"), "{text}");
}

#[test]
fn accuracy_json_has_every_configuration() {
    let json = assert_ok(&run(&[
        "accuracy",
        "--L",
        "32",
        "--d",
        "16",
        "--families",
        "gaussian,causal",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v["rows"].as_array().unwrap();
    // 2 families x 1 length x (fp32, fp16, int8, 3 intattn variants).
    assert_eq!(rows.len(), 12);
    for r in rows {
        assert!(r["cosine"].as_f64().unwrap() > 0.9, "{r}");
    }
    // Pipelines carry their --pipe names.
    assert!(rows
        .iter()
        .any(|r| r["pipeline"] == "intattn" && r["variant"] == "paper-sim"));
    let text = assert_ok(&run(&[
        "accuracy",
        "--L",
        "16",
        "--d",
        "8",
        "--families",
        "flat",
    ]));
    assert!(
        text.contains("intattn/deferred") && text.contains("rel_l2"),
        "{text}"
    );
}

#[test]
fn acl_backend_without_acl_is_a_clear_error() {
    let out = run(&[
        "bench",
        "--backend",
        "acl",
        "--L",
        "16",
        "--d",
        "8",
        "--runs",
        "1",
    ]);
    if cfg!(target_arch = "aarch64") && out.status.success() {
        return; // a build with ACL: the backend works.
    }
    assert_fails(&out, "ACL");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tmpdir();
    let shape = AttnShape::new(1, 1, 8, 4);
    let (q, k, v) = write_qkv(&dir, &shape, false);
    let o = dir.join("o.npy");
    let run_with = |q: &Path, k: &Path, v: &Path, extra: &[&str]| {
        let mut args = vec!["run", "--q", s(q), "--k", s(k), "--v", s(v), "--out", s(&o)];
        args.extend_from_slice(extra);
        run(&args)
    };

    // Zero rows per block.
    assert_fails(
        &run_with(&q, &k, &v, &["--block-rows", "0"]),
        "invalid block_rows: 0",
    );
    // Malformed file.
    let garbage = dir.join("garbage.npy");
    npy::write_raw(&garbage, b"\x93NUMPY\x01\x00garbage that is not a header").unwrap();
    assert_fails(&run_with(&garbage, &k, &v, &[]), "garbage.npy");
    // Truncated data.
    let trunc = dir.join("trunc.npy");
    let bytes = std::fs::read(&k).unwrap();
    npy::write_raw(&trunc, &bytes[..bytes.len() - 7]).unwrap();
    assert_fails(&run_with(&q, &trunc, &v, &[]), "truncated");
    // Headers that promise more than the file holds, or more than memory can address.
    for (name, dims, needle) in [
        ("huge.npy", "(1099511627776, 1099511627776)", "overflows"),
        ("big.npy", "(1099511627776, 4)", "truncated"),
    ] {
        let lying = dir.join(name);
        npy::write_raw(
            &lying,
            &npy_with_header(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}"
            )),
        )
        .unwrap();
        assert_fails(&run_with(&lying, &k, &v, &[]), needle);
    }
    // Missing file.
    assert_fails(&run_with(&q, &k, &dir.join("nope.npy"), &[]), "nope.npy");
    // Wrong dtype.
    let ints = dir.join("ints.npy");
    npy::write_i32(&ints, &[8, 4], &[1; 32]).unwrap();
    assert_fails(&run_with(&q, &ints, &v, &[]), "expected dtype float32");
    // NaN and infinity.
    let mut x = data::generate(Family::Gaussian, &shape, 2).unwrap().q;
    x[13] = f32::NAN;
    let nan = dir.join("nan.npy");
    npy::write_f32(&nan, &[8, 4], &x).unwrap();
    assert_fails(&run_with(&nan, &k, &v, &[]), "nan.npy: element [3, 1]");
    x[13] = f32::NEG_INFINITY;
    npy::write_f32(&nan, &[8, 4], &x).unwrap();
    assert_fails(&run_with(&q, &k, &nan, &[]), "finite");
    // Zero dims.
    let zero = dir.join("zero.npy");
    npy::write_f32(&zero, &[0, 4], &[]).unwrap();
    assert_fails(&run_with(&zero, &k, &v, &[]), "zero-length");
    // Mismatched shapes: d, K vs V, rank, heads.
    let d5 = dir.join("d5.npy");
    npy::write_f32(&d5, &[8, 5], &[0.5; 40]).unwrap();
    assert_fails(&run_with(&q, &d5, &d5, &[]), "head dimension");
    let k9 = dir.join("k9.npy");
    npy::write_f32(&k9, &[9, 4], &[0.5; 36]).unwrap();
    assert_fails(&run_with(&q, &k, &k9, &[]), "V must be shaped like K");
    let r3 = dir.join("r3.npy");
    npy::write_f32(&r3, &[1, 8, 4], &[0.5; 32]).unwrap();
    assert_fails(&run_with(&r3, &k, &v, &[]), "2-D or 4-D");
    let q4 = dir.join("q4.npy");
    npy::write_f32(&q4, &[1, 3, 8, 4], &[0.5; 96]).unwrap();
    let k4 = dir.join("k4.npy");
    npy::write_f32(&k4, &[1, 2, 8, 4], &[0.5; 64]).unwrap();
    assert_fails(&run_with(&q4, &k4, &k4, &[]), "does not divide");
    assert_fails(&run_with(&q, &k4, &k4, &[]), "rank");
    // Bad options.
    assert_fails(
        &run_with(&q, &k, &v, &["--pipe", "fp64"]),
        "invalid pipeline",
    );
    assert_fails(
        &run_with(&q, &k, &v, &["--variant", "exact"]),
        "invalid softmax variant",
    );
    assert_fails(&run_with(&q, &k, &v, &["--scale", "-1"]), "scale");
    assert_fails(&run_with(&q, &k, &v, &["--bits", "9"]), "table bits");
    assert_fails(&run_with(&q, &k, &v, &["--key-lens", "9"]), "exceeds");
    assert_fails(&run_with(&q, &k, &v, &["--key-lens", "3,4"]), "key_lens");
    assert_fails(&run(&["bench", "--pipe", "5"]), "invalid pipeline");
    assert_fails(&run(&["bench", "--d", "0", "--L", "8"]), "head_dim");
    assert_fails(&run(&["bench", "--L", "8", "--runs", "0"]), "--runs");
    assert_fails(
        &run(&["bench", "--L", "8", "--heads", "3", "--kv-heads", "2"]),
        "divide",
    );
    assert_fails(&run(&["accuracy", "--L", "0"]), "at least 1");
    assert_fails(
        &run(&["accuracy", "--families", "spiky"]),
        "unknown input family",
    );
}

#[test]
fn bad_softmax_inputs_fail_cleanly() {
    let dir = tmpdir();
    let (sp, _) = scores_fixture(&dir);
    let out = dir.join("p.npy");
    let softmax = |extra: &[&str]| {
        let mut args = vec!["softmax", "--out", s(&out)];
        args.extend_from_slice(extra);
        run(&args)
    };
    fn with<'a>(a: &[&'a str]) -> Vec<&'a str> {
        [&["--variant", "normalized"][..], a].concat()
    }
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--threshold", "0"])),
        "threshold",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--threshold", "-4"])),
        "threshold",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--threshold", "4000000000"])),
        "threshold",
    );
    assert_fails(&softmax(&with(&["--scores", s(&sp)])), "--threshold");
    assert_fails(
        &softmax(&with(&[
            "--scores",
            s(&sp),
            "--threshold",
            "5",
            "--scales",
            "1,1,64",
        ])),
        "cannot be used with",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--scales", "0.1,0.2"])),
        "three",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--scales", "0.1,x,4"])),
        "not a number",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--scales", "0.1,0.1,0"])),
        "d must",
    );
    assert_fails(
        &softmax(&with(&["--scores", s(&sp), "--scales", "-0.1,0.1,4"])),
        "s_q",
    );
    assert_fails(
        &softmax(&["--scores", s(&sp), "--threshold", "5", "--variant", "exp"]),
        "invalid softmax variant",
    );
    // Wrong dtype and rank of the scores.
    let f = dir.join("f.npy");
    npy::write_f32(&f, &[6, 50], &[0.0; 300]).unwrap();
    assert_fails(
        &softmax(&with(&["--scores", s(&f), "--threshold", "5"])),
        "expected dtype int32",
    );
    let r1 = dir.join("r1.npy");
    npy::write_i32(&r1, &[300], &[0; 300]).unwrap();
    assert_fails(
        &softmax(&with(&["--scores", s(&r1), "--threshold", "5"])),
        "2-D",
    );
    let zero = dir.join("zero.npy");
    npy::write_i32(&zero, &[6, 0], &[]).unwrap();
    assert_fails(
        &softmax(&with(&["--scores", s(&zero), "--threshold", "5"])),
        "zero-length",
    );
    // Masks: wrong shape, wrong dtype.
    let m = dir.join("m.npy");
    npy::write(&m, &[5, 50], &[true; 250]).unwrap();
    assert_fails(
        &softmax(&with(&[
            "--scores",
            s(&sp),
            "--threshold",
            "5",
            "--mask",
            s(&m),
        ])),
        "shape",
    );
    npy::write_f32(&m, &[6, 50], &[1.0; 300]).unwrap();
    assert_fails(
        &softmax(&with(&[
            "--scores",
            s(&sp),
            "--threshold",
            "5",
            "--mask",
            s(&m),
        ])),
        "bool or uint8",
    );
}

/// The CLI's answer to hostile input: exit status 1 and exactly one `error: ` line that
/// contains `needle`.
fn assert_one_error(out: &Output, needle: &str) {
    assert_fails(out, needle);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
}

/// `bin()` with a resource limit set in the child, where the CLI runs natively. (Under
/// qemu-user the limit would apply to the emulator, which maps far more than the guest uses.)
#[cfg(target_os = "linux")]
fn limited(resource: libc::__rlimit_resource_t, bytes: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = bin();
    if emulator().is_none() {
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (setrlimit, signal) on plain values.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Past RLIMIT_FSIZE a write fails with EFBIG, as on a full disk, instead of
                // the default SIGXFSZ killing the process.
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    c
}

#[cfg(target_os = "linux")]
#[test]
fn hostile_npy_files_fail_fast_on_one_line() {
    let dir = tmpdir();
    let shape = AttnShape::new(1, 1, 8, 4);
    let (q, k, v) = write_qkv(&dir, &shape, false);
    let o = dir.join("o.npy");
    let run_q = |q: &Path| {
        run(&[
            "run",
            "--q",
            s(q),
            "--k",
            s(&k),
            "--v",
            s(&v),
            "--out",
            s(&o),
        ])
    };
    let hostile = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        npy::write_raw(&p, bytes).unwrap();
        p
    };

    // Brackets nested 10 000 deep (npyz took time doubling per level: 26 s at 22).
    for (open, close) in [("[", "]"), ("(", ")")] {
        let deep = format!("{}{}", open.repeat(10_000), close.repeat(10_000));
        for dict in [
            format!("{{'descr': {deep}, 'fortran_order': False, 'shape': (8, 4), }}"),
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {deep}, }}"),
        ] {
            let p = hostile("nested.npy", &npy_with_header(&dict));
            let t = std::time::Instant::now();
            let out = run_q(&p);
            assert!(t.elapsed().as_secs_f64() < 2.0, "{:?}", t.elapsed());
            assert_one_error(&out, "nested.npy");
        }
    }

    // A version 2.0 header claiming 4 GiB in a 585-byte file, under a 1 GiB address-space
    // limit (npyz reserved the 4 GiB and aborted).
    let mut bytes = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }");
    bytes.resize(585, b' ');
    bytes[6] = 2;
    bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = hostile("h4g.npy", &bytes);
    let out = limited(libc::RLIMIT_AS, 1 << 30)
        .args([
            "run",
            "--q",
            s(&p),
            "--k",
            s(&k),
            "--v",
            s(&v),
            "--out",
            s(&o),
        ])
        .output()
        .unwrap();
    assert_one_error(&out, "claims 4294967295 bytes but only 573 follow");

    let good = std::fs::read(&q).unwrap();
    let with = |at: usize, b: &[u8]| {
        let mut x = good.clone();
        x[at..at + b.len()].copy_from_slice(b);
        x
    };
    let header = |dict: &str| npy_with_header(dict)[..128].to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    for (name, bytes, needle) in [
        ("magic.npy", with(0, b"\x93NUMPZ"), "not a valid .npy"),
        ("version.npy", with(6, b"\x04\x00"), "version 4.0"),
        ("empty.npy", Vec::new(), "not a valid .npy"),
        ("short.npy", good[..9].to_vec(), "not a valid .npy"),
        ("header-cut.npy", good[..100].to_vec(), "header claims"),
        ("data-cut.npy", good[..good.len() - 1].to_vec(), "truncated"),
        ("trailing.npy", trailing, "7 bytes follow the data"),
        (
            "f8.npy",
            header("{'descr': '<f8', 'fortran_order': False, 'shape': (8, 4), }"),
            "expected dtype float32, found float64",
        ),
        (
            "fortran.npy",
            header("{'descr': '<f4', 'fortran_order': True, 'shape': (8, 4), }"),
            "Fortran order",
        ),
        (
            "overflow.npy",
            header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }",
            ),
            "overflows",
        ),
        (
            "mismatch.npy",
            [
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 5), }"),
                vec![0; 128],
            ]
            .concat(),
            "truncated: shape [8, 5] needs 160 bytes of data, the file has 128",
        ),
        (
            "keys.npy",
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 4), 'x': 0}"),
            "unexpected key",
        ),
    ] {
        let p = hostile(name, &bytes);
        assert_one_error(&run_q(&p), name);
        assert_one_error(&run_q(&p), needle);
    }
    assert!(!o.exists(), "no output after failures");
}

/// `dir`'s entries, sorted: shows leftover temporaries.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[cfg(target_os = "linux")]
#[test]
fn run_output_is_replaced_whole_or_not_at_all() {
    let dir = tmpdir();
    let shape = AttnShape::new(1, 1, 8, 4);
    let (q, k, v) = write_qkv(&dir, &shape, false);
    let o = dir.join("o.npy");
    std::fs::write(&o, b"the previous output").unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "run",
            "--q",
            s(&q),
            "--k",
            s(&k),
            "--v",
            s(&v),
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let before = entries(&dir);

    // A disk that fills part-way: the 256-byte output passes a 200-byte file size limit.
    if emulator().is_none() {
        let out = limited(libc::RLIMIT_FSIZE, 200)
            .args(args(&o))
            .output()
            .unwrap();
        assert_one_error(&out, "File too large");
        assert_eq!(std::fs::read(&o).unwrap(), b"the previous output");
        assert_eq!(entries(&dir), before, "no temporary left");
    }
    // A device that is full.
    if Path::new("/dev/full").exists() {
        let out = bin().args(args(Path::new("/dev/full"))).output().unwrap();
        assert_one_error(&out, "No space left on device");
    }
    // A directory that does not exist, and one nobody may write (sysfs refuses even root).
    let out = bin().args(args(&dir.join("nope/o.npy"))).output().unwrap();
    assert_one_error(&out, "does not exist");
    assert_eq!(entries(&dir), before);
    if Path::new("/sys/kernel").is_dir() {
        let out = bin()
            .args(args(Path::new("/sys/intattention-o.npy")))
            .output()
            .unwrap();
        assert_one_error(&out, "/sys/intattention-o.npy");
    }
    let out = bin().args(args(&dir)).output().unwrap();
    assert_one_error(&out, "is a directory");

    // --out naming an input, however spelled, is refused before anything is read or written.
    let q_bytes = std::fs::read(&q).unwrap();
    let hard = dir.join("q-link.npy");
    std::fs::hard_link(&q, &hard).unwrap();
    for (same, flag) in [
        (q.clone(), "--q"),
        (dir.join(".").join("q.npy"), "--q"),
        (hard.clone(), "--q"),
        (v.clone(), "--v"),
    ] {
        let out = bin().args(args(&same)).output().unwrap();
        assert_one_error(&out, &format!("is the same file as {flag}"));
    }
    assert_eq!(std::fs::read(&q).unwrap(), q_bytes);
    std::fs::remove_file(&hard).unwrap();

    // Success replaces the old file and leaves nothing else behind.
    assert_ok(&bin().args(args(&o)).output().unwrap());
    assert_eq!(npy::read_f32(&o).unwrap().shape, vec![8, 4]);
    assert_eq!(entries(&dir), before);
}

#[cfg(target_os = "linux")]
#[test]
fn softmax_writes_both_outputs_or_neither() {
    let dir = tmpdir();
    let (sp, _) = scores_fixture(&dir);
    let out = dir.join("p.npy");
    std::fs::write(&out, b"the previous probabilities").unwrap();
    let softmax = |out: &Path, sums: &Path| {
        run(&[
            "softmax",
            "--scores",
            s(&sp),
            "--threshold",
            "30000",
            "--variant",
            "deferred",
            "--out",
            s(out),
            "--sums",
            s(sums),
        ])
    };
    let before = entries(&dir);
    let unchanged = || {
        assert_eq!(std::fs::read(&out).unwrap(), b"the previous probabilities");
        assert_eq!(entries(&dir), before, "no temporary or partial output left");
    };
    // --sums in a missing directory: refused before anything is computed.
    assert_one_error(&softmax(&out, &dir.join("nope/sums.npy")), "does not exist");
    unchanged();
    // --sums where writing fails once --out is already written to its temporary.
    if Path::new("/sys/kernel").is_dir() {
        assert_one_error(
            &softmax(&out, Path::new("/sys/intattention-sums.npy")),
            "/sys/intattention-sums.npy",
        );
        unchanged();
    }
    if Path::new("/dev/full").exists() {
        assert_one_error(&softmax(&out, Path::new("/dev/full")), "No space left");
        unchanged();
    }
    // Outputs on inputs or on each other.
    assert_one_error(&softmax(&out, &out), "both name");
    assert_one_error(&softmax(&sp, &dir.join("s.npy")), "same file as --scores");
    assert_one_error(&softmax(&out, &sp), "same file as --scores");
    unchanged();
    let sums = dir.join("sums.npy");
    assert_ok(&softmax(&out, &sums));
    assert_eq!(npy::read_u8(&out).unwrap().shape, vec![6, 50]);
    assert_eq!(npy::read::<u32>(&sums).unwrap().shape, vec![6]);
}
