//! Strategy a: whether this build has an ACL backend at all. The crate always builds; when the
//! answer is no, the sentence returned here reaches users through `--backend acl`'s error.

/// What the decision depends on, as cargo reports it to the build script.
pub struct BuildTarget<'a> {
    pub triple: &'a str,
    /// `CARGO_CFG_TARGET_ARCH`.
    pub arch: &'a str,
    /// `CARGO_FEATURE_ACL` is set.
    pub acl_feature: bool,
    /// `DOCS_RS` is set (docs.rs builds have no network and no ACL).
    pub docs_rs: bool,
}

/// `Some(one sentence)` when ACL support is off for this build, `None` when the build script
/// should go on to find or build ACL.
pub fn acl_off_reason(t: &BuildTarget<'_>) -> Option<String> {
    if t.docs_rs {
        return Some(
            "this is a documentation build (DOCS_RS is set), which never links ARM ComputeLibrary"
                .to_string(),
        );
    }
    if !t.acl_feature {
        return Some(
            "this build was made without the `acl` feature; rebuild with `--features acl` on an \
             aarch64 target"
                .to_string(),
        );
    }
    if t.arch != "aarch64" {
        return Some(format!(
            "ARM ComputeLibrary runs only on aarch64 and this build targets {} ({}); the native \
             backend covers every pipeline",
            t.triple, t.arch
        ));
    }
    None
}
