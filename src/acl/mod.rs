//! The ARM ComputeLibrary (ACL) backend: safe wrappers over the C shim in `wrapper/`.
//!
//! - `ffi`: the bindgen bindings of `wrapper/intattention_acl.h` (the only header bindgen sees)
//!   and the status-to-[`Error`] conversion.
//! - [`tensor`]: ACL tensors that own their memory or borrow a caller's slice.
//! - [`functions`]: the ACL operations (GEMM, GEMMLowp, softmax, cast, quantize, dequantize,
//!   transpose) and the shim's own IndexSoftmax and logits kernels.
//! - [`pipeline`]: the four attention pipelines of docs/numerics.md (section 5) on ACL.
//!
//! Built only with `cfg(intattention_acl)`, which build.rs sets after it found ACL and compiled
//! the shim. ACL runs every function through one process-wide scheduler, so this module
//! serialises configuring and running functions behind one lock.

mod ffi;
pub mod functions;
pub mod pipeline;
pub mod tensor;

use std::sync::{Mutex, MutexGuard};

pub use functions::{Function, GemmOptions};
pub use pipeline::{AclAttention, HeadTrace};
pub use tensor::{DataType, Element, Layout, Quantization, Tensor, TensorDesc};

pub(crate) use crate::error::{Error, Result};

/// State shared by every ACL call of the process (ACL's scheduler is a singleton).
pub(crate) struct Global {
    /// Thread count given to functions configured from now on (0: ACL's default).
    requested: u32,
    /// What the scheduler is set to now, if this module set it.
    current: Option<u32>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    requested: 0,
    current: None,
});

/// Locks ACL for one configure or run. A panic while holding the lock leaves ACL's state as
/// consistent as ACL leaves it, so a poisoned lock is taken over.
pub(crate) fn lock() -> MutexGuard<'static, Global> {
    GLOBAL.lock().unwrap_or_else(|p| p.into_inner())
}

impl Global {
    pub(crate) fn requested(&self) -> u32 {
        self.requested
    }

    /// Sets the scheduler's thread count, only when it differs from the last one set. A
    /// function runs with the count it was configured with: ACL sizes per-thread working
    /// space at configure time.
    pub(crate) fn use_threads(&mut self, threads: u32) -> Result<()> {
        if self.current != Some(threads) {
            // SAFETY: plain value argument; the shim catches every exception.
            ffi::check(unsafe { ffi::ia_scheduler_set_threads(threads) })?;
            self.current = Some(threads);
        }
        Ok(())
    }
}

/// Sets the number of threads ACL uses for functions configured from now on (0: one per
/// core, ACL's default). Functions configured earlier keep their own count.
pub fn set_threads(threads: usize) -> Result<()> {
    let t =
        u32::try_from(threads).map_err(|_| Error::Acl(format!("{threads} threads is too many")))?;
    lock().requested = t;
    Ok(())
}

/// The thread count ACL's scheduler runs with for a request of `threads` (0: its default).
pub fn scheduler_threads(threads: usize) -> Result<usize> {
    let t =
        u32::try_from(threads).map_err(|_| Error::Acl(format!("{threads} threads is too many")))?;
    let mut g = lock();
    g.use_threads(t)?;
    let mut n = 0u32;
    // SAFETY: `n` is a valid out-pointer for the duration of the call.
    ffi::check(unsafe { ffi::ia_scheduler_threads(&mut n) })?;
    Ok(n as usize)
}

/// Self-test of the shim's scheduler: runs a kernel that throws on every ACL worker thread (never
/// on the calling one) with `threads` threads, which must come back as [`Error::Acl`] carrying
/// the kernel's message instead of ending the process (a C++ exception that leaves a thread
/// calls `std::terminate`). Functions configured later use the thread count they ask for.
#[doc(hidden)]
pub fn selftest_worker_exception(threads: usize) -> Result<()> {
    let t = u32::try_from(threads).map_err(|_| Error::InvalidParameter {
        name: "threads",
        value: threads.to_string(),
        expected: "at most u32::MAX",
    })?;
    let mut g = lock();
    // The self-test leaves the scheduler at `t` threads: forget what this module set.
    g.current = None;
    // SAFETY: plain value argument; the shim catches every exception.
    ffi::check(unsafe { ffi::ia_selftest_worker_exception(t) })
}

/// How the shim was built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// 20 or 52: the ACL family the shim was compiled against.
    pub acl_major: u32,
    /// The ACL in use carries our IndexSoftmax patch.
    pub patched: bool,
    /// Every IndexSoftmax function runs inside ACL (`NEIndexSoftmaxLayer`, from our patch)
    /// rather than as the shim's out-of-tree kernel.
    pub index_softmax_in_tree: bool,
}

/// How the shim in this build was compiled, and whether its ACL carries our patch.
///
/// # Errors
/// [`Error::Acl`] if the shim cannot report it.
pub fn build_info() -> Result<BuildInfo> {
    let mut info = ffi::ia_build_info::default();
    // SAFETY: `info` is a valid out-pointer for the duration of the call.
    ffi::check(unsafe { ffi::ia_build_info_get(&mut info) })?;
    Ok(BuildInfo {
        acl_major: info.acl_major,
        patched: info.acl_patched != 0,
        index_softmax_in_tree: info.index_softmax_in_tree != 0,
    })
}

/// An argument error of the ACL wrappers (reported as [`Error::Acl`]).
pub(crate) fn param_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Acl(msg.into()))
}

/// A shape error of the ACL wrappers (reported as [`Error::Acl`]).
pub(crate) fn shape_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Acl(msg.into()))
}
