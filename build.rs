//! Build script: decides whether this build has the ARM ComputeLibrary (ACL) backend, finds
//! or builds ACL, then compiles the C shim with its bindings. Each step lives in `build/`;
//! the README's "On ARM" section describes them for users. Strategies, in order:
//!
//! a. ACL off (no `acl` feature, which is opt-in; not aarch64; docs.rs): the crate builds
//!    without it, and without the feature this script uses no build-dependency at all.
//! b. A built ACL: `ACL_ROOT_DIR` (or `ACL_INCLUDE_DIR` + `ACL_LIB_DIR`).
//! c. A source tree: `ACL_SOURCE_DIR`, patched (and the patch verified) and built in a cache.
//! b. The system's ACL (Debian/Ubuntu multiarch), unless `INTATTENTION_ACL_NO_SYSTEM`.
//! c. The git-ignored `ComputeLibrary/` checkout beside Cargo.toml.
//! d. A clone of the pinned release, then as c; offline, one error naming the variables.
//!
//! A failure of an explicit setting (b or c) stops the build with its reason: silently
//! building something else than what the user named would hide the mistake.

// Without the `acl` feature only `env` and `support` are compiled: the build script then has
// no build-dependencies at all (bindgen, cc and cmake are optional, enabled by `acl`).
#[cfg(feature = "acl")]
#[path = "build/acl_install.rs"]
mod acl_install;
#[cfg(feature = "acl")]
#[path = "build/archive.rs"]
mod archive;
#[cfg(feature = "acl")]
#[path = "build/cache.rs"]
mod cache;
#[cfg(feature = "acl")]
#[path = "build/download.rs"]
mod download;
// Without the feature only `Env::var` is used.
#[cfg_attr(not(feature = "acl"), allow(dead_code))]
#[path = "build/env.rs"]
mod env;
#[cfg(feature = "acl")]
#[path = "build/link.rs"]
mod link;
#[cfg(feature = "acl")]
#[path = "build/patch.rs"]
mod patch;
#[cfg(feature = "acl")]
#[path = "build/prebuilt.rs"]
mod prebuilt;
#[cfg(feature = "acl")]
#[path = "build/scons.rs"]
mod scons;
#[cfg(feature = "acl")]
#[path = "build/shim.rs"]
mod shim;
#[cfg(feature = "acl")]
#[path = "build/source.rs"]
mod source;
#[path = "build/support.rs"]
mod support;
#[cfg(feature = "acl")]
#[path = "build/version.rs"]
mod version;

use std::path::{Path, PathBuf};

use env::Env;

/// What cargo tells every build script.
// Without the `acl` feature only the fields strategy a reads are used.
#[cfg_attr(not(feature = "acl"), allow(dead_code))]
struct Cargo {
    target: String,
    host: String,
    target_arch: String,
    target_os: String,
    out_dir: PathBuf,
    manifest_dir: PathBuf,
    acl_feature: bool,
    jobs: u32,
}

impl Cargo {
    fn from_env() -> Cargo {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Cargo {
            target: var("TARGET"),
            host: var("HOST"),
            target_arch: var("CARGO_CFG_TARGET_ARCH"),
            target_os: var("CARGO_CFG_TARGET_OS"),
            out_dir: PathBuf::from(var("OUT_DIR")),
            manifest_dir: PathBuf::from(var("CARGO_MANIFEST_DIR")),
            acl_feature: std::env::var_os("CARGO_FEATURE_ACL").is_some(),
            jobs: var("NUM_JOBS").parse().unwrap_or(1),
        }
    }
}

