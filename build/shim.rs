//! Compiles the C shim in `wrapper/` against an ACL that build.rs found, and generates its Rust
//! bindings with bindgen from the shim's plain-C header only.
//!
//! Interface for build.rs (helper "aclshim" owns this file):
//!
//! ```text
//! #[path = "build/shim.rs"] mod shim;
//! shim::build(&install: &AclInstall, out_dir: &Path) -> Result<(), String>
//! ```
//!
//! - Call it after ACL is found and BEFORE emitting ACL's `cargo:rustc-link-lib` lines: it
//!   emits `cargo:rustc-link-lib=static=intattention_acl_shim` (plus `stdc++` through `cc`),
//!   and the shim archive must precede the ACL libraries on the link line.
//! - It writes `$OUT_DIR/intattention_acl_bindings.rs`, which `src/acl/ffi.rs` includes.
//! - On `Ok`, build.rs emits `cargo:rustc-cfg=intattention_acl`; on `Err(reason)` it builds
//!   without ACL and passes the reason on as `INTATTENTION_ACL_REASON`.
//! - C++ defines: `INTATTENTION_ACL_MAJOR` = 20 or 52 (from `AclInstall::version`) and
//!   `INTATTENTION_ACL_PATCHED` = 0 or 1.

use std::path::Path;

use crate::acl_install::AclInstall;

/// The C++ sources of the shim, relative to the crate root.
const SOURCES: [&str; 2] = ["wrapper/shim.cpp", "wrapper/row_kernels.cpp"];
const HEADER: &str = "wrapper/intattention_acl.h";
/// File name of the generated bindings inside `OUT_DIR`.
pub const BINDINGS_FILE: &str = "intattention_acl_bindings.rs";

/// Compiles the shim for the target and generates its bindings (see the module docs).
pub fn build(install: &AclInstall, out_dir: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-changed=wrapper");
    compile(install)?;
    generate_bindings(out_dir)
}

fn compile(install: &AclInstall) -> Result<(), String> {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        // C++17 compiles both families' headers (20.08 needs at least C++14; newer 52.x
        // releases may use C++17 features).
        .std("c++17")
        .include("wrapper")
        .define(
            "INTATTENTION_ACL_MAJOR",
            install.version.major().to_string().as_str(),
        )
        .define(
            "INTATTENTION_ACL_PATCHED",
            if install.patched { "1" } else { "0" },
        )
        // ACL's headers are not ours to fix.
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations");
    for dir in &install.include_dirs {
        build.include(dir);
    }
    for src in SOURCES {
        build.file(src);
    }
    build.try_compile("intattention_acl_shim").map_err(|e| {
        format!(
            "compiling the ACL shim (wrapper/*.cpp) against {}: {e}",
            install.version
        )
    })
}

/// bindgen sees only the shim's plain-C header (never ACL's classes, whose layout depends on
/// the target), with an allowlist of the shim's `ia_` names.
fn generate_bindings(out_dir: &Path) -> Result<(), String> {
    let target = std::env::var("TARGET").unwrap_or_default();
    let bindings = bindgen::Builder::default()
        .header(HEADER)
        .clang_arg(format!("--target={}", clang_target(&target)))
        .allowlist_function("ia_.*")
        .allowlist_type("ia_.*")
        .allowlist_var("IA_.*")
        .parse_callbacks(Box::new(StatusConstants))
        .derive_default(true)
        .generate()
        .map_err(|e| format!("bindgen on {HEADER}: {e} (libclang with its headers is needed: libclang1-14 and libclang-common-14-dev)"))?;
    let path = out_dir.join(BINDINGS_FILE);
    bindings
        .write_to_file(&path)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Rust triple -> clang triple: the vendor field goes (aarch64-unknown-linux-gnu ->
/// aarch64-linux-gnu), so that clang finds Debian's multiarch headers.
fn clang_target(rust_target: &str) -> String {
    let parts: Vec<&str> = rust_target.split('-').collect();
    match parts.as_slice() {
        [arch, "unknown", rest @ ..] if !rest.is_empty() => format!("{arch}-{}", rest.join("-")),
        _ => rust_target.to_string(),
    }
}

/// The header's `#define IA_...` constants are `int32_t` values (statuses, dtypes, variants):
/// give them that type instead of bindgen's default `u32`.
#[derive(Debug)]
struct StatusConstants;

impl bindgen::callbacks::ParseCallbacks for StatusConstants {
    fn int_macro(&self, name: &str, _value: i64) -> Option<bindgen::callbacks::IntKind> {
        name.starts_with("IA_")
            .then_some(bindgen::callbacks::IntKind::I32)
    }
}
