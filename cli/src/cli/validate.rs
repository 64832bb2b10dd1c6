//! `intattention validate`: the same inputs through the native kernels and through ACL, every
//! pipeline, as a table or JSON. Integer results (S32 scores, IndexSoftmax's U8 output and row
//! sums, S32 P x V, and the whole IntAttention output) must match bit for bit; float results
//! within the tolerance each row states. Exits non-zero when a check fails.

use anyhow::Result;
use clap::Args;

use crate::data::Family;

// Without ACL the command only reports why it cannot run, reading none of its options.
#[cfg_attr(not(all(feature = "acl", target_arch = "aarch64")), allow(dead_code))]
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Sequence length (queries and keys).
    #[arg(long = "L", default_value_t = 256)]
    pub len: usize,
    /// Head dimension.
    #[arg(long = "d", default_value_t = 64)]
    pub d: usize,
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Input family: gaussian, peaked, flat, outlier or causal.
    #[arg(long, default_value = "gaussian")]
    pub family: Family,
    /// Causal mask (implied by the causal family).
    #[arg(long)]
    pub causal: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads for both backends (0: one per core); results do not depend on it.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(not(all(feature = "acl", target_arch = "aarch64")))]
pub fn run(_a: ValidateArgs) -> Result<()> {
    Err(intattention::backend::acl_unavailable().into())
}

#[cfg(all(feature = "acl", target_arch = "aarch64"))]
pub fn run(a: ValidateArgs) -> Result<()> {
    let report = with_acl::validate(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        with_acl::print_table(&report);
    }
    if !report.passed {
        anyhow::bail!("ACL and the native kernels disagree beyond the stated tolerances");
    }
    Ok(())
}

#[cfg(all(feature = "acl", target_arch = "aarch64"))]
mod with_acl {
    use anyhow::{bail, Result};
    use serde::Serialize;

    use super::ValidateArgs;
    use crate::data;
    use intattention::acl::{self, AclAttention, BuildInfo, HeadTrace};
    use intattention::{index_softmax, IndexSoftmaxParams, ScoreMask};
    use intattention::{reference, Attention, AttnShape, Error, Pipeline, QTensor, SoftmaxVariant};

    /// How the shim was built, as the report prints it.
    #[derive(Serialize)]
    struct Build {
        acl_major: u32,
        patched: bool,
        index_softmax_in_tree: bool,
    }

    impl From<BuildInfo> for Build {
        fn from(b: BuildInfo) -> Build {
            Build {
                acl_major: b.acl_major,
                patched: b.patched,
                index_softmax_in_tree: b.index_softmax_in_tree,
            }
        }
    }

    /// The shape, as the report prints it.
    #[derive(Serialize)]
    struct Shape {
        batch: usize,
        heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
    }

    impl From<AttnShape> for Shape {
        fn from(s: AttnShape) -> Shape {
            Shape {
                batch: s.batch,
                heads: s.heads,
                kv_heads: s.kv_heads,
                q_len: s.q_len,
                kv_len: s.kv_len,
                head_dim: s.head_dim,
            }
        }
    }

    #[derive(Serialize)]
    pub struct Report {
        acl: Build,
        shape: Shape,
        family: String,
        causal: bool,
        seed: u64,
        checks: Vec<Check>,
        pub passed: bool,
    }

    #[derive(Serialize)]
    pub struct Check {
        pipeline: String,
        quantity: String,
        /// "bit-exact" or the tolerance's rule.
        expect: String,
        /// Elements that differ at all.
        differing: usize,
        total: usize,
        max_abs_diff: f64,
        /// Largest allowed |ACL - native| (0 for bit-exact checks).
        tolerance: f64,
        /// pass, fail or skipped (with the reason in `note`).
        status: String,
        note: String,
    }

