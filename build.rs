//! Build script: decides whether the ACL backend is part of this build, finds or builds ACL,
//! and compiles the C shim with its bindgen bindings. Each step lives in `build/`.

#[path = "build/acl_install.rs"]
#[allow(dead_code)]
mod acl_install;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rustc-check-cfg=cfg(intattention_acl)");
}