fn main() {
    watch_own_files();
    println!("cargo:rustc-check-cfg=cfg(intattention_acl)");
    let cargo = Cargo::from_env();
    let env = Env::new(&cargo.target);

    // a.
    let docs_rs = env.var("DOCS_RS").is_some();
    match support::acl_off_reason(&support::BuildTarget {
        triple: &cargo.target,
        arch: &cargo.target_arch,
        acl_feature: cargo.acl_feature,
        docs_rs,
    }) {
        Some(reason) => acl_off(&reason),
        // b, c, d: only reached with the `acl` feature (acl_off_reason says so otherwise).
        #[cfg(feature = "acl")]
        None => with_acl(&cargo, &env),
        #[cfg(not(feature = "acl"))]
        None => unreachable!("acl_off_reason answers for builds without the `acl` feature"),
    }
}

/// Strategies b, c and d, then the shim and the link lines.
#[cfg(feature = "acl")]
fn with_acl(cargo: &Cargo, env: &Env) {
    let install = match find_or_build_acl(cargo, env) {
        Ok(install) => install,
        Err(message) => fail(&message),
    };

    // The shim first: its archive must precede ACL's libraries on the link line.
    match shim::build(&install, &cargo.out_dir) {
        Ok(()) => {
            for line in link::link_lines(&install, &cargo.target_os) {
                println!("{line}");
            }
            println!("cargo:rustc-cfg=intattention_acl");
            // Which ACL this build linked, for `--backend acl` reports.
            println!(
                "cargo:rustc-env=INTATTENTION_ACL_LINKED={} ({}, {}{})",
                install.version,
                install.origin,
                install.lib_dir.display(),
                if install.patched {
                    ", IndexSoftmax patch verified"
                } else {
                    ""
                }
            );
        }
        Err(reason) => {
            println!("cargo:warning=intattention: ACL backend off: {reason}");
            acl_off(&reason);
        }
    }
}

/// The order of strategies b, c and d (see the top of this file).
#[cfg(feature = "acl")]
fn find_or_build_acl(cargo: &Cargo, env: &Env) -> Result<acl_install::AclInstall, String> {
    let prefer_static = env.flag("ACL_STATIC");
    let path = |name: &str| env.var(name).map(PathBuf::from);

    let request = prebuilt::PrebuiltRequest {
        root: path("ACL_ROOT_DIR"),
        include_dir: path("ACL_INCLUDE_DIR"),
        lib_dir: path("ACL_LIB_DIR"),
        version: env.var("ACL_VERSION"),
        prefer_static,
    };
    if let Some(install) = prebuilt::from_request(&request)? {
        return Ok(install);
    }

    let source_dir = source::source_dir(path("ACL_SOURCE_DIR"), &cargo.manifest_dir);
    if let Some((dir, true)) = &source_dir {
        return build_source(dir, cargo, env)
            .map_err(|e| format!("intattention: ACL_SOURCE_DIR={}: {e}", dir.display()));
    }

    if !env.flag("INTATTENTION_ACL_NO_SYSTEM") {
        let candidates = prebuilt::system_candidates(&cargo.target);
        let (found, skipped) = prebuilt::find_system(&candidates, prefer_static);
        for reason in skipped {
            println!("cargo:warning=intattention: {reason}");
        }
        if let Some(install) = found {
            return Ok(install);
        }
    }

    if let Some((dir, false)) = &source_dir {
        return build_source(dir, cargo, env)
            .map_err(|e| format!("intattention: {}: {e}", dir.display()));
    }

    download_and_build(cargo, env)
}

/// Strategy c for one tree.
#[cfg(feature = "acl")]
fn build_source(dir: &Path, cargo: &Cargo, env: &Env) -> Result<acl_install::AclInstall, String> {
    let tool = if download::have_program("scons") {
        source::Tool::Scons
    } else if download::have_program("cmake") {
        source::Tool::Cmake
    } else {
        return Err(
            "building ACL needs scons (or, much slower, cmake); neither is installed".to_string(),
        );
    };
    let cache_root = cache_root(cargo, env);
    let extra_scons_args: Vec<String> = env
        .var("INTATTENTION_ACL_SCONS_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let arch = scons::choose_arch(&scons::ArchRequest {
        target: &cargo.target,
        host: &cargo.host,
        requested: env.var("INTATTENTION_ACL_ARCH").as_deref(),
        build_machine_features: scons::build_machine_features,
    })?;
    let build = source::SourceBuild {
        target: &cargo.target,
        host: &cargo.host,
        cache_root: &cache_root,
        patches_dir: &cargo.manifest_dir.join("patches"),
        jobs: cargo.jobs,
        toolchain: target_toolchain()?,
        arch,
        extra_scons_args,
    };
    source::build(dir, &build, tool)
}