    impl Check {
        fn exact<T: PartialEq + Copy + Into<f64>>(
            pipe: &str,
            what: &str,
            acl: &[T],
            native: &[T],
        ) -> Check {
            let (differing, max) = diff(acl, native);
            let ok = differing == 0 && acl.len() == native.len();
            Check {
                pipeline: pipe.into(),
                quantity: what.into(),
                expect: "bit-exact".into(),
                differing,
                total: native.len(),
                max_abs_diff: max,
                tolerance: 0.0,
                status: if ok { "pass" } else { "fail" }.into(),
                note: String::new(),
            }
        }

        fn within<T: PartialEq + Copy + Into<f64>>(
            pipe: &str,
            what: &str,
            acl: &[T],
            native: &[T],
            tolerance: f64,
            rule: &str,
        ) -> Check {
            let (differing, max) = diff(acl, native);
            let ok = max <= tolerance && acl.len() == native.len();
            Check {
                pipeline: pipe.into(),
                quantity: what.into(),
                expect: rule.into(),
                differing,
                total: native.len(),
                max_abs_diff: max,
                tolerance,
                status: if ok { "pass" } else { "fail" }.into(),
                note: String::new(),
            }
        }

        fn skipped(pipe: &str, why: String) -> Check {
            Check {
                pipeline: pipe.into(),
                quantity: "output".into(),
                expect: "-".into(),
                differing: 0,
                total: 0,
                max_abs_diff: 0.0,
                tolerance: 0.0,
                status: "skipped".into(),
                note: why,
            }
        }
    }

    fn diff<T: PartialEq + Copy + Into<f64>>(a: &[T], b: &[T]) -> (usize, f64) {
        let mut n = a.len().abs_diff(b.len());
        let mut max = 0f64;
        for (&x, &y) in a.iter().zip(b) {
            if x != y {
                n += 1;
                max = max.max((x.into() - y.into()).abs());
            }
        }
        (n, max)
    }

    fn max_abs(x: &[f32]) -> f64 {
        x.iter().fold(0f64, |m, v| m.max(v.abs() as f64))
    }

