//! Offline tests of the build script's pure parts (strategies a to d): environment names,
//! the ACL-off decision, version parsing, the target-to-scons table, the scons command line,
//! cache keys and roots, prebuilt detection on fake install trees, link lines, the offline
//! error text, applying and verifying patches (inside a git checkout too), reading symbol
//! indexes of static libraries, and the shape of `patches/`. None of them needs ACL sources
//! or network; the last test compiles the patch's kernel and runs it under qemu when the
//! emulated aarch64 tier is installed.

#[path = "../build/acl_install.rs"]
#[allow(dead_code)]
mod acl_install;
#[path = "../build/archive.rs"]
#[allow(dead_code)]
mod archive;
#[path = "../build/cache.rs"]
#[allow(dead_code)]
mod cache;
#[path = "../build/download.rs"]
#[allow(dead_code)]
mod download;
#[path = "../build/env.rs"]
#[allow(dead_code)]
mod env;
#[path = "../build/link.rs"]
#[allow(dead_code)]
mod link;
#[path = "../build/patch.rs"]
#[allow(dead_code)]
mod patch;
#[path = "../build/prebuilt.rs"]
#[allow(dead_code)]
mod prebuilt;
#[path = "../build/scons.rs"]
#[allow(dead_code)]
mod scons;
#[path = "../build/support.rs"]
#[allow(dead_code)]
mod support;
#[path = "../build/version.rs"]
#[allow(dead_code)]
mod version;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use acl_install::{AclInstall, AclOrigin, AclVersion};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "intattention-build-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A fake ACL install: headers in `<root>/include`, a library carrying `version_string`.
fn fake_install(root: &Path, lib_sub: &str, lib_files: &[&str], version_string: Option<&str>) {
    write(&root.join("include/arm_compute/core/Types.h"), b"// fake\n");
    for f in lib_files {
        let mut body = b"\x7fELF fake library\0".to_vec();
        if let Some(v) = version_string {
            body.extend_from_slice(
                format!("arm_compute_version={v} Build options: {{}}\0").as_bytes(),
            );
        }
        write(&root.join(lib_sub).join(f), &body);
    }
}

// ---- env.rs -------------------------------------------------------------------------------

#[test]
fn env_names_try_the_target_prefixed_spelling_first() {
    assert_eq!(
        env::candidate_names("ACL_ROOT_DIR", "aarch64-unknown-linux-gnu"),
        [
            "AARCH64_UNKNOWN_LINUX_GNU_ACL_ROOT_DIR".to_string(),
            "ACL_ROOT_DIR".to_string()
        ]
    );
    assert_eq!(
        env::candidate_names("ACL_LIB_DIR", "thumbv7em-none-eabihf")[0],
        "THUMBV7EM_NONE_EABIHF_ACL_LIB_DIR"
    );
}

#[test]
fn env_switches_read_like_shell_booleans() {
    for on in ["1", "true", "yes", "ON", " 1 "] {
        assert!(env::is_truthy(on), "{on:?}");
    }
    for off in ["", "0", "false", "No", "off"] {
        assert!(!env::is_truthy(off), "{off:?}");
    }
}

// ---- support.rs (strategy a) --------------------------------------------------------------

fn target<'a>(triple: &'a str, arch: &'a str, acl: bool, docs: bool) -> support::BuildTarget<'a> {
    support::BuildTarget {
        triple,
        arch,
        acl_feature: acl,
        docs_rs: docs,
    }
}

#[test]
fn acl_is_off_off_aarch64_without_the_feature_and_on_docs_rs() {
    let x86 = support::acl_off_reason(&target("x86_64-unknown-linux-gnu", "x86_64", true, false))
        .unwrap();
    assert!(
        x86.contains("only on aarch64") && x86.contains("x86_64-unknown-linux-gnu"),
        "{x86}"
    );
    let nofeat = support::acl_off_reason(&target(
        "aarch64-unknown-linux-gnu",
        "aarch64",
        false,
        false,
    ))
    .unwrap();
    assert!(nofeat.contains("`acl` feature"), "{nofeat}");
    let docs = support::acl_off_reason(&target("aarch64-unknown-linux-gnu", "aarch64", true, true))
        .unwrap();
    assert!(docs.contains("DOCS_RS"), "{docs}");
    assert_eq!(
        support::acl_off_reason(&target("aarch64-apple-darwin", "aarch64", true, false)),
        None
    );
    // One sentence each: no line breaks reach rustc-env.
    for r in [x86, nofeat, docs] {
        assert!(!r.contains('\n'));
    }
}

// ---- version.rs ---------------------------------------------------------------------------

#[test]
fn versions_parse_in_both_families_and_others_are_refused() {
    assert_eq!(
        version::parse_tag("v52.5.0"),
        Ok(AclVersion::V52 { minor: 5, patch: 0 })
    );
    assert_eq!(
        version::parse_tag("52.6.1"),
        Ok(AclVersion::V52 { minor: 6, patch: 1 })
    );
    assert_eq!(
        version::parse_tag("v20.08"),
        Ok(AclVersion::V20 { minor: 8 })
    );
    assert_eq!(
        version::parse_tag(" 20.02 "),
        Ok(AclVersion::V20 { minor: 2 })
    );
    let err = version::parse_tag("v24.04").unwrap_err();
    assert!(
        err.contains("not supported") && err.contains("v52.5.0"),
        "{err}"
    );
    assert!(version::parse_tag("v52.5").is_err());
    assert!(version::parse_tag("latest").is_err());
    assert!(version::parse_tag("v52.x.0").is_err());
    assert!(version::parse_tag("").is_err());
}

#[test]
fn versions_print_as_acl_tags_and_round_trip() {
    for v in [
        AclVersion::V20 { minor: 8 },
        AclVersion::V52 { minor: 5, patch: 0 },
        AclVersion::V52 {
            minor: 10,
            patch: 2,
        },
    ] {
        assert_eq!(version::parse_tag(&v.to_string()), Ok(v));
    }
    assert_eq!(AclVersion::V20 { minor: 8 }.to_string(), "v20.08");
    assert_eq!(
        AclVersion::V52 { minor: 5, patch: 0 }.to_string(),
        version::PINNED_TAG
    );
    assert_eq!(AclVersion::V20 { minor: 8 }.major(), 20);
    assert_eq!(AclVersion::V52 { minor: 5, patch: 0 }.major(), 52);
}

#[test]
fn sconscript_version_line_is_found() {
    let text = "import json\nimport SCons\n\nVERSION = \"v52.5.0\"\nLIBRARY_VERSION_MAJOR = 52\n";
    assert_eq!(
        version::sconscript_version(text).as_deref(),
        Some("v52.5.0")
    );
    assert_eq!(
        version::sconscript_version("VERSION='v52.4.0'\n").as_deref(),
        Some("v52.4.0")
    );
    // LIBRARY_VERSION_MAJOR must not be mistaken for VERSION.
    assert_eq!(
        version::sconscript_version("LIBRARY_VERSION_MAJOR = 52\n"),
        None
    );
    assert_eq!(version::sconscript_version(""), None);
}

#[test]
fn the_version_string_embedded_in_libraries_is_read() {
    let lib = b"\x7fELF\0\0junk\0arm_compute_version=v20.08 Build options: {'arch': 'arm64-v8a'}\0";
    assert_eq!(version::embedded_version(lib).as_deref(), Some("v20.08"));
    let lib52 = b"arm_compute_version=v52.5.0 Build options";
    assert_eq!(version::embedded_version(lib52).as_deref(), Some("v52.5.0"));
    assert_eq!(version::embedded_version(b"no version here"), None);
    assert_eq!(version::embedded_version(b"arm_compute_version= x"), None);
}

