//! The link lines for ACL itself. They are printed after the shim's own lines (the shim's
//! archive must come first on the link line, ACL after it, the system libraries last).

use std::path::Path;

use crate::acl_install::AclInstall;

/// `cargo:` lines that link `install` for a target OS (`CARGO_CFG_TARGET_OS`).
pub fn link_lines(install: &AclInstall, target_os: &str) -> Vec<String> {
    let mut lines = vec![format!(
        "cargo:rustc-link-search=native={}",
        install.lib_dir.display()
    )];
    let kind = if install.static_libs {
        "static"
    } else {
        "dylib"
    };
    for name in &install.lib_names {
        lines.push(format!("cargo:rustc-link-lib={kind}={name}"));
    }
    let cxx = if target_os == "macos" || target_os == "ios" {
        "c++"
    } else {
        "stdc++"
    };
    if install.static_libs {
        // ACL's archives are C++ and need the C++ runtime after them.
        lines.push(format!("cargo:rustc-link-lib=dylib={cxx}"));
    }
    if target_os == "linux" || target_os == "android" {
        if target_os == "linux" {
            lines.push("cargo:rustc-link-lib=dylib=pthread".to_string());
        }
        lines.push("cargo:rustc-link-lib=dylib=dl".to_string());
    }
    if !install.static_libs && !is_system_dir(&install.lib_dir) {
        // Shared ACL outside the loader's search path: let this crate's tests, examples and
        // binaries find it without LD_LIBRARY_PATH.
        lines.push(format!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            install.lib_dir.display()
        ));
    }
    lines
}

/// Directories the dynamic loader searches without help.
pub fn is_system_dir(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    let d = d.trim_end_matches('/');
    d == "/usr/lib" || d == "/lib" || d.starts_with("/usr/lib/") || d.starts_with("/lib/")
}
