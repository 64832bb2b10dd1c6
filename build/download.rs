//! Strategy d: fetch the pinned ACL release with git, then build it as a local source tree.
//! Offline conditions are detected up front (no long network timeout), and end the build in
//! one error that says how to use an existing ACL instead.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::version::PINNED_TAG;

pub const ACL_REPO_URL: &str = "https://github.com/ARM-software/ComputeLibrary";

/// The facts the offline decision depends on; `remote_reachable` is only consulted when every
/// local condition passes (it costs a network round trip).
pub struct Connectivity {
    /// `CARGO_NET_OFFLINE` is true (`cargo --offline` or `net.offline` in cargo config).
    pub cargo_offline: bool,
    pub have_git: bool,
    /// A build tool for the cloned tree: scons, or cmake as the slower fallback.
    pub have_build_tool: bool,
}

/// Why the clone cannot happen, or `None` when it may be tried.
pub fn offline_reason(c: &Connectivity, remote_reachable: impl FnOnce() -> bool) -> Option<String> {
    if c.cargo_offline {
        return Some("cargo runs offline (CARGO_NET_OFFLINE is set)".to_string());
    }
    if !c.have_git {
        return Some("git is not installed".to_string());
    }
    if !c.have_build_tool {
        return Some("neither scons nor cmake is installed".to_string());
    }
    if !remote_reachable() {
        return Some(format!("{ACL_REPO_URL} cannot be reached"));
    }
    None
}

/// The one error that ends an aarch64 build with no usable ACL. Tests pin this text.
pub fn offline_error(reason: &str) -> String {
    format!(
        "intattention: no ARM ComputeLibrary (ACL) found, and ACL {PINNED_TAG} cannot be \
         downloaded because {reason}. Point the build at an ACL you already have: \
         ACL_ROOT_DIR=/path/to/acl for a built ACL (a directory with arm_compute/ headers and \
         libarm_compute in lib/ or build/; 20.08 or 52.x), or ACL_SOURCE_DIR=/path/to/ComputeLibrary \
         for a {PINNED_TAG} source tree that this build patches and compiles with scons (tens of \
         minutes on 2 cores, once). On Debian or Ubuntu, `apt install libarm-compute-dev` is \
         found without any variable. To build without the ACL backend, leave out `--features acl`."
    )
}

/// Runs `cmd` with a deadline; `Ok(true)` when it exited successfully in time.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> std::io::Result<bool> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if start.elapsed() >= timeout {
            // The child is ours; a kill error only means it already exited.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `program --version` runs.
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A quick `git ls-remote` of the pinned tag, bounded to a few seconds.
pub fn remote_reachable() -> bool {
    let mut cmd = Command::new("git");
    cmd.args([
        "ls-remote",
        "--exit-code",
        ACL_REPO_URL,
        &format!("refs/tags/{PINNED_TAG}"),
    ])
    .env("GIT_TERMINAL_PROMPT", "0");
    run_with_timeout(cmd, Duration::from_secs(15)).unwrap_or(false)
}

/// `git clone --depth 1 --branch <tag>` into `dest` (which must not exist).
pub fn clone_pinned(dest: &Path) -> Result<(), String> {
    let status = Command::new("git")
        .args([
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--branch",
            PINNED_TAG,
            ACL_REPO_URL,
        ])
        .arg(dest)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "git clone of {ACL_REPO_URL} at {PINNED_TAG} failed ({status}); {}",
            offline_error("the clone failed")
        ))
    }
}
