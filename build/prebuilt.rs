//! Strategy b: an ACL that is already built, named by `ACL_ROOT_DIR` (or `ACL_INCLUDE_DIR` +
//! `ACL_LIB_DIR`), or installed by the system (Debian and Ubuntu's multiarch
//! `libarm-compute-dev`). pkg-config is not used: Debian's .pc files name a library that does
//! not exist (`-larm-compute_core`).

use std::path::{Path, PathBuf};

use crate::acl_install::{AclInstall, AclOrigin, AclVersion};
use crate::version;

/// What the user asked for, as read from the environment.
pub struct PrebuiltRequest {
    pub root: Option<PathBuf>,
    pub include_dir: Option<PathBuf>,
    pub lib_dir: Option<PathBuf>,
    /// `ACL_VERSION`, for installs whose libraries carry no version string.
    pub version: Option<String>,
    /// `ACL_STATIC`: link the static archives even where shared objects exist.
    pub prefer_static: bool,
}

/// Multiarch (include, lib) pairs where a system ACL may live for `triple`, most specific
/// first. Only Linux has a system ACL.
pub fn system_candidates(triple: &str) -> Vec<(PathBuf, PathBuf)> {
    if !triple.contains("-linux-") {
        return Vec::new();
    }
    let arch = triple.split('-').next().unwrap_or("aarch64");
    let multiarch = if triple.ends_with("-android") {
        return Vec::new();
    } else {
        format!("{arch}-linux-gnu")
    };
    vec![
        (
            PathBuf::from(format!("/usr/include/{multiarch}")),
            PathBuf::from(format!("/usr/lib/{multiarch}")),
        ),
        (
            PathBuf::from("/usr/include"),
            PathBuf::from(format!("/usr/lib/{multiarch}")),
        ),
        (
            PathBuf::from("/usr/local/include"),
            PathBuf::from("/usr/local/lib"),
        ),
    ]
}

/// Library file names that count as "libarm_compute is here".
const LIB_FILES: &[&str] = &[
    "libarm_compute.so",
    "libarm_compute.dylib",
    "libarm_compute-static.a",
    "libarm_compute.a",
];

fn has_acl_lib(dir: &Path) -> bool {
    LIB_FILES.iter().any(|f| dir.join(f).is_file())
}

/// The lib directory under an install root: `lib/`, `build/` (a scons tree), `lib64/`, the
/// root itself, then one level below `lib/` (release tarballs use `lib/<arch>-neon/`).
pub fn find_lib_dir(root: &Path) -> Option<PathBuf> {
    for sub in ["lib", "build", "lib64", ""] {
        let dir = if sub.is_empty() {
            root.to_path_buf()
        } else {
            root.join(sub)
        };
        if has_acl_lib(&dir) {
            return Some(dir);
        }
    }
    let mut nested: Vec<PathBuf> = std::fs::read_dir(root.join("lib"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && has_acl_lib(p))
        .collect();
    nested.sort();
    nested.into_iter().next()
}

/// The include directory under an install root: the one that holds `arm_compute/`.
pub fn find_include_dir(root: &Path) -> Option<PathBuf> {
    [root.join("include"), root.to_path_buf()]
        .into_iter()
        .find(|d| d.join("arm_compute/core/Types.h").is_file())
}

/// Include directories for the shim: the one with `arm_compute/`, plus its `include/` (52.x
/// keeps third-party headers such as `half/` there) when present.
pub fn include_dirs(include: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![include.to_path_buf()];
    let nested = include.join("include");
    if nested.is_dir() {
        dirs.push(nested);
    }
    dirs
}

/// The version of the ACL in `lib_dir`: `ACL_VERSION` if given, else the string embedded in
/// its library, else the headers' family (20.x has no `arm_compute/function_info/`).
pub fn detect_version(
    include: &Path,
    lib_dir: &Path,
    user_version: Option<&str>,
) -> Result<AclVersion, String> {
    if let Some(v) = user_version {
        return version::parse_tag(v);
    }
    for f in LIB_FILES {
        let path = lib_dir.join(f);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Some(v) = version::embedded_version(&bytes) {
                return version::parse_tag(&v)
                    .map_err(|e| format!("{e} (read from {})", path.display()));
            }
        }
    }
    let has_52_headers = include
        .join("arm_compute/function_info/GEMMInfo.h")
        .is_file();
    let has_core_lib = [
        "libarm_compute_core.so",
        "libarm_compute_core-static.a",
        "libarm_compute_core.dylib",
    ]
    .iter()
    .any(|f| lib_dir.join(f).is_file());
    match (has_52_headers, has_core_lib) {
        (false, true) => Ok(AclVersion::V20 { minor: 8 }),
        _ => Err(format!(
            "cannot tell which ACL version is in {} (no arm_compute_version string in its \
             libraries); set ACL_VERSION, e.g. ACL_VERSION=v52.5.0",
            lib_dir.display()
        )),
    }
}

