//! Where attention runs: the native kernels of this crate, or ARM ComputeLibrary.
//!
//! Front ends (the CLI, benchmarks) go through [`prepare`] so that one-time set-up (ACL's
//! configure, weight packing) is not timed with every run.

use std::fmt;
use std::str::FromStr;

use crate::attention::{Attention, AttnShape};
use crate::error::{param_err, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Native,
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
            _ => param_err(format!("unknown backend '{s}' (expected native or acl)")),
        }
    }
}

/// Attention prepared for one shape and configuration, run many times on new inputs.
pub trait AttentionRunner {
    fn backend(&self) -> Backend;
    /// Q, K, V as for [`Attention::run`]; returns the f32 output shaped like Q.
    fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>>;
    /// [`AttentionRunner::run`] into `out` (shaped like Q). By default a copy of `run`'s
    /// result; backends that can write in place do.
    fn run_into(&mut self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<()> {
        let o = self.run(q, k, v)?;
        if o.len() != out.len() {
            return Err(Error::Shape(format!(
                "the output has {} elements, the result {}",
                out.len(),
                o.len()
            )));
        }
        out.copy_from_slice(&o);
        Ok(())
    }
}

struct NativeRunner {
    attn: Attention,
    shape: AttnShape,
}

impl AttentionRunner for NativeRunner {
    fn backend(&self) -> Backend {
        Backend::Native
    }
    fn run(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        self.attn.run(&self.shape, q, k, v)
    }
    fn run_into(&mut self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) -> Result<()> {
        self.attn.run_into(&self.shape, q, k, v, out)
    }
}

/// Prepares attention on a backend.
pub fn prepare(
    backend: Backend,
    attn: &Attention,
    shape: &AttnShape,
) -> Result<Box<dyn AttentionRunner>> {
    match backend {
        Backend::Native => Ok(Box::new(NativeRunner {
            attn: attn.clone(),
            shape: *shape,
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
