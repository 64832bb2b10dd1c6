//! Where built ACLs are kept between builds, and under which key. A reduced ACL build takes
//! tens of minutes on 2 cores (docs/acl-source-tier.md), so a rebuild of this crate (another profile, a `cargo clean`
//! of the crate alone, a new checkout of the same tree) must find the previous one.

use std::path::{Path, PathBuf};

/// What an entry built by this version of the build script guarantees: the patches were
/// verified in the tree and the archive defines their symbols. Part of every key, so that
/// entries from before that check (some built without the patch, under the same key) are not
/// reused.
pub const ENTRY_FORMAT: &str = "2: patches verified in the tree and in the archive";

/// FNV-1a, 64 bits: stable across Rust releases and platforms, unlike `DefaultHasher`.
pub fn fnv1a64(chunks: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in chunks {
        for &b in *chunk {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Hash of the patch set: file names and contents, in name order.
pub fn patch_set_hash(patches: &[(String, Vec<u8>)]) -> u64 {
    let mut sorted: Vec<&(String, Vec<u8>)> = patches.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut chunks: Vec<&[u8]> = Vec::new();
    for (name, body) in &sorted {
        chunks.push(name.as_bytes());
        chunks.push(body);
    }
    fnv1a64(&chunks)
}

/// Inputs that decide what a cached ACL build contains.
pub struct CacheInputs<'a> {
    /// ACL version as read from the tree, e.g. `v52.5.0`.
    pub version: &'a str,
    /// The tree's identity beyond its version: its git commit when it has one, else empty.
    pub source_id: &'a str,
    pub patch_hash: u64,
    /// Build system (`scons` or `cmake`) and its arguments, minus `-j` and the paths that
    /// contain the key itself.
    pub tool: &'a str,
    pub args: &'a [String],
    /// Target triple: one cache can hold builds for several targets.
    pub target: &'a str,
}

/// The cache directory name for one build: readable version and target, then a hash of
/// everything else. Arguments that do not change the result (`-j`, `build_dir=`,
/// `build_config=` whose content is in the hash through OPERATORS) are left out.
pub fn cache_key(i: &CacheInputs<'_>) -> String {
    let relevant: Vec<&[u8]> = i
        .args
        .iter()
        .filter(|a| {
            !(a.starts_with("-j") || a.starts_with("build_dir=") || a.starts_with("build_config="))
        })
        .map(|a| a.as_bytes())
        .collect();
    let patch = i.patch_hash.to_le_bytes();
    let config = crate::scons::build_config_json();
    let mut chunks: Vec<&[u8]> = vec![
        ENTRY_FORMAT.as_bytes(),
        i.version.as_bytes(),
        i.source_id.as_bytes(),
        &patch,
        i.tool.as_bytes(),
        i.target.as_bytes(),
        config.as_bytes(),
    ];
    chunks.extend(relevant);
    let version: String = i
        .version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "acl-{version}-{}-{:016x}",
        i.target.split('-').next().unwrap_or("unknown"),
        fnv1a64(&chunks)
    )
}

/// The cache root: `INTATTENTION_ACL_CACHE` if set; in a development checkout (a `.git` next
/// to Cargo.toml) the git-ignored `.acl-cache/` there; otherwise `acl-cache/` in cargo's target
/// directory, found as the ancestor of OUT_DIR that holds `build/` (so a package installed
/// from a registry never writes next to its sources).
pub fn cache_root(override_dir: Option<&str>, manifest_dir: &Path, out_dir: &Path) -> PathBuf {
    if let Some(dir) = override_dir {
        return PathBuf::from(dir);
    }
    if manifest_dir.join(".git").exists() {
        return manifest_dir.join(".acl-cache");
    }
    // OUT_DIR = <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out
    let mut dir = out_dir;
    while let Some(parent) = dir.parent() {
        if dir.file_name().is_some_and(|n| n == "build") {
            if let Some(profile_dir) = parent.parent() {
                return profile_dir.join("acl-cache");
            }
        }
        dir = parent;
    }
    out_dir.join("acl-cache")
}