    pub fn validate(a: &ValidateArgs) -> Result<Report> {
        if a.len == 0 || a.d == 0 || a.heads == 0 || a.batch == 0 {
            bail!("--L, --d, --heads and --batch must be at least 1");
        }
        let shape = AttnShape::new(a.batch, a.heads, a.len, a.d);
        let causal = a.causal || a.family.causal();
        let qkv = data::generate(a.family, &shape, a.seed)?;
        let (q, k, v) = (&qkv.q, &qkv.k, &qkv.v);
        let v_max = max_abs(v);
        let s_v = v_max / 127.0;
        // ACL quantizes per tensor: both sides run that scheme (at each finish's table bits).
        let base = |p: Pipeline| {
            Attention::new(p)
                .with_quantization(intattention::Quantization::PER_TENSOR)
                .with_causal(causal)
                .with_executor(crate::threads::executor(a.threads).expect("validate: threads"))
        };
        let mut checks = Vec::new();

        // IntAttention, every variant: the whole output and every intermediate bit for bit.
        for variant in SoftmaxVariant::ALL {
            let attn = base(Pipeline::IntAttention).with_variant(variant);
            let name = format!("intattn/{variant}");
            let native = attn.run(&shape, q, k, v)?;
            let (out, traces) = AclAttention::prepare(&attn, &shape)?.run_traced(q, k, v)?;
            let t = native_traces(&attn, &shape, q, k, v, &traces)?;
            if variant == SoftmaxVariant::Normalized {
                checks.push(Check::exact(
                    &name,
                    "S32 scores Q x K^T",
                    &flat(&traces, |t| &t.scores),
                    &flat(&t, |t| &t.scores),
                ));
            }
            checks.push(Check::exact(
                &name,
                "U8 P (IndexSoftmax)",
                &flat(&traces, |t| &t.probs),
                &flat(&t, |t| &t.probs),
            ));
            if variant == SoftmaxVariant::Deferred {
                checks.push(Check::exact(
                    &name,
                    "row sums of e (divisors)",
                    &flat(&traces, |t| &t.row_sums),
                    &flat(&t, |t| &t.row_sums),
                ));
            }
            checks.push(Check::exact(
                &name,
                "S32 P x V",
                &flat(&traces, |t| &t.o32),
                &flat(&t, |t| &t.o32),
            ));
            checks.push(Check::exact(&name, "f32 output", &out, &native));
        }

        // int8: exact GEMMs; P from ACL's f32 softmax and quantization may sit on the other
        // side of a rounding boundary (|dP| <= 1), which moves an output by at most
        // 127 s_v / 255 per flipped entry: the tolerance allows 8 such flips per row, 4 s_v.
        {
            let attn = base(Pipeline::Int8);
            let native = attn.run(&shape, q, k, v)?;
            let (out, traces) = AclAttention::prepare(&attn, &shape)?.run_traced(q, k, v)?;
            let t = native_traces(&attn, &shape, q, k, v, &traces)?;
            checks.push(Check::exact(
                "int8",
                "S32 scores Q x K^T",
                &flat(&traces, |t| &t.scores),
                &flat(&t, |t| &t.scores),
            ));
            checks.push(Check::within(
                "int8",
                "U8 P (f32 softmax, quantized)",
                &flat(&traces, |t| &t.probs),
                &flat(&t, |t| &t.probs),
                1.0,
                "|dP| <= 1 (rounding boundary)",
            ));
            checks.push(Check::exact(
                "int8",
                "S32 P x V (ACL's P)",
                &flat(&traces, |t| &t.o32),
                &flat(&t, |t| &t.o32),
            ));
            checks.push(Check::within(
                "int8",
                "f32 output",
                &out,
                &native,
                4.0 * s_v,
                "<= 4 s_v (8 flips of P per row)",
            ));
        }

        // fp32: ACL's exp is a polynomial (about 1e-6 relative) and its GEMMs sum in another
        // order: 2e-5 of max|V|.
        {
            let attn = base(Pipeline::Fp32);
            let native = attn.run(&shape, q, k, v)?;
            let out = AclAttention::prepare(&attn, &shape)?.run(q, k, v)?;
            checks.push(Check::within(
                "fp32",
                "f32 output",
                &out,
                &native,
                2e-5 * v_max,
                "<= 2e-5 max|V|",
            ));
        }

        // fp16: both round Q, K, V, S, P and O to f16 (2^-11 relative each), in different
        // orders: 1e-2 of max|V|. Needs an ACL built for Armv8.2-A.
        {
            let attn = base(Pipeline::Fp16);
            match AclAttention::prepare(&attn, &shape) {
                Err(Error::Acl(msg)) if msg.contains("F16") => {
                    checks.push(Check::skipped("fp16", format!("ACL: {msg}")))
                }
                Err(e) => return Err(e.into()),
                Ok(mut runner) => {
                    let native = attn.run(&shape, q, k, v)?;
                    let out = runner.run(q, k, v)?;
                    checks.push(Check::within(
                        "fp16",
                        "f32 output",
                        &out,
                        &native,
                        1e-2 * v_max,
                        "<= 1e-2 max|V|",
                    ));
                }
            }
        }

        let passed = checks.iter().all(|c| c.status != "fail");
        Ok(Report {
            acl: acl::build_info()?.into(),
            shape: shape.into(),
            family: a.family.to_string(),
            causal,
            seed: a.seed,
            checks,
            passed,
        })
    }

    fn flat<T: Copy>(traces: &[HeadTrace], f: impl Fn(&HeadTrace) -> &Vec<T>) -> Vec<T> {
        traces.iter().flat_map(|t| f(t).iter().copied()).collect()
    }