/// Strategy d: the pinned release, cloned once into the cache.
#[cfg(feature = "acl")]
fn download_and_build(cargo: &Cargo, env: &Env) -> Result<acl_install::AclInstall, String> {
    let cache_root = cache_root(cargo, env);
    let tree = cache_root.join(format!("ComputeLibrary-{}", version::PINNED_TAG));
    if !tree.join("SConscript").is_file() {
        let connectivity = download::Connectivity {
            cargo_offline: env.flag("CARGO_NET_OFFLINE"),
            have_git: download::have_program("git"),
            have_build_tool: download::have_program("scons") || download::have_program("cmake"),
        };
        if let Some(reason) = download::offline_reason(&connectivity, download::remote_reachable) {
            return Err(download::offline_error(&reason));
        }
        std::fs::create_dir_all(&cache_root)
            .map_err(|e| format!("cannot create {}: {e}", cache_root.display()))?;
        let partial = cache_root.join(format!(
            "ComputeLibrary-{}.partial-{}",
            version::PINNED_TAG,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&partial);
        download::clone_pinned(&partial)?;
        if std::fs::rename(&partial, &tree).is_err() && !tree.join("SConscript").is_file() {
            return Err(format!(
                "cannot move {} to {}",
                partial.display(),
                tree.display()
            ));
        }
        let _ = std::fs::remove_dir_all(&partial);
    }
    let found = source::tree_version(&tree)?;
    if found != version::PINNED_TAG {
        return Err(format!(
            "{} says {found} in its SConscript, expected {}; remove it to fetch again",
            tree.display(),
            version::PINNED_TAG
        ));
    }
    build_source(&tree, cargo, env)
}

#[cfg(feature = "acl")]
fn cache_root(cargo: &Cargo, env: &Env) -> PathBuf {
    cache::cache_root(
        env.var("INTATTENTION_ACL_CACHE").as_deref(),
        &cargo.manifest_dir,
        &cargo.out_dir,
    )
}

/// The target's C++ compiler, as the `cc` crate resolves it (CXX_<target>, CXX, cross
/// defaults such as aarch64-linux-gnu-g++).
#[cfg(feature = "acl")]
fn target_toolchain() -> Result<scons::Toolchain, String> {
    let compiler = cc::Build::new()
        .cpp(true)
        .cargo_metadata(false)
        .try_get_compiler()
        .map_err(|e| format!("no C++ compiler for the target: {e}"))?;
    Ok(scons::split_toolchain(&compiler.path().to_string_lossy()))
}

/// Strategy a's outcome (or a shim that could not be built): no ACL, and why.
fn acl_off(reason: &str) {
    println!(
        "cargo:rustc-env=INTATTENTION_ACL_REASON={}",
        one_line(reason)
    );
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Ends the build with one message; cargo shows a failed build script's stderr.
#[cfg(feature = "acl")]
fn fail(message: &str) -> ! {
    if message.starts_with("intattention:") {
        eprintln!("{message}");
    } else {
        eprintln!("intattention: {message}");
    }
    std::process::exit(1);
}

fn watch_own_files() {
    for path in ["build.rs", "build", "patches", "wrapper"] {
        println!("cargo:rerun-if-changed={path}");
    }
    // Only when present: a path that does not exist makes cargo rerun the script every time.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let local = Path::new(&manifest).join("ComputeLibrary/SConscript");
    if local.is_file() {
        println!("cargo:rerun-if-changed=ComputeLibrary/SConscript");
    }
}