#[test]
fn source_builds_accept_52x_only() {
    assert_eq!(
        version::check_source_version("v52.5.0"),
        Ok(AclVersion::V52 { minor: 5, patch: 0 })
    );
    assert!(version::check_source_version("v52.6.0").is_ok());
    let e = version::check_source_version("v20.08").unwrap_err();
    assert!(e.contains("ACL_ROOT_DIR"), "{e}");
    assert!(version::check_source_version("v23.08").is_err());
}

// ---- scons.rs (strategy c) ----------------------------------------------------------------

#[test]
fn target_to_scons_os_table() {
    assert_eq!(scons::scons_os("aarch64-unknown-linux-gnu"), Some("linux"));
    assert_eq!(scons::scons_os("aarch64-unknown-linux-musl"), Some("linux"));
    assert_eq!(scons::scons_os("aarch64-apple-darwin"), Some("macos"));
    assert_eq!(scons::scons_os("aarch64-linux-android"), Some("android"));
    assert_eq!(scons::scons_os("x86_64-unknown-linux-gnu"), None);
    assert_eq!(scons::scons_os("aarch64-pc-windows-msvc"), None);
    assert_eq!(scons::scons_os("armv7-unknown-linux-gnueabihf"), None);
}

fn no_features() -> Option<String> {
    None
}

fn graviton3_features() -> Option<String> {
    Some(
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt \
         fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs \
         paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng"
            .to_string(),
    )
}

fn arch_request<'a>(
    target: &'a str,
    host: &'a str,
    requested: Option<&'a str>,
    features: fn() -> Option<String>,
) -> scons::ArchRequest<'a> {
    scons::ArchRequest {
        target,
        host,
        requested,
        build_machine_features: features,
    }
}

/// The default runs everywhere: multi-ISA on an Armv8-A baseline, for every target, cross or
/// native (a single-ISA armv8.6-a build died with SIGILL on a Cortex-A72).
#[test]
fn acl_arch_defaults_to_multi_isa_on_an_armv8a_baseline() {
    const A64: &str = "aarch64-unknown-linux-gnu";
    for (target, host) in [
        (A64, "x86_64-unknown-linux-gnu"),
        (A64, A64),
        ("aarch64-apple-darwin", "aarch64-apple-darwin"),
    ] {
        for requested in [None, Some(""), Some("multi-isa"), Some(" multi_isa ")] {
            let c = scons::choose_arch(&arch_request(target, host, requested, graviton3_features))
                .unwrap();
            assert_eq!(
                (c.arch.as_str(), c.multi_isa),
                ("armv8a", true),
                "{requested:?}"
            );
            assert!(c.why.contains("every 64-bit Arm core"), "{}", c.why);
        }
    }
}

#[test]
fn acl_arch_overrides_native_and_named() {
    const A64: &str = "aarch64-unknown-linux-gnu";
    let native =
        scons::choose_arch(&arch_request(A64, A64, Some("native"), graviton3_features)).unwrap();
    assert_eq!(
        (native.arch.as_str(), native.multi_isa),
        ("armv8.6-a", false)
    );
    // `native` describes the build machine: refused when cross-compiling or unreadable.
    let cross = scons::choose_arch(&arch_request(
        A64,
        "x86_64-unknown-linux-gnu",
        Some("native"),
        graviton3_features,
    ))
    .unwrap_err();
    assert!(cross.contains("cross-compiles"), "{cross}");
    let unknown =
        scons::choose_arch(&arch_request(A64, A64, Some("native"), no_features)).unwrap_err();
    assert!(unknown.contains("/proc/cpuinfo"), "{unknown}");
    let named =
        scons::choose_arch(&arch_request(A64, A64, Some("armv8.2-a"), no_features)).unwrap();
    assert_eq!((named.arch.as_str(), named.multi_isa), ("armv8.2-a", false));
    let bad =
        scons::choose_arch(&arch_request(A64, A64, Some("armv9-a"), no_features)).unwrap_err();
    assert!(
        bad.contains("armv9-a") && bad.contains("armv8.6-a"),
        "{bad}"
    );
}

#[test]
fn build_machine_features_map_to_the_newest_arch_they_run() {
    assert_eq!(
        scons::arch_for_features(&graviton3_features().unwrap()),
        "armv8.6-a"
    );
    // Neoverse N1 / Cortex-A76: LSE, fp16, dotprod, no i8mm.
    let n1 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
              lrcpc dcpop asimddp ssbs";
    assert_eq!(scons::arch_for_features(n1), "armv8.2-a");
    // Cortex-A72 (Raspberry Pi 4): no LSE atomics.
    let a72 = "fp asimd evtstrm crc32 cpuid";
    assert_eq!(scons::arch_for_features(a72), "armv8a");
    assert_eq!(scons::arch_for_features(""), "armv8a");
    // A name that only contains a flag is not the flag.
    assert_eq!(
        scons::arch_for_features("svei8mm svebf16 atomics fphp asimdhp asimddp"),
        "armv8.2-a"
    );
}

fn multi_isa() -> scons::ArchChoice {
    scons::ArchChoice {
        arch: "armv8a".to_string(),
        multi_isa: true,
        why: String::new(),
    }
}

#[test]
fn scons_arguments_for_a_cross_build() {
    let extra = vec!["debug=1".to_string()];
    let args = scons::scons_args(&scons::SconsConfig {
        os: "linux",
        arch: &multi_isa(),
        cross_prefix: Some("aarch64-linux-gnu-"),
        build_dir: Path::new("/cache/k/build"),
        build_config: Path::new("/cache/k/build_config.json"),
        jobs: 8,
        extra: &extra,
    });
    assert_eq!(
        args,
        [
            "-j8",
            "os=linux",
            "arch=armv8a",
            "multi_isa=1",
            "neon=1",
            "opencl=0",
            "examples=0",
            "Werror=0",
            "cppthreads=1",
            "openmp=0",
            "standalone=1",
            "build=cross_compile",
            "toolchain_prefix=aarch64-linux-gnu-",
            "build_dir=/cache/k/build",
            "build_config=/cache/k/build_config.json",
            "debug=1",
            "arm_compute",
        ]
    );
}

#[test]
fn scons_arguments_for_a_native_build() {
    let arch = scons::ArchChoice {
        arch: "armv8.6-a".to_string(),
        multi_isa: false,
        why: String::new(),
    };
    let args = scons::scons_args(&scons::SconsConfig {
        os: "macos",
        arch: &arch,
        cross_prefix: None,
        build_dir: Path::new("/b"),
        build_config: Path::new("/c.json"),
        jobs: 0,
        extra: &[],
    });
    assert_eq!(args[0], "-j1", "at least one job");
    assert!(args.contains(&"build=native".to_string()));
    assert!(args.contains(&"os=macos".to_string()));
    assert!(args.contains(&"arch=armv8.6-a".to_string()));
    assert!(args.contains(&"multi_isa=0".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("toolchain_prefix")));
}

#[test]
fn build_config_is_json_with_our_operators_and_lower_case_types() {
    let v: serde_json::Value = serde_json::from_str(&scons::build_config_json()).unwrap();
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let ops = strings("operators");
    for op in [
        "Gemm",
        "Softmax",
        "Cast",
        "Quantize",
        "Dequantize",
        "Activation",
        "Transpose",
    ] {
        assert!(ops.contains(&op.to_string()), "{op} missing");
    }
    assert_eq!(
        strings("data_types"),
        ["fp32", "fp16", "qasymm8", "qasymm8_signed", "integer"]
    );
    assert_eq!(strings("data_layouts"), ["nhwc", "nchw"]);
}