/// Builds the hand-off for an ACL whose headers are in `include` and libraries in `lib_dir`.
pub fn describe(
    include: &Path,
    lib_dir: &Path,
    user_version: Option<&str>,
    prefer_static: bool,
    origin: AclOrigin,
) -> Result<AclInstall, String> {
    if !include.join("arm_compute/core/Types.h").is_file() {
        return Err(format!(
            "{} does not hold ACL headers (arm_compute/core/Types.h)",
            include.display()
        ));
    }
    if !has_acl_lib(lib_dir) {
        return Err(format!(
            "{} holds no ACL library (looked for {})",
            lib_dir.display(),
            LIB_FILES.join(", ")
        ));
    }
    let version = detect_version(include, lib_dir, user_version)?;
    let (static_libs, lib_names) = choose_libs(lib_dir, version, prefer_static)?;
    Ok(AclInstall {
        include_dirs: include_dirs(include),
        lib_dir: lib_dir.to_path_buf(),
        version,
        patched: false,
        static_libs,
        lib_names,
        origin,
    })
}

/// Which files to link: shared objects when present (unless static is preferred), else the
/// static archives; 20.x adds arm_compute_core after arm_compute.
pub fn choose_libs(
    lib_dir: &Path,
    version: AclVersion,
    prefer_static: bool,
) -> Result<(bool, Vec<String>), String> {
    let shared = lib_dir.join("libarm_compute.so").is_file()
        || lib_dir.join("libarm_compute.dylib").is_file();
    let static_scons = lib_dir.join("libarm_compute-static.a").is_file();
    let static_cmake = lib_dir.join("libarm_compute.a").is_file();
    let with_core = matches!(version, AclVersion::V20 { .. });
    let names = |base: &str, suffix: &str| {
        let mut v = vec![format!("{base}{suffix}")];
        if with_core {
            v.push(format!("{base}_core{suffix}"));
        }
        v
    };
    if shared && !(prefer_static && (static_scons || static_cmake)) {
        Ok((false, names("arm_compute", "")))
    } else if static_scons {
        Ok((true, names("arm_compute", "-static")))
    } else if static_cmake {
        Ok((true, names("arm_compute", "")))
    } else {
        Err(format!("no usable ACL library in {}", lib_dir.display()))
    }
}

/// Resolves an explicit request (`ACL_ROOT_DIR` or the include/lib pair). `Ok(None)` when the
/// user set nothing.
pub fn from_request(req: &PrebuiltRequest) -> Result<Option<AclInstall>, String> {
    let (include, lib) = match (&req.include_dir, &req.lib_dir, &req.root) {
        (Some(i), Some(l), _) => (i.clone(), l.clone()),
        (Some(_), None, None) | (None, Some(_), None) => {
            return Err(
                "ACL_INCLUDE_DIR and ACL_LIB_DIR must be set together (or set ACL_ROOT_DIR)"
                    .to_string(),
            )
        }
        (i, l, Some(root)) => {
            if !root.is_dir() {
                return Err(format!(
                    "ACL_ROOT_DIR={} is not a directory",
                    root.display()
                ));
            }
            let include = match i {
                Some(i) => i.clone(),
                None => find_include_dir(root).ok_or_else(|| {
                    format!(
                        "ACL_ROOT_DIR={} has no arm_compute/core/Types.h (in include/ or at its top)",
                        root.display()
                    )
                })?,
            };
            let lib = match l {
                Some(l) => l.clone(),
                None => find_lib_dir(root).ok_or_else(|| {
                    format!(
                        "ACL_ROOT_DIR={} has no libarm_compute (looked in lib/, build/, lib64/, the root and lib/*/)",
                        root.display()
                    )
                })?,
            };
            (include, lib)
        }
        (None, None, None) => return Ok(None),
    };
    describe(
        &include,
        &lib,
        req.version.as_deref(),
        req.prefer_static,
        AclOrigin::Prebuilt,
    )
    .map(Some)
}

/// The first system install among `candidates` that the shim supports. Installs of other
/// versions are skipped with the reason (the caller prints it as a warning).
pub fn find_system(
    candidates: &[(PathBuf, PathBuf)],
    prefer_static: bool,
) -> (Option<AclInstall>, Vec<String>) {
    let mut skipped = Vec::new();
    for (include, lib) in candidates {
        if !include.join("arm_compute/core/Types.h").is_file() || !has_acl_lib(lib) {
            continue;
        }
        match describe(include, lib, None, prefer_static, AclOrigin::System) {
            Ok(install) => return (Some(install), skipped),
            Err(e) => skipped.push(format!("skipped the ACL in {}: {e}", lib.display())),
        }
    }
    (None, skipped)
}
