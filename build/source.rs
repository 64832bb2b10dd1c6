//! Strategy c: build ACL from a source tree (`ACL_SOURCE_DIR`, the git-ignored
//! `ComputeLibrary/` checkout, or the pinned clone of strategy d). The tree is never modified:
//! it is copied into the cache under a key of (version, commit, patch set, build arguments),
//! patched there with `patches/*.patch` (build/patch.rs: applied wherever the cache lies, then
//! read back), and built with scons (or, where scons is missing, with ACL's CMake, which cannot
//! be reduced to our operators and takes much longer). The built archive must define the
//! symbols each patch declares (build/archive.rs), after the build and on every cache hit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::acl_install::{AclInstall, AclOrigin};
use crate::archive;
use crate::cache::{self, CacheInputs};
use crate::patch;
use crate::scons::{self, ArchChoice, SconsConfig, Toolchain};
use crate::version;

/// What the source build needs from cargo and the environment.
pub struct SourceBuild<'a> {
    pub target: &'a str,
    pub host: &'a str,
    pub cache_root: &'a Path,
    pub patches_dir: &'a Path,
    pub jobs: u32,
    /// The target's C++ compiler as the `cc` crate found it.
    pub toolchain: Toolchain,
    /// The instruction set (scons `arch`, `multi_isa`), from build/scons.rs' `choose_arch`.
    pub arch: ArchChoice,
    pub extra_scons_args: Vec<String>,
}

/// Marker written once a cache entry is complete; an entry without it is ignored.
const COMPLETE: &str = ".complete";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tool {
    Scons,
    Cmake,
}

/// The patches to apply, sorted by name.
pub fn read_patches(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut patches = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(patches),
    };
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "patch") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let body =
                fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            patches.push((name, body));
        }
    }
    patches.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(patches)
}

/// The ACL version of a source tree, from its SConscript.
pub fn tree_version(src: &Path) -> Result<String, String> {
    let path = src.join("SConscript");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "{} is not an ACL source tree (cannot read SConscript: {e})",
            src.display()
        )
    })?;
    version::sconscript_version(&text)
        .ok_or_else(|| format!("no VERSION line in {}", path.display()))
}