#[test]
fn compiler_paths_split_into_scons_prefix_and_names() {
    let t = scons::split_toolchain("aarch64-linux-gnu-g++");
    assert_eq!(
        (t.prefix.as_str(), t.cc.as_str(), t.cxx.as_str()),
        ("aarch64-linux-gnu-", "gcc", "g++")
    );
    let t = scons::split_toolchain("/opt/tc/bin/aarch64-none-linux-gnu-g++-12");
    assert_eq!(
        (t.prefix.as_str(), t.cc.as_str(), t.cxx.as_str()),
        ("/opt/tc/bin/aarch64-none-linux-gnu-", "gcc-12", "g++-12")
    );
    let t = scons::split_toolchain("clang++");
    assert_eq!(
        (t.prefix.as_str(), t.cc.as_str(), t.cxx.as_str()),
        ("", "clang", "clang++")
    );
    let t = scons::split_toolchain("aarch64-linux-android30-clang++");
    assert_eq!(t.prefix, "aarch64-linux-android30-");
    assert_eq!(t.cxx, "clang++");
    let t = scons::split_toolchain("c++");
    assert_eq!(
        (t.prefix.as_str(), t.cc.as_str(), t.cxx.as_str()),
        ("", "cc", "c++")
    );
}

#[test]
fn cmake_fallback_builds_a_static_library_without_openmp() {
    let d = scons::cmake_defines();
    assert!(d.contains(&("ARM_COMPUTE_BUILD_SHARED_LIB", "OFF")));
    assert!(d.contains(&("ARM_COMPUTE_ENABLE_OPENMP", "OFF")));
    assert!(d.contains(&("ARM_COMPUTE_ENABLE_CPPTHREADS", "ON")));
}

// ---- cache.rs -----------------------------------------------------------------------------

fn key(version: &str, commit: &str, patch: u64, args: &[&str], target: &str) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    cache::cache_key(&cache::CacheInputs {
        version,
        source_id: commit,
        patch_hash: patch,
        tool: "scons",
        args: &args,
        target,
    })
}

#[test]
fn cache_keys_name_version_and_target_and_hash_the_rest() {
    const T: &str = "aarch64-unknown-linux-gnu";
    let base = key("v52.5.0", "", 7, &["os=linux", "arch=armv8.6-a"], T);
    assert!(base.starts_with("acl-v52.5.0-aarch64-"), "{base}");
    assert_eq!(base.len(), "acl-v52.5.0-aarch64-".len() + 16);
    assert_eq!(
        base,
        key("v52.5.0", "", 7, &["os=linux", "arch=armv8.6-a"], T),
        "deterministic"
    );
    // Everything that changes the library changes the key.
    assert_ne!(
        base,
        key("v52.6.0", "", 7, &["os=linux", "arch=armv8.6-a"], T)
    );
    assert_ne!(
        base,
        key("v52.5.0", "abc", 7, &["os=linux", "arch=armv8.6-a"], T)
    );
    assert_ne!(
        base,
        key("v52.5.0", "", 8, &["os=linux", "arch=armv8.6-a"], T)
    );
    assert_ne!(
        base,
        key("v52.5.0", "", 7, &["os=linux", "arch=armv8.2-a"], T)
    );
    assert_ne!(
        key("v52.5.0", "", 7, &["arch=armv8a", "multi_isa=1"], T),
        key("v52.5.0", "", 7, &["arch=armv8a", "multi_isa=0"], T)
    );
    assert_ne!(
        base,
        key(
            "v52.5.0",
            "",
            7,
            &["os=linux", "arch=armv8.6-a"],
            "aarch64-unknown-linux-musl"
        )
    );
    // Parallelism and the key's own paths do not.
    assert_eq!(
        base,
        key(
            "v52.5.0",
            "",
            7,
            &[
                "-j16",
                "os=linux",
                "arch=armv8.6-a",
                "build_dir=/x",
                "build_config=/y"
            ],
            T
        )
    );
}

#[test]
fn patch_set_hash_depends_on_names_and_contents_not_order() {
    let a = ("a.patch".to_string(), b"one".to_vec());
    let b = ("b.patch".to_string(), b"two".to_vec());
    let h = cache::patch_set_hash(&[a.clone(), b.clone()]);
    assert_eq!(h, cache::patch_set_hash(&[b.clone(), a.clone()]));
    assert_ne!(h, cache::patch_set_hash(std::slice::from_ref(&a)));
    assert_ne!(
        h,
        cache::patch_set_hash(&[a.clone(), ("b.patch".to_string(), b"twO".to_vec())])
    );
    assert_ne!(
        cache::fnv1a64(&[b"ab", b"c"]),
        cache::fnv1a64(&[b"a", b"bc"])
    );
    assert_ne!(cache::patch_set_hash(&[]), h);
}

#[test]
fn cache_root_prefers_the_override_then_the_checkout_then_the_target_dir() {
    let tmp = TempDir::new("cacheroot");
    let out = Path::new("/t/target/aarch64-unknown-linux-gnu/debug/build/intattention-0123/out");
    assert_eq!(
        cache::cache_root(Some("/my/cache"), tmp.path(), out),
        PathBuf::from("/my/cache")
    );
    // A registry download has no .git: the target directory holds the cache.
    assert_eq!(
        cache::cache_root(None, tmp.path(), out),
        PathBuf::from("/t/target/aarch64-unknown-linux-gnu/acl-cache")
    );
    let native_out = Path::new("/t/target/release/build/intattention-1/out");
    assert_eq!(
        cache::cache_root(None, tmp.path(), native_out),
        PathBuf::from("/t/target/acl-cache")
    );
    fs::create_dir_all(tmp.path().join(".git")).unwrap();
    assert_eq!(
        cache::cache_root(None, tmp.path(), out),
        tmp.path().join(".acl-cache")
    );
}

// ---- download.rs (strategy d) -------------------------------------------------------------

#[test]
fn offline_conditions_are_found_without_touching_the_network() {
    let ok = download::Connectivity {
        cargo_offline: false,
        have_git: true,
        have_build_tool: true,
    };
    let mut asked = false;
    assert_eq!(
        download::offline_reason(&ok, || {
            asked = true;
            true
        }),
        None
    );
    assert!(asked, "with every local condition met, the remote is asked");

    let cases = [
        (
            download::Connectivity {
                cargo_offline: true,
                ..ok
            },
            "CARGO_NET_OFFLINE",
        ),
        (
            download::Connectivity {
                have_git: false,
                ..ok
            },
            "git is not installed",
        ),
        (
            download::Connectivity {
                have_build_tool: false,
                ..ok
            },
            "neither scons nor cmake",
        ),
    ];
    for (c, expected) in cases {
        let mut asked = false;
        let reason = download::offline_reason(&c, || {
            asked = true;
            true
        })
        .unwrap();
        assert!(reason.contains(expected), "{reason}");
        assert!(
            !asked,
            "no network probe when a local condition already fails"
        );
    }
    let unreachable = download::offline_reason(&ok, || false).unwrap();
    assert!(unreachable.contains("cannot be reached"), "{unreachable}");
}

