//! Where attention runs: the native kernels of this crate, or ARM ComputeLibrary. Front ends
//! (the CLI, benchmarks) go through [`prepare`] so that one-time set-up (ACL's configure and
//! memory, the native workspace) is not timed with every run.

use std::fmt;
use std::str::FromStr;

use crate::attention::{Attention, AttnShape, Workspace};
use crate::error::{check_len, invalid, Error, Result};
use crate::tensor::TensorView;

/// An attention implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// This crate's kernels.
    Native,
    /// ARM ComputeLibrary (aarch64 builds with the `acl` feature).
    Acl,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Native => "native",
            Backend::Acl => "acl",
        })
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(Backend::Native),
            "acl" => Ok(Backend::Acl),
            _ => invalid("backend", s, "native or acl"),
        }
    }
}

/// Attention prepared for one shape and configuration, run many times on new inputs.
pub trait AttentionRunner {
    /// The backend this runner uses.
    fn backend(&self) -> Backend;

    /// Q, K, V contiguous as for [`Attention::run`]; returns the f32 output shaped like Q.
    ///
    /// # Errors
    /// As [`Attention::run`], and the backend's own errors.
    fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>>;

    /// [`AttentionRunner::run`] into `out` (shaped like Q). By default a copy of `run`'s
    /// result; backends that can write in place do.
    ///
    /// # Errors
    /// As [`AttentionRunner::run`], and [`Error::LengthMismatch`] for a wrong output length.
    fn run_into(&mut self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<()> {
        let o = self.run(q, k, v)?;
        check_len("output", o.len(), out.len())?;
        out.copy_from_slice(&o);
        Ok(())
    }
}

/// The native backend: the configuration, the shape and a workspace kept between runs.
struct NativeRunner {
    attn: Attention,
    shape: AttnShape,
    ws: Workspace,
}

impl NativeRunner {
    fn views<'a>(
        &self,
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
    ) -> Result<(
        TensorView<'a, f32>,
        TensorView<'a, f32>,
        TensorView<'a, f32>,
    )> {
        let s = &self.shape;
        let qd = [s.batch, s.heads, s.q_len, s.head_dim];
        let kd = [s.batch, s.kv_heads, s.kv_len, s.head_dim];
        Ok((
            TensorView::new(q, qd).map_err(|e| rename(e, "Q"))?,
            TensorView::new(k, kd).map_err(|e| rename(e, "K"))?,
            TensorView::new(v, kd).map_err(|e| rename(e, "V"))?,
        ))
    }
}

fn rename(e: Error, tensor: &'static str) -> Error {
    match e {
        Error::LengthMismatch {
            expected, found, ..
        } => Error::LengthMismatch {
            tensor,
            expected,
            found,
        },
        e => e,
    }
}

impl AttentionRunner for NativeRunner {
    fn backend(&self) -> Backend {
        Backend::Native
    }

    fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let (q, k, v) = self.views(q, k, v)?;
        self.attn.run_with(&mut self.ws, q, k, v)
    }

    fn run_into(&mut self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<()> {
        let (q, k, v) = self.views(q, k, v)?;
        self.attn.run_into(&mut self.ws, q, k, v, out)
    }
}

/// Prepares attention on a backend.
///
/// # Errors
/// Bad shapes or parameters ([`Attention::run`]'s checks); [`Error::AclUnavailable`] for ACL
/// in a build without it; ACL's own errors.
pub fn prepare(
    backend: Backend,
    attn: &Attention,
    shape: &AttnShape,
) -> Result<Box<dyn AttentionRunner>> {
    attn.check(shape)?;
    match backend {
        Backend::Native => Ok(Box::new(NativeRunner {
            attn: attn.clone(),
            shape: *shape,
            ws: Workspace::new(),
        })),
        Backend::Acl => prepare_acl(attn, shape),
    }
}

/// ACL: every function is configured here, once; each run only copies data and runs them.
#[cfg(intattention_acl)]
fn prepare_acl(attn: &Attention, shape: &AttnShape) -> Result<Box<dyn AttentionRunner>> {
    Ok(Box::new(crate::acl::AclAttention::prepare(attn, shape)?))
}

#[cfg(not(intattention_acl))]
fn prepare_acl(_attn: &Attention, _shape: &AttnShape) -> Result<Box<dyn AttentionRunner>> {
    Err(acl_unavailable())
}

/// Why this build has no ACL backend (set by build.rs), as an error.
pub fn acl_unavailable() -> Error {
    Error::AclUnavailable(
        option_env!("INTATTENTION_ACL_REASON")
            .unwrap_or("this build was made without ACL support")
            .to_string(),
    )
}
