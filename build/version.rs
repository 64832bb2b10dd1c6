//! Which ACL release a tree, a library or a user's setting is, and whether the shim supports
//! it. No public ACL header carries a version number, so the version comes from SConscript
//! (source trees), the `arm_compute_version=v..` string every ACL build embeds in its
//! libraries, or `ACL_VERSION`.

use crate::acl_install::AclVersion;

/// The release this crate pins, clones and patches.
pub const PINNED_TAG: &str = "v52.5.0";

/// Parses `v52.5.0`, `52.5.0`, `v20.08` or `20.08`. Versions of families the shim does not
/// bridge (e.g. `v24.04`) give `Err` with the version as read.
pub fn parse_tag(tag: &str) -> Result<AclVersion, String> {
    let t = tag.trim();
    let t = t.strip_prefix('v').unwrap_or(t);
    let parts: Vec<&str> = t.split('.').collect();
    let num = |s: &str| -> Result<u32, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "'{tag}' is not an ACL version (expected e.g. v52.5.0 or v20.08)"
            ));
        }
        s.parse::<u32>()
            .map_err(|_| format!("'{tag}' is not an ACL version"))
    };
    match parts.as_slice() {
        [major, minor] if num(major)? == 20 => Ok(AclVersion::V20 { minor: num(minor)? }),
        [major, minor, patch] if num(major)? == 52 => Ok(AclVersion::V52 {
            minor: num(minor)?,
            patch: num(patch)?,
        }),
        [major, ..] => {
            num(major)?;
            Err(format!(
                "ACL {tag} is not supported: this crate bridges the 20.x series (Debian's 20.08) \
                 and the 52.x series (it pins {PINNED_TAG})"
            ))
        }
        [] => Err(format!("'{tag}' is not an ACL version")),
    }
}

/// The `VERSION = "v52.5.0"` line of an ACL source tree's SConscript.
pub fn sconscript_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("VERSION")?.trim_start();
        let rest = rest.strip_prefix('=')?.trim();
        let quoted = rest.strip_prefix('"').or_else(|| rest.strip_prefix('\''))?;
        let end = quoted.find(['"', '\''])?;
        Some(quoted[..end].to_string())
    })
}

/// The version in the `arm_compute_version=v52.5.0 Build options: ...` string that scons and
/// CMake builds embed in libarm_compute (shared or static).
pub fn embedded_version(bytes: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"arm_compute_version=";
    let start = bytes.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let tail = &bytes[start..];
    let end = tail
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'.'))
        .unwrap_or(tail.len());
    let v = std::str::from_utf8(&tail[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// Whether `found` may be used where `PINNED_TAG` is expected for a source build: the patch
/// is written against 52.5.0 and applies to neighbouring 52.x releases only if its context
/// matches, which `git apply --check` decides; other families are refused here.
pub fn check_source_version(found: &str) -> Result<AclVersion, String> {
    match parse_tag(found)? {
        v @ AclVersion::V52 { .. } => Ok(v),
        AclVersion::V20 { .. } => Err(format!(
            "ACL {found} cannot be built from source by this crate (its scons options differ); \
             build {PINNED_TAG}, or point ACL_ROOT_DIR at an installed 20.08"
        )),
    }
}