/// The tree's git commit, if it is a git checkout (part of the cache key, so that a checkout
/// moved to another commit of the same version is rebuilt).
fn tree_commit(src: &Path) -> String {
    if !src.join(".git").exists() {
        return String::new();
    }
    Command::new("git")
        .arg("-C")
        .arg(src)
        .args(["rev-parse", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Builds (or finds in the cache) the ACL of the source tree `src`.
pub fn build(src: &Path, b: &SourceBuild<'_>, tool: Tool) -> Result<AclInstall, String> {
    let version_tag = tree_version(src)?;
    let version = version::check_source_version(&version_tag)?;
    let patches = read_patches(b.patches_dir)?;
    let os =
        scons::scons_os(b.target).ok_or_else(|| format!("ACL cannot be built for {}", b.target))?;
    let cross_prefix = (b.target != b.host).then_some(b.toolchain.prefix.as_str());
    // Symbols the patched library must define (each patch's `Provides-Symbol:` lines).
    let symbols: Vec<String> = patches
        .iter()
        .flat_map(|(_, body)| patch::provided_symbols(&String::from_utf8_lossy(body)))
        .collect();

    // Arguments as they enter the key: paths are placeholders (the key names the path).
    let key_args = match tool {
        Tool::Scons => scons::scons_args(&SconsConfig {
            os,
            arch: &b.arch,
            cross_prefix,
            build_dir: Path::new("build"),
            build_config: Path::new("build_config.json"),
            jobs: 1,
            extra: &b.extra_scons_args,
        }),
        Tool::Cmake => scons::cmake_defines()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    };
    let commit = tree_commit(src);
    let key = cache::cache_key(&CacheInputs {
        version: &version_tag,
        source_id: &commit,
        patch_hash: cache::patch_set_hash(&patches),
        tool: match tool {
            Tool::Scons => "scons",
            Tool::Cmake => "cmake",
        },
        args: &key_args,
        target: b.target,
    });
    let entry = b.cache_root.join(&key);
    let (include_dirs, lib_dir, lib_names, archive) = match tool {
        Tool::Scons => (
            vec![entry.join("src"), entry.join("src/include")],
            entry.join("build"),
            vec!["arm_compute-static".to_string()],
            "build/libarm_compute-static.a",
        ),
        Tool::Cmake => (
            vec![entry.join("cmake/include")],
            entry.join("cmake/lib"),
            vec!["arm_compute".to_string()],
            "cmake/lib/libarm_compute.a",
        ),
    };
    let install = AclInstall {
        include_dirs,
        lib_dir,
        version,
        patched: !patches.is_empty(),
        static_libs: true,
        lib_names,
        origin: AclOrigin::Source,
    };
    if entry.join(COMPLETE).is_file() {
        // Quiet: cargo replays a build script's warnings whenever it reuses its output, and a
        // cache hit is the normal case. The check is cheap (the archive's index only).
        check_symbols(&entry.join(archive), &symbols).map_err(|e| {
            format!(
                "the cached ACL in {} {e}; remove that directory to rebuild it",
                entry.display()
            )
        })?;
        return Ok(install);
    }

    fs::create_dir_all(b.cache_root).map_err(|e| {
        format!(
            "cannot create the ACL cache {}: {e}",
            b.cache_root.display()
        )
    })?;
    let work = b
        .cache_root
        .join(format!("{key}.partial-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| format!("cannot clear {}: {e}", work.display()))?;
    }
    let work_src = work.join("src");
    copy_tree(src, &work_src).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            src.display(),
            work_src.display()
        )
    })?;
    let mut not_needed = Vec::new();
    for (name, _) in &patches {
        let path = b.patches_dir.join(name);
        match patch::apply_and_verify(&work_src, &path) {
            Ok(patch::Outcome::Applied) => {}
            Ok(patch::Outcome::NotNeeded(why)) => {
                eprintln!(
                    "intattention: {name} does not fit ACL {version_tag} and is optional: {why}"
                );
                not_needed.push(name.clone());
            }
            Err(e) => return Err(patch_error(&path, &version_tag, &e)),
        }
    }

    let started = Instant::now();
    match tool {
        Tool::Scons => run_scons(&work, os, cross_prefix, b, &version_tag)?,
        Tool::Cmake => run_cmake(&work, b, &version_tag)?,
    }
    let elapsed = started.elapsed().as_secs();
    check_symbols(&work.join(archive), &symbols).map_err(|e| {
        format!(
            "ACL {version_tag} was built in {} but {e}: the patch did not make it into the \
             library",
            work.display()
        )
    })?;

    // Publish: another build may have finished the same key meanwhile; either copy is good.
    if fs::rename(&work, &entry).is_err() {
        if entry.join(COMPLETE).is_file() {
            let _ = fs::remove_dir_all(&work);
        } else {
            return Err(format!(
                "cannot move {} to {}",
                work.display(),
                entry.display()
            ));
        }
    }
    fs::write(entry.join(COMPLETE), format!("{version_tag}\n"))
        .map_err(|e| format!("cannot write {}: {e}", entry.join(COMPLETE).display()))?;
    // Past tense on purpose: cargo shows this after the build script ends, and replays it on
    // later builds that reuse this script's output.
    println!(
        "cargo:warning=intattention: built ACL {version_tag} from source with {} in {} min {} s \
         ({}, {} jobs{}{}); cached in {}, later builds reuse it",
        match tool {
            Tool::Scons => "scons",
            Tool::Cmake => "CMake (scons is not installed; scons builds only our operators)",
        },
        elapsed / 60,
        elapsed % 60,
        b.arch.why,
        b.jobs,
        if symbols.is_empty() {
            String::new()
        } else {
            format!(", IndexSoftmax patch verified: {} symbols", symbols.len())
        },
        if not_needed.is_empty() {
            String::new()
        } else {
            format!("; optional patches not needed: {}", not_needed.join(", "))
        },
        entry.display()
    );
    Ok(install)
}

/// `Err` naming what is missing when the archive lacks any of `symbols`.
fn check_symbols(archive_path: &Path, symbols: &[String]) -> Result<(), String> {
    if symbols.is_empty() {
        return Ok(());
    }
    let missing = archive::missing_symbols(archive_path, symbols)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} does not define {}",
            archive_path.display(),
            missing.join(", ")
        ))
    }
}

/// Copies an ACL tree without its git data and build outputs. Symbolic links stay links.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" || name == "build" || name == ".acl-cache" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_dir_all(&src, &dst)?;
        } else {
            copy_entry(&src, &dst, ty)?;
        }
    }
    Ok(())
}