#[test]
fn the_offline_error_text_is_exact() {
    assert_eq!(
        download::offline_error("cargo runs offline (CARGO_NET_OFFLINE is set)"),
        "intattention: no ARM ComputeLibrary (ACL) found, and ACL v52.5.0 cannot be downloaded \
         because cargo runs offline (CARGO_NET_OFFLINE is set). Point the build at an ACL you \
         already have: ACL_ROOT_DIR=/path/to/acl for a built ACL (a directory with arm_compute/ \
         headers and libarm_compute in lib/ or build/; 20.08 or 52.x), or \
         ACL_SOURCE_DIR=/path/to/ComputeLibrary for a v52.5.0 source tree that this build \
         patches and compiles with scons (tens of minutes on 2 cores, once). On Debian or \
         Ubuntu, `apt install libarm-compute-dev` is found without any variable. To build \
         without the ACL backend, leave out `--features acl`."
    );
}

#[test]
fn commands_past_their_deadline_are_stopped() {
    let start = std::time::Instant::now();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("5");
    match download::run_with_timeout(cmd, std::time::Duration::from_millis(200)) {
        Ok(done) => {
            assert!(!done);
            assert!(start.elapsed() < std::time::Duration::from_secs(3));
        }
        Err(e) => panic!("sleep(1) is needed for this test: {e}"),
    }
}

// ---- prebuilt.rs (strategy b) -------------------------------------------------------------

fn request(
    root: Option<&Path>,
    inc: Option<&Path>,
    lib: Option<&Path>,
) -> prebuilt::PrebuiltRequest {
    prebuilt::PrebuiltRequest {
        root: root.map(Path::to_path_buf),
        include_dir: inc.map(Path::to_path_buf),
        lib_dir: lib.map(Path::to_path_buf),
        version: None,
        prefer_static: false,
    }
}

#[test]
fn acl_root_dir_with_a_52x_install() {
    let tmp = TempDir::new("root52");
    fake_install(
        tmp.path(),
        "lib",
        &["libarm_compute.so", "libarm_compute-static.a"],
        Some("v52.5.0"),
    );
    write(&tmp.path().join("include/include/half/half.hpp"), b"");
    let install = prebuilt::from_request(&request(Some(tmp.path()), None, None))
        .unwrap()
        .unwrap();
    assert_eq!(install.version, AclVersion::V52 { minor: 5, patch: 0 });
    assert_eq!(install.lib_dir, tmp.path().join("lib"));
    assert_eq!(
        install.include_dirs,
        [
            tmp.path().join("include"),
            tmp.path().join("include/include")
        ]
    );
    assert!(!install.static_libs);
    assert_eq!(install.lib_names, ["arm_compute"]);
    assert!(!install.patched);
    assert_eq!(install.origin, AclOrigin::Prebuilt);

    let mut req = request(Some(tmp.path()), None, None);
    req.prefer_static = true;
    let st = prebuilt::from_request(&req).unwrap().unwrap();
    assert!(st.static_libs);
    assert_eq!(st.lib_names, ["arm_compute-static"]);
}

#[test]
fn acl_root_dir_finds_scons_and_release_layouts() {
    let scons_tree = TempDir::new("sconstree");
    write(&scons_tree.path().join("arm_compute/core/Types.h"), b"");
    write(
        &scons_tree.path().join("build/libarm_compute-static.a"),
        b"arm_compute_version=v52.4.0 ",
    );
    let i = prebuilt::from_request(&request(Some(scons_tree.path()), None, None))
        .unwrap()
        .unwrap();
    assert_eq!(i.lib_dir, scons_tree.path().join("build"));
    assert_eq!(i.include_dirs[0], scons_tree.path());
    assert!(i.static_libs);
    assert_eq!(i.version, AclVersion::V52 { minor: 4, patch: 0 });

    let release = TempDir::new("release");
    fake_install(
        release.path(),
        "lib/armv8a-neon",
        &["libarm_compute.so"],
        Some("v52.6.0"),
    );
    assert_eq!(
        prebuilt::find_lib_dir(release.path()),
        Some(release.path().join("lib/armv8a-neon"))
    );
}

