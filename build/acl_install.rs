//! The hand-off between the strategies that find or build ACL and the shim build: what was
//! found, where, and which version.

use std::path::PathBuf;

/// ACL release families the shim knows how to bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclVersion {
    /// The 20.x series (Debian's 20.08): has libarm_compute_core.
    V20 { minor: u32 },
    /// SemVer releases from v52.0.0 on.
    V52 { minor: u32, patch: u32 },
}

/// An ACL the crate can compile its shim against and link.
#[derive(Clone, Debug)]
pub struct AclInstall {
    /// Directories holding `arm_compute/` and `support/` headers (and `include/` on 52.x).
    pub include_dirs: Vec<PathBuf>,
    /// Directory holding the ACL libraries.
    pub lib_dir: PathBuf,
    pub version: AclVersion,
    /// Our IndexSoftmax patch from `patches/` is compiled into this ACL (source builds only);
    /// otherwise the shim runs IndexSoftmax as an out-of-tree kernel.
    pub patched: bool,
    /// Link the `-static` archives instead of shared objects.
    pub static_libs: bool,
}