    /// The native counterparts of ACL's per-head intermediates, from the crate's public
    /// operations. P x V is recomputed on ACL's own P, so that it checks the GEMM alone.
    fn native_traces(
        attn: &Attention,
        shape: &AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        acl: &[HeadTrace],
    ) -> Result<Vec<HeadTrace>> {
        let (q, k, v) = (
            QTensor::quantize(q)?,
            QTensor::quantize(k)?,
            QTensor::quantize(v)?,
        );
        let (lq, lk, d) = (shape.q_len, shape.kv_len, shape.head_dim);
        let scale = attn.softmax_scale(d);
        let mut out = Vec::with_capacity(acl.len());
        for (bh, at) in acl.iter().enumerate() {
            let (b, h) = (bh / shape.heads, bh % shape.heads);
            let kv = b * shape.kv_heads + h / (shape.heads / shape.kv_heads);
            let qh = &q.data()[bh * lq * d..(bh + 1) * lq * d];
            let kh = &k.data()[kv * lk * d..(kv + 1) * lk * d];
            let vh = &v.data()[kv * lk * d..(kv + 1) * lk * d];
            let mut scores = vec![0i32; lq * lk];
            intattention::ops::gemm::gemm_s8s8_nt(qh, kh, lq, lk, d, &mut scores)?;
            let lens: Vec<usize> = (0..lq).map(|i| attn.valid_keys(shape, b, i)).collect();
            let mut probs = vec![0u8; lq * lk];
            let mut row_sums = Vec::new();
            if attn.pipeline() == Pipeline::IntAttention {
                let params = IndexSoftmaxParams::from_scales(
                    q.scale(),
                    k.scale(),
                    scale,
                    attn.table_bits(),
                    attn.clip(),
                    attn.variant(),
                )?;
                row_sums = index_softmax(
                    &scores,
                    lq,
                    lk,
                    &params,
                    ScoreMask::Prefix(&lens),
                    &mut probs,
                )?
                .into_vec();
            } else {
                let logit_scale = (q.scale() as f64 * k.scale() as f64 * scale as f64) as f32;
                let mut row = vec![0f32; lk];
                for i in 0..lq {
                    for (f, &s) in row.iter_mut().zip(&scores[i * lk..(i + 1) * lk]) {
                        *f = s as f32 * logit_scale;
                    }
                    reference::softmax_f32_row(&mut row, lens[i]);
                    for (p, &f) in probs[i * lk..(i + 1) * lk].iter_mut().zip(&row) {
                        *p = (f * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
                    }
                }
            }
            let mut o32 = vec![0i32; lq * d];
            intattention::ops::gemm::gemm_u8s8(&at.probs, vh, lq, d, lk, &mut o32)?;
            out.push(HeadTrace {
                scores,
                probs,
                row_sums,
                o32,
            });
        }
        Ok(out)
    }

    pub fn print_table(r: &Report) {
        println!(
            "validate: native vs ACL (ACL {}.x, IndexSoftmax {}), batch {} heads {} L {} d {}, {} inputs{}, seed {}",
            r.acl.acl_major,
            if r.acl.index_softmax_in_tree {
                "in the patched ACL"
            } else {
                "as the shim's out-of-tree kernel"
            },
            r.shape.batch,
            r.shape.heads,
            r.shape.q_len,
            r.shape.head_dim,
            r.family,
            if r.causal { ", causal" } else { "" },
            r.seed
        );
        let h = [
            "pipeline",
            "quantity",
            "expect",
            "differing",
            "max |diff|",
            "tolerance",
            "status",
        ];
        println!(
            "{:<20} {:<30} {:<32} {:>12} {:>12} {:>10}  {}",
            h[0], h[1], h[2], h[3], h[4], h[5], h[6]
        );
        for c in &r.checks {
            println!(
                "{:<20} {:<30} {:<32} {:>12} {:>12.3e} {:>10.3e}  {}{}",
                c.pipeline,
                c.quantity,
                c.expect,
                format!("{}/{}", c.differing, c.total),
                c.max_abs_diff,
                c.tolerance,
                c.status,
                if c.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", c.note)
                }
            );
        }
        println!(
            "{}",
            if r.passed {
                "all checks passed"
            } else {
                "SOME CHECKS FAILED"
            }
        );
    }
}