#[test]
fn a_20x_install_links_arm_compute_core_too() {
    let tmp = TempDir::new("root20");
    fake_install(
        tmp.path(),
        "lib",
        &[
            "libarm_compute.so",
            "libarm_compute_core.so",
            "libarm_compute-static.a",
            "libarm_compute_core-static.a",
        ],
        Some("v20.08"),
    );
    let i = prebuilt::from_request(&request(
        None,
        Some(&tmp.path().join("include")),
        Some(&tmp.path().join("lib")),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(i.version, AclVersion::V20 { minor: 8 });
    assert_eq!(i.lib_names, ["arm_compute", "arm_compute_core"]);
    let (st, names) = prebuilt::choose_libs(&tmp.path().join("lib"), i.version, true).unwrap();
    assert!(st);
    assert_eq!(names, ["arm_compute-static", "arm_compute_core-static"]);
}

#[test]
fn versions_without_a_string_come_from_acl_version_or_the_layout() {
    let tmp = TempDir::new("nover");
    fake_install(tmp.path(), "lib", &["libarm_compute.so"], None);
    let inc = tmp.path().join("include");
    let lib = tmp.path().join("lib");
    let e = prebuilt::detect_version(&inc, &lib, None).unwrap_err();
    assert!(e.contains("ACL_VERSION"), "{e}");
    assert_eq!(
        prebuilt::detect_version(&inc, &lib, Some("v52.5.0")),
        Ok(AclVersion::V52 { minor: 5, patch: 0 })
    );
    write(&lib.join("libarm_compute_core.so"), b"");
    assert_eq!(
        prebuilt::detect_version(&inc, &lib, None),
        Ok(AclVersion::V20 { minor: 8 })
    );
}

#[test]
fn explicit_settings_that_point_nowhere_are_errors() {
    let missing = Path::new("/nonexistent/intattention/acl");
    let e = prebuilt::from_request(&request(Some(missing), None, None)).unwrap_err();
    assert!(
        e.contains("ACL_ROOT_DIR=/nonexistent/intattention/acl"),
        "{e}"
    );
    let e = prebuilt::from_request(&request(None, Some(missing), None)).unwrap_err();
    assert!(e.contains("must be set together"), "{e}");
    let empty = TempDir::new("empty");
    let e = prebuilt::from_request(&request(Some(empty.path()), None, None)).unwrap_err();
    assert!(e.contains("arm_compute/core/Types.h"), "{e}");
    let unsupported = TempDir::new("v24");
    fake_install(
        unsupported.path(),
        "lib",
        &["libarm_compute.so"],
        Some("v24.04"),
    );
    let e = prebuilt::from_request(&request(Some(unsupported.path()), None, None)).unwrap_err();
    assert!(e.contains("not supported"), "{e}");
    assert!(prebuilt::from_request(&request(None, None, None))
        .unwrap()
        .is_none());
}

#[test]
fn system_search_uses_the_multiarch_directories() {
    let c = prebuilt::system_candidates("aarch64-unknown-linux-gnu");
    assert_eq!(
        c[0],
        (
            PathBuf::from("/usr/include/aarch64-linux-gnu"),
            PathBuf::from("/usr/lib/aarch64-linux-gnu")
        )
    );
    assert!(prebuilt::system_candidates("aarch64-apple-darwin").is_empty());
    assert!(prebuilt::system_candidates("aarch64-linux-android").is_empty());
}

#[test]
fn system_search_skips_unsupported_installs_and_takes_the_next() {
    let old = TempDir::new("sys-old");
    fake_install(old.path(), "lib", &["libarm_compute.so"], Some("v23.08"));
    let good = TempDir::new("sys-good");
    fake_install(good.path(), "lib", &["libarm_compute.so"], Some("v52.5.0"));
    let candidates = vec![
        (old.path().join("include"), old.path().join("lib")),
        (good.path().join("include"), good.path().join("lib")),
    ];
    let (found, skipped) = prebuilt::find_system(&candidates, false);
    let found = found.unwrap();
    assert_eq!(found.lib_dir, good.path().join("lib"));
    assert_eq!(found.origin, AclOrigin::System);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("v23.08"), "{}", skipped[0]);
}

/// Debian's libarm-compute-dev:arm64, when this machine has it (the emulated aarch64 tier
/// installs it through scripts/setup-aarch64.sh).
#[test]
fn debian_multiarch_acl_is_recognised_when_installed() {
    let candidates = prebuilt::system_candidates("aarch64-unknown-linux-gnu");
    if !candidates[0].0.join("arm_compute/core/Types.h").is_file() {
        eprintln!("libarm-compute-dev:arm64 not installed; nothing to recognise");
        return;
    }
    let (found, skipped) = prebuilt::find_system(&candidates, false);
    let i = found.unwrap_or_else(|| panic!("not recognised: {skipped:?}"));
    assert_eq!(i.version, AclVersion::V20 { minor: 8 });
    assert_eq!(i.lib_names, ["arm_compute", "arm_compute_core"]);
    assert!(!i.static_libs);
}

// ---- link.rs ------------------------------------------------------------------------------

fn install(lib_dir: &str, static_libs: bool, names: &[&str]) -> AclInstall {
    AclInstall {
        include_dirs: vec![],
        lib_dir: PathBuf::from(lib_dir),
        version: AclVersion::V20 { minor: 8 },
        patched: false,
        static_libs,
        lib_names: names.iter().map(|s| s.to_string()).collect(),
        origin: AclOrigin::System,
    }
}

#[test]
fn link_lines_for_debian_shared_libraries() {
    let lines = link::link_lines(
        &install(
            "/usr/lib/aarch64-linux-gnu",
            false,
            &["arm_compute", "arm_compute_core"],
        ),
        "linux",
    );
    assert_eq!(
        lines,
        [
            "cargo:rustc-link-search=native=/usr/lib/aarch64-linux-gnu",
            "cargo:rustc-link-lib=dylib=arm_compute",
            "cargo:rustc-link-lib=dylib=arm_compute_core",
            "cargo:rustc-link-lib=dylib=pthread",
            "cargo:rustc-link-lib=dylib=dl",
        ]
    );
}

#[test]
fn link_lines_for_static_archives_add_the_cxx_runtime_and_rpath_only_for_shared() {
    let lines = link::link_lines(
        &install("/cache/k/build", true, &["arm_compute-static"]),
        "linux",
    );
    assert_eq!(
        lines,
        [
            "cargo:rustc-link-search=native=/cache/k/build",
            "cargo:rustc-link-lib=static=arm_compute-static",
            "cargo:rustc-link-lib=dylib=stdc++",
            "cargo:rustc-link-lib=dylib=pthread",
            "cargo:rustc-link-lib=dylib=dl",
        ]
    );
    let mac = link::link_lines(
        &install("/opt/acl/lib", true, &["arm_compute-static"]),
        "macos",
    );
    assert_eq!(mac[2], "cargo:rustc-link-lib=dylib=c++");
    assert_eq!(mac.len(), 3);
    let shared = link::link_lines(&install("/opt/acl/lib", false, &["arm_compute"]), "linux");
    assert_eq!(
        shared.last().unwrap(),
        "cargo:rustc-link-arg=-Wl,-rpath,/opt/acl/lib"
    );
    assert!(link::is_system_dir(Path::new(
        "/usr/lib/aarch64-linux-gnu/"
    )));
    assert!(!link::is_system_dir(Path::new("/usr/local/lib")));
}

// ---- patches/ -----------------------------------------------------------------------------

/// Every hunk's line counts match its header, and the patch adds IndexSoftmax to every build
/// system's list (scons' filelist.json under "integer", CMake, Bazel, Android.bp).
#[test]
fn patches_are_well_formed_unified_diffs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("patches");
    let mut patches: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    assert!(!patches.is_empty(), "no patches in {}", dir.display());
    let mut touched: Vec<String> = Vec::new();
    for patch in &patches {
        let text = fs::read_to_string(patch).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if let Some(path) = line.strip_prefix("+++ b/") {
                touched.push(path.to_string());
            }
            if let Some(rest) = line.strip_prefix("@@ -") {
                let (old, new) =
                    patch::hunk_counts(rest).unwrap_or_else(|| panic!("bad hunk header {line:?}"));
                let (mut seen_old, mut seen_new) = (0, 0);
                i += 1;
                while i < lines.len() && (seen_old < old || seen_new < new) {
                    match lines[i].chars().next() {
                        Some(' ') | None => {
                            seen_old += 1;
                            seen_new += 1;
                        }
                        Some('-') => seen_old += 1,
                        Some('+') => seen_new += 1,
                        Some('\\') => {}
                        _ => panic!(
                            "{}: unexpected line in hunk: {:?}",
                            patch.display(),
                            lines[i]
                        ),
                    }
                    i += 1;
                }
                assert_eq!(
                    (seen_old, seen_new),
                    (old, new),
                    "{}: hunk {line:?} has wrong counts",
                    patch.display()
                );
                continue;
            }
            i += 1;
        }
    }
    for expected in [
        "filelist.json",
        "src/CMakeLists.txt",
        "src/BUILD.bazel",
        "Android.bp",
        "src/cpu/kernels/CpuSoftmaxKernel.cpp",
        "src/cpu/kernels/softmax/generic/neon/index_softmax.cpp",
        "src/cpu/kernels/softmax/generic/neon/index_softmax.h",
    ] {
        assert!(
            touched.iter().any(|t| t == expected),
            "{expected} not in the patch"
        );
    }
}

// ---- patch.rs: applying and verifying -----------------------------------------------------

const TOY_PATCH: &str = r#"A toy patch in the layout of ours.
Provides-Symbol: _ZN3toy3newEv
---
diff --git a/list.txt b/list.txt
--- a/list.txt
+++ b/list.txt
@@ -2,3 +2,4 @@
 two
 three
+three and a half
 four
diff --git a/deep/dir/new.cpp b/deep/dir/new.cpp
new file mode 100644
--- /dev/null
+++ b/deep/dir/new.cpp
@@ -0,0 +1,2 @@
+// new
+int f() { return 1; }
"#;

/// A tree the toy patch fits: `list.txt` with five lines.
fn toy_tree(dir: &Path) {
    write(&dir.join("list.txt"), b"one\ntwo\nthree\nfour\nfive\n");
}

fn run_git(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap()
}

#[test]
fn patches_parse_into_files_hunks_and_declared_symbols() {
    let files = patch::parse(TOY_PATCH).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].path, "list.txt");
    assert!(!files[0].new_file);
    assert_eq!(
        files[0].hunks[0].1,
        ["two", "three", "three and a half", "four"]
    );
    assert_eq!(files[1].path, "deep/dir/new.cpp");
    assert!(files[1].new_file);
    assert_eq!(patch::provided_symbols(TOY_PATCH), ["_ZN3toy3newEv"]);
    // Symbols are only read from the preamble.
    assert!(patch::provided_symbols("--- a/x\n+++ b/x\nProvides-Symbol: no\n").is_empty());
    assert!(patch::parse("just words\n").is_err());
    assert!(patch::parse("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n").is_err());
}