fn copy_dir_all(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type()?;
        if ty.is_dir() {
            copy_dir_all(&src, &dst)?;
        } else {
            copy_entry(&src, &dst, ty)?;
        }
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path, ty: fs::FileType) -> std::io::Result<()> {
    #[cfg(unix)]
    if ty.is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(src)?, dst);
    }
    let _ = ty;
    fs::copy(src, dst).map(|_| ())
}

fn patch_error(patch: &Path, version_tag: &str, detail: &str) -> String {
    format!(
        "{} does not apply to ACL {version_tag} (it is written for {}): {}",
        patch.display(),
        version::PINNED_TAG,
        detail.trim()
    )
}

/// Runs a build tool with its output in `<work>/<name>.log`; on failure the error carries the
/// log's last lines.
fn run_logged(mut cmd: Command, work: &Path, name: &str) -> Result<(), String> {
    let log_path = work.join(format!("{name}.log"));
    let log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .status()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{name} failed ({status}); full log in {}:\n{}",
        log_path.display(),
        tail.join("\n")
    ))
}

fn run_scons(
    work: &Path,
    os: &str,
    cross_prefix: Option<&str>,
    b: &SourceBuild<'_>,
    version_tag: &str,
) -> Result<(), String> {
    let config_path = work.join("build_config.json");
    fs::File::create(&config_path)
        .and_then(|mut f| f.write_all(scons::build_config_json().as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let build_dir = work.join("build");
    let args = scons::scons_args(&SconsConfig {
        os,
        arch: &b.arch,
        cross_prefix,
        build_dir: &build_dir,
        build_config: &config_path,
        jobs: b.jobs,
        extra: &b.extra_scons_args,
    });
    // stderr, not a cargo warning: cargo would only show a warning once the script ends (and
    // replay it on every later build). `cargo build -vv` shows this line as the build starts.
    eprintln!(
        "intattention: building ACL {version_tag} with scons ({} operators, {}, {} jobs) in {}; \
         about 22 minutes on 2 cores for the reduced multi-ISA build (518 objects), once per cache key",
        scons::OPERATORS.len(),
        b.arch.why,
        b.jobs,
        work.display()
    );
    let mut cmd = Command::new("scons");
    cmd.args(&args)
        .current_dir(work.join("src"))
        .env("CC", &b.toolchain.cc)
        .env("CXX", &b.toolchain.cxx);
    run_logged(cmd, work, "scons")?;
    // scons builds into build_dir directly; the archive's name is fixed by SConscript.
    if !build_dir.join("libarm_compute-static.a").is_file() {
        return Err(format!(
            "scons finished but {} has no libarm_compute-static.a",
            build_dir.display()
        ));
    }
    Ok(())
}

fn run_cmake(work: &Path, b: &SourceBuild<'_>, version_tag: &str) -> Result<(), String> {
    eprintln!(
        "intattention: scons is not installed, building ACL {version_tag} with its \
         CMake instead: CMake cannot be reduced to the operators this crate uses, so it compiles \
         all of ACL (~1,040 sources, several ISAs) and takes hours on 2 cores; install scons for \
         a much faster build"
    );
    let mut cfg = cmake::Config::new(work.join("src"));
    cfg.out_dir(work.join("cmake"))
        .profile("Release")
        .define("CMAKE_INSTALL_LIBDIR", "lib")
        .very_verbose(false);
    for (k, v) in scons::cmake_defines() {
        cfg.define(k, v);
    }
    let _ = b.jobs; // the cmake crate takes its parallelism from cargo's NUM_JOBS itself
                    // The cmake crate reports failure by panicking; turn that into this script's one error.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.build()));
    std::panic::set_hook(hook);
    match result {
        Ok(_) => {}
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".to_string());
            return Err(format!(
                "the CMake build of ACL {version_tag} failed: {msg}"
            ));
        }
    }
    let lib = work.join("cmake/lib/libarm_compute.a");
    if !lib.is_file() {
        return Err(format!(
            "the CMake build finished but {} is missing",
            lib.display()
        ));
    }
    Ok(())
}

/// The source tree to build, if any: `ACL_SOURCE_DIR`, else `ComputeLibrary/` beside
/// Cargo.toml when it holds a SConscript.
pub fn source_dir(explicit: Option<PathBuf>, manifest_dir: &Path) -> Option<(PathBuf, bool)> {
    if let Some(dir) = explicit {
        return Some((dir, true));
    }
    let local = manifest_dir.join("ComputeLibrary");
    local.join("SConscript").is_file().then_some((local, false))
}
