//! The hand-off between the strategies that find or build ACL and the shim build: what was
//! found, where, and which version.
//!
//! Note for the shim (build/shim.rs): `lib_names` and `origin` were added by the ACL discovery
//! side; the shim only needs `include_dirs`, `version` and `patched`. Linking ACL itself is
//! done by build/link.rs from `lib_dir`, `lib_names` and `static_libs`, after the shim's own
//! link lines.

use std::fmt;
use std::path::PathBuf;

/// ACL release families the shim knows how to bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclVersion {
    /// The 20.x series (Debian's 20.08): has libarm_compute_core.
    V20 { minor: u32 },
    /// SemVer releases from v52.0.0 on.
    V52 { minor: u32, patch: u32 },
}

impl AclVersion {
    /// The release's major number, the value of the shim's `INTATTENTION_ACL_MAJOR` define.
    pub fn major(self) -> u32 {
        match self {
            AclVersion::V20 { .. } => 20,
            AclVersion::V52 { .. } => 52,
        }
    }
}

impl fmt::Display for AclVersion {
    /// ACL's own tag spelling: `v20.08`, `v52.5.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclVersion::V20 { minor } => write!(f, "v20.{minor:02}"),
            AclVersion::V52 { minor, patch } => write!(f, "v52.{minor}.{patch}"),
        }
    }
}

/// Which strategy produced the install (for messages and the README's table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclOrigin {
    /// `ACL_ROOT_DIR` or `ACL_INCLUDE_DIR` + `ACL_LIB_DIR`.
    Prebuilt,
    /// Auto-detected system install (Debian/Ubuntu multiarch).
    System,
    /// Built from a source tree (`ACL_SOURCE_DIR`, `ComputeLibrary/`, or the pinned clone).
    Source,
}

impl fmt::Display for AclOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AclOrigin::Prebuilt => "prebuilt",
            AclOrigin::System => "system",
            AclOrigin::Source => "source",
        })
    }
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
    /// Libraries to link, in link order (dependents first), without `lib` prefix or suffix:
    /// e.g. `arm_compute`, `arm_compute_core` (20.x) or `arm_compute-static` (scons archives).
    pub lib_names: Vec<String>,
    pub origin: AclOrigin,
}