/// The defect of issue 11: the cache lies inside the crate's git checkout (`.acl-cache/`), and
/// a plain `git apply` there skips every file and exits 0. The build script's apply must
/// change the files, and its verification must catch a patch that was not applied.
#[test]
fn patches_apply_inside_a_git_checkout() {
    if !have("git") {
        eprintln!("git not installed; nothing to test");
        return;
    }
    let checkout = TempDir::new("checkout");
    assert!(run_git(checkout.path(), &["init", "-q"]).status.success());
    let tree = checkout.path().join(".acl-cache/acl-key.partial-1/src");
    toy_tree(&tree);
    let patch_path = checkout.path().join("patches/0001-toy.patch");
    write(&patch_path, TOY_PATCH.as_bytes());
    let files = patch::parse(TOY_PATCH).unwrap();

    // What the old build script did: git apply inside the outer work tree.
    let naive = run_git(&tree, &["apply", patch_path.to_str().unwrap()]);
    let skipped_silently = naive.status.success()
        && fs::read_to_string(tree.join("list.txt")).unwrap() == "one\ntwo\nthree\nfour\nfive\n";
    if skipped_silently {
        eprintln!("this git skips the patch inside a checkout, as issue 11 found");
    }
    let not_applied = patch::verify(&tree, &files).unwrap_err();
    assert!(
        not_applied.contains("deep/dir/new.cpp") && not_applied.contains("list.txt"),
        "{not_applied}"
    );

    assert_eq!(
        patch::apply_and_verify(&tree, &patch_path).unwrap(),
        patch::Outcome::Applied
    );
    assert_eq!(
        fs::read_to_string(tree.join("list.txt")).unwrap(),
        "one\ntwo\nthree\nthree and a half\nfour\nfive\n"
    );
    assert_eq!(
        fs::read_to_string(tree.join("deep/dir/new.cpp")).unwrap(),
        "// new\nint f() { return 1; }\n"
    );
    // Nothing leaked into the outer repository.
    let status = run_git(
        checkout.path(),
        &["status", "--porcelain", "--untracked-files=no"],
    );
    assert!(String::from_utf8_lossy(&status.stdout).trim().is_empty());
}

/// A tree with a git repository of its own above the cache works the same (for example a
/// cache under a home directory that is itself a git checkout).
#[test]
fn patches_apply_with_offsets_and_report_trees_they_do_not_fit() {
    let tmp = TempDir::new("offsets");
    let tree = tmp.path().join("src");
    // Two extra lines on top: the hunk applies with an offset.
    write(
        &tree.join("list.txt"),
        b"zero\nzero and a half\none\ntwo\nthree\nfour\nfive\n",
    );
    let patch_path = tmp.path().join("toy.patch");
    write(&patch_path, TOY_PATCH.as_bytes());
    patch::apply_and_verify(&tree, &patch_path).unwrap();
    assert!(fs::read_to_string(tree.join("list.txt"))
        .unwrap()
        .contains("three\nthree and a half\nfour"));

    let other = TempDir::new("misfit");
    write(&other.path().join("list.txt"), b"nothing alike\n");
    let err = patch::apply_and_verify(other.path(), &patch_path).unwrap_err();
    assert!(err.contains("list.txt"), "{err}");
    assert!(
        !other.path().join("deep/dir/new.cpp").exists(),
        "a patch that does not fit changes nothing"
    );
}

/// An optional patch (a fix a later ACL may have made itself) that does not fit is reported as
/// not needed and changes nothing; one that fits is applied and verified like any other.
#[test]
fn optional_patches_are_skipped_only_when_they_do_not_fit() {
    let optional = TOY_PATCH.replace("Provides-Symbol:", "Optional: yes\nProvides-Symbol:");
    assert!(patch::is_optional(&optional));
    assert!(!patch::is_optional(TOY_PATCH));
    let tmp = TempDir::new("optional");
    let patch_path = tmp.path().join("toy.patch");
    write(&patch_path, optional.as_bytes());

    let misfit = tmp.path().join("misfit");
    write(&misfit.join("list.txt"), b"nothing alike\n");
    match patch::apply_and_verify(&misfit, &patch_path).unwrap() {
        patch::Outcome::NotNeeded(why) => assert!(why.contains("list.txt"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!misfit.join("deep/dir/new.cpp").exists());

    let fits = tmp.path().join("fits");
    toy_tree(&fits);
    assert_eq!(
        patch::apply_and_verify(&fits, &patch_path).unwrap(),
        patch::Outcome::Applied
    );
    assert!(fits.join("deep/dir/new.cpp").is_file());
}

#[test]
fn verification_names_each_missing_piece() {
    let tmp = TempDir::new("verify");
    toy_tree(tmp.path());
    let files = patch::parse(TOY_PATCH).unwrap();
    let err = patch::verify(tmp.path(), &files).unwrap_err();
    assert!(err.contains("list.txt: hunk @@ -2,3 +2,4 @@"), "{err}");
    assert!(err.contains("deep/dir/new.cpp: cannot read it"), "{err}");
    // A new file with other contents is not the patch's file.
    write(&tmp.path().join("deep/dir/new.cpp"), b"// new\n");
    write(
        &tmp.path().join("list.txt"),
        b"one\ntwo\nthree\nthree and a half\nfour\nfive\n",
    );
    let err = patch::verify(tmp.path(), &files).unwrap_err();
    assert_eq!(err, "deep/dir/new.cpp: not the file the patch creates");
    write(
        &tmp.path().join("deep/dir/new.cpp"),
        b"// new\nint f() { return 1; }\n",
    );
    patch::verify(tmp.path(), &files).unwrap();
}

#[test]
fn git_is_confined_to_the_tree_it_patches() {
    let tmp = TempDir::new("ceiling");
    let tree = tmp.path().join("a/src");
    fs::create_dir_all(&tree).unwrap();
    assert_eq!(
        patch::ceiling(&tree),
        fs::canonicalize(tmp.path().join("a")).unwrap()
    );
}

/// Our patch declares the symbols the build checks in the archive, and its new files parse.
#[test]
fn the_index_softmax_patch_declares_its_symbols() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("patches/0001-index-softmax.patch"),
    )
    .unwrap();
    let symbols = patch::provided_symbols(&text);
    assert!(
        symbols
            .iter()
            .any(|s| s.contains("22neon_s32_index_softmax")),
        "{symbols:?}"
    );
    assert!(
        symbols.iter().any(|s| s.contains("19NEIndexSoftmaxLayer")),
        "{symbols:?}"
    );
    let files = patch::parse(&text).unwrap();
    assert!(files.iter().filter(|f| f.new_file).count() >= 4);
    assert!(
        !patch::is_optional(&text),
        "the IndexSoftmax patch is never skipped"
    );
    // The SME2 detection fix is optional: a release that fixed ACL's detection lacks its context.
    let sme2 = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("patches/0002-sme2-detection.patch"),
    )
    .unwrap();
    assert!(patch::is_optional(&sme2));
    assert_eq!(
        patch::parse(&sme2).unwrap()[0].path,
        "src/common/cpuinfo/CpuIsaInfo.cpp"
    );
}

// ---- archive.rs: symbol indexes of static libraries ----------------------------------------

fn ar_member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        name,
        0,
        0,
        0,
        644,
        data.len()
    )
    .into_bytes();
    m.extend_from_slice(data);
    if data.len() % 2 == 1 {
        m.push(b'\n');
    }
    m
}

#[test]
fn gnu_symbol_indexes_are_read() {
    let names = ["_ZN11arm_compute3cpu22neon_s32_index_softmaxEv", "other"];
    let mut index = (names.len() as u32).to_be_bytes().to_vec();
    for _ in names {
        index.extend_from_slice(&100u32.to_be_bytes());
    }
    for n in names {
        index.extend_from_slice(n.as_bytes());
        index.push(0);
    }
    let mut ar = b"!<arch>\n".to_vec();
    ar.extend(ar_member("/", &index));
    ar.extend(ar_member("x.o/", b"\x7fELF"));
    assert_eq!(archive::parse_index(&ar).unwrap(), names);

    let mut index64 = (1u64).to_be_bytes().to_vec();
    index64.extend_from_slice(&8u64.to_be_bytes());
    index64.extend_from_slice(b"sym64\0");
    let mut ar64 = b"!<arch>\n".to_vec();
    ar64.extend(ar_member("/SYM64/", &index64));
    assert_eq!(archive::parse_index(&ar64).unwrap(), ["sym64"]);

    // From a file, and what is missing.
    let tmp = TempDir::new("ar");
    let path = tmp.path().join("libx.a");
    fs::write(&path, &ar).unwrap();
    let wanted = vec![names[0].to_string(), "absent".to_string()];
    assert_eq!(
        archive::missing_symbols(&path, &wanted).unwrap(),
        ["absent"]
    );
}

#[test]
fn bsd_symbol_indexes_are_read() {
    let strtab = b"_first\0_second\0";
    let mut data = b"__.SYMDEF SORTED\0\0\0\0".to_vec(); // #1/20 long name
    data.extend_from_slice(&16u32.to_le_bytes());
    for (strx, off) in [(0u32, 8u32), (7, 8)] {
        data.extend_from_slice(&strx.to_le_bytes());
        data.extend_from_slice(&off.to_le_bytes());
    }
    data.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
    data.extend_from_slice(strtab);
    let mut ar = b"!<arch>\n".to_vec();
    ar.extend(ar_member("#1/20", &data));
    assert_eq!(archive::parse_index(&ar).unwrap(), ["_first", "_second"]);
}

#[test]
fn archives_without_an_index_or_of_another_kind_are_errors() {
    assert!(archive::parse_index(b"\x7fELF").is_err());
    let mut ar = b"!<arch>\n".to_vec();
    ar.extend(ar_member("x.o/", b"\x7fELF"));
    let err = archive::parse_index(&ar).unwrap_err();
    assert!(err.contains("ranlib"), "{err}");
    let mut short = b"!<arch>\n".to_vec();
    short.extend(ar_member("/", &[0, 0, 0, 9]));
    assert!(archive::parse_index(&short).is_err());
}

/// A real archive from this machine's compiler and ar: a defined function is listed, a
/// function the object only calls is not.
#[test]
fn a_real_archive_lists_defined_symbols_only() {
    if !(have("cc") && have("ar")) {
        eprintln!("cc or ar missing; nothing to test");
        return;
    }
    let tmp = TempDir::new("realar");
    let c = tmp.path().join("k.c");
    fs::write(
        &c,
        "int called_only(int);\nint neon_s32_index_softmax_test(int x) { return called_only(x); }\n",
    )
    .unwrap();
    let o = tmp.path().join("k.o");
    let cc = std::process::Command::new("cc")
        .arg("-c")
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .status()
        .unwrap();
    assert!(cc.success());
    let lib = tmp.path().join("libk.a");
    let ar = std::process::Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(&o)
        .status()
        .unwrap();
    assert!(ar.success());
    let syms = archive::defined_symbols(&lib).unwrap();
    assert!(
        syms.iter().any(|s| s == "neon_s32_index_softmax_test"),
        "{syms:?}"
    );
    assert!(!syms.iter().any(|s| s == "called_only"), "{syms:?}");
}

// ---- the patched kernel, under qemu -------------------------------------------------------

/// The files a patch creates (`--- /dev/null`), as (path, contents).
fn new_files_in_patch(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut files = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "--- /dev/null" && i + 2 < lines.len() {
            let path = lines[i + 1]
                .strip_prefix("+++ b/")
                .expect("+++ b/ after --- /dev/null");
            let (_, count) =
                patch::hunk_counts(lines[i + 2].strip_prefix("@@ -").expect("hunk header"))
                    .unwrap();
            let body: Vec<&str> = lines[i + 3..i + 3 + count]
                .iter()
                .map(|l| l.strip_prefix('+').expect("added line"))
                .collect();
            files.push((path.to_string(), body.join("\n") + "\n"));
            i += 3 + count;
        } else {
            i += 1;
        }
    }
    files
}

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Score rows for one threshold and table size: random spreads, exact index boundaries of both
/// index rules (D = ceil(T (2k-1) / (2 n1)) and ceil(T k / n1), and one below each), i32
/// extremes, ties with the maximum, flat rows, and rows made only of i32::MIN.
fn score_rows(t: u32, n1: u32, width: usize, rows: usize, rng: &mut XorShift) -> Vec<i32> {
    let (t64, n164) = (t as i64, n1 as i64);
    let boundaries: Vec<i64> = (1..=n164)
        .flat_map(|k| {
            let exact = (t64 * (2 * k - 1) + 2 * n164 - 1) / (2 * n164);
            let sim = (t64 * k + n164 - 1) / n164;
            [exact, exact - 1, sim, sim - 1]
        })
        .filter(|&d| (0..=t64).contains(&d))
        .collect();
    let mut out = Vec::with_capacity(width * rows);
    for r in 0..rows {
        let m: i64 = match r % 4 {
            0 => i32::MAX as i64,
            1 => 0,
            2 => i32::MIN as i64 + rng.below(3) as i64,
            _ => rng.below(1 << 32) as i64 - (1 << 31),
        };
        for j in 0..width {
            let d: i64 = match (r + j) % 6 {
                _ if r % 7 == 6 => 0,                     // flat row: all ties with the maximum
                _ if r % 11 == 10 => m - i32::MIN as i64, // every entry as small as possible
                0 => boundaries[rng.below(boundaries.len() as u64) as usize],
                1 => rng.below(2 * t as u64 + 1) as i64,
                2 => rng.below(1 << 33) as i64,
                3 => m - i32::MIN as i64,           // the smallest score
                4 => t64 + rng.below(3) as i64 - 1, // at the clip
                _ => rng.below(t as u64 / 4 + 1) as i64,
            };
            out.push((m - d).clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        }
    }
    out
}

/// One harness block: parameters, rows and the reference result.
struct KernelCase {
    t: u32,
    width: usize,
    finish: u32,
    bits: u32,
    valid: Vec<u32>,
    scores: Vec<i32>,
}

impl KernelCase {
    fn lut(&self) -> intattention::lut::Lut {
        intattention::lut::Lut::new(self.bits, 6.6).unwrap()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        let lut = self.lut();
        let table = lut.entries();
        for v in [
            self.t,
            self.width as u32,
            self.valid.len() as u32,
            self.finish,
            table.len() as u32,
        ] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        buf.extend_from_slice(table);
        for v in &self.valid {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for s in &self.scores {
            buf.extend_from_slice(&s.to_le_bytes());
        }
    }

    /// src/reference.rs on every row: (outputs, row sums).
    fn reference(&self) -> (Vec<u8>, Vec<u32>) {
        let lut = self.lut();
        let mut out = vec![0u8; self.scores.len()];
        let mut sums = Vec::new();
        for (r, (row, o)) in self
            .scores
            .chunks(self.width)
            .zip(out.chunks_mut(self.width))
            .enumerate()
        {
            let valid = self.valid[r] as usize;
            let keep = |j: usize| j < valid;
            let t = self.t as i32;
            let sum = match self.finish {
                2 => intattention::reference::index_softmax_paper_sim_row(row, keep, &lut, t, o),
                f => {
                    let sum = intattention::reference::index_softmax_row(row, keep, &lut, t, o);
                    if f == 0 {
                        intattention::reference::normalize_row(o, sum);
                    }
                    sum
                }
            };
            sums.push(sum);
        }
        (out, sums)
    }
}

/// Compiles the kernel as the patch ships it, with patches/test/index_softmax_harness.cpp,
/// against Debian's ACL 20.08 headers, and checks every finish (Normalized, Deferred and
/// PaperSim, with their row sums) bit for bit against src/reference.rs under qemu-aarch64:
/// every table size, thresholds from 1 to 2^30, widths around the vector lengths (the vector
/// body and the scalar tail), prefix masks with fully masked rows, and adversarial rows (i32
/// extremes, ties at index boundaries). The patch's runtime function is compiled too. Under the
/// emulated aarch64 tier's tools only; without them the test says so and checks nothing.
#[test]
fn patched_index_softmax_kernel_matches_the_reference_under_qemu() {
    let headers = Path::new("/usr/include/aarch64-linux-gnu/arm_compute/core/Types.h");
    if !(have("aarch64-linux-gnu-g++") && have("qemu-aarch64") && headers.is_file()) {
        eprintln!("aarch64 tier not installed (scripts/setup-aarch64.sh); kernel not run");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = TempDir::new("kernel");
    let patch = fs::read_to_string(root.join("patches/0001-index-softmax.patch")).unwrap();
    let files = new_files_in_patch(&patch);
    for (path, body) in &files {
        write(&tmp.path().join(path), body.as_bytes());
    }
    let kernel = "src/cpu/kernels/softmax/generic/neon/index_softmax.cpp";
    let function = "src/runtime/NEON/functions/NEIndexSoftmaxLayer.cpp";
    for f in [kernel, function] {
        assert!(files.iter().any(|(p, _)| p == f), "the patch adds {f}");
    }
    let gxx = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("aarch64-linux-gnu-g++")
            .args([
                "-std=c++14",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-march=armv8-a",
            ])
            .arg("-I")
            .arg(tmp.path())
            .arg("-I/usr/include/aarch64-linux-gnu")
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compile failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The runtime function: compiled only (it runs in tests/acl.rs against a patched 52.x).
    let obj = tmp.path().join("function.o");
    gxx(&[
        "-c".as_ref(),
        tmp.path().join(function).as_os_str(),
        "-o".as_ref(),
        obj.as_os_str(),
    ]);
    let exe = tmp.path().join("harness");
    gxx(&[
        tmp.path().join(kernel).as_os_str(),
        root.join("patches/test/index_softmax_harness.cpp")
            .as_os_str(),
        "-larm_compute".as_ref(),
        "-larm_compute_core".as_ref(),
        "-o".as_ref(),
        exe.as_os_str(),
    ]);
    let qemu = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("qemu-aarch64")
            .args(["-cpu", "max", "-L", "/"])
            .arg(&exe)
            .args(args)
            .output()
            .unwrap()
    };

    let v = qemu(&["validate".as_ref()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let verdicts = String::from_utf8(v.stdout).unwrap();
    let expected = "s32_to_u8 1\ns32_to_qasymm8 1\nlargest_threshold 1\nqasymm8_scale_1_256 0\n\
                    threshold_zero 0\nthreshold_fraction 0\nthreshold_too_large 0\naxis_1 0\nlog 0\n\
                    output_uninitialised 0\nshape_mismatch 0\noutput_s32 0\ninput_f32 0\nrow_too_long 0\n";
    assert_eq!(verdicts, expected);

    let lut = intattention::lut::Lut::new(5, 6.6).unwrap();
    assert_eq!(
        lut.entries(),
        [
            255, 206, 167, 135, 109, 88, 71, 57, 46, 38, 30, 25, 20, 16, 13, 10, 8, 7, 6, 4, 4, 3,
            2, 2, 2, 1, 1, 1, 1, 1, 0, 0
        ],
        "the kernel's default table is docs/numerics.md section 3's"
    );
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut cases = Vec::new();
    let mut add = |t: u32, width: usize, bits: u32, rng: &mut XorShift| {
        // Row 6 is flat (every entry 255): at 4099 it overflows a 16-bit sum lane kept too long.
        let rows = if width > 1000 { 7 } else { 12 };
        let n1 = (1u32 << bits) - 1;
        let scores = score_rows(t, n1, width, rows, rng);
        for finish in 0..3 {
            // Whole rows, then prefix masks: a fully masked row, one entry, random lengths.
            for masked in [false, true] {
                let valid: Vec<u32> = (0..rows)
                    .map(|r| match (masked, r % 4) {
                        (false, _) => width as u32,
                        (true, 0) => 0,
                        (true, 1) => 1.min(width as u32),
                        (true, 2) => width as u32,
                        _ => rng.below(width as u64 + 1) as u32,
                    })
                    .collect();
                cases.push(KernelCase {
                    t,
                    width,
                    finish,
                    bits,
                    valid,
                    scores: scores.clone(),
                });
            }
        }
    };
    // Thresholds 2^24 + 1 and 2^30 - 1 are not exact in f32: the kernel takes integers.
    for t in [
        1u32,
        2,
        3,
        31,
        62,
        63,
        1000,
        12_345,
        (1 << 24) - 1,
        (1 << 24) + 1,
        3 << 25,
        (1 << 30) - 1,
        1 << 30,
    ] {
        for width in [
            1usize, 2, 3, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 4099,
        ] {
            add(t, width, 5, &mut rng);
        }
    }
    for bits in [4, 6, 7, 8] {
        for t in [1u32, 63, 12_345, 1 << 30] {
            for width in [1usize, 17, 64, 100, 1000] {
                add(t, width, bits, &mut rng);
            }
        }
    }
    let mut input = Vec::new();
    for c in &cases {
        c.encode(&mut input);
    }
    let (in_path, out_path) = (tmp.path().join("in.bin"), tmp.path().join("out.bin"));
    fs::write(&in_path, &input).unwrap();
    let run = qemu(&["rows".as_ref(), in_path.as_os_str(), out_path.as_os_str()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = fs::read(&out_path).unwrap();
    let mut at = 0;
    let mut rows_checked = 0;
    for c in &cases {
        let (want, want_sums) = c.reference();
        let n = want.len();
        let sums: Vec<u32> = got[at + n..at + n + 4 * want_sums.len()]
            .chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        for (r, (g, w)) in got[at..at + n]
            .chunks(c.width)
            .zip(want.chunks(c.width))
            .enumerate()
        {
            assert_eq!(
                g,
                w,
                "T={} width={} finish={} b={} row {r} valid {}: {:?}",
                c.t,
                c.width,
                c.finish,
                c.bits,
                c.valid[r],
                &c.scores[r * c.width..(r + 1) * c.width]
            );
        }
        assert_eq!(
            sums, want_sums,
            "row sums: T={} width={} finish={} b={}",
            c.t, c.width, c.finish, c.bits
        );
        at += n + 4 * want_sums.len();
        rows_checked += c.valid.len();
    }
    assert_eq!(at, got.len());
    assert!(rows_checked > 10_000, "{rows_checked} rows");
}
