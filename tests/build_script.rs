//! Offline tests of the build script's pure parts (strategies a to d): environment names,
//! the ACL-off decision, version parsing, the target-to-scons table, the scons command line,
//! cache keys and roots, prebuilt detection on fake install trees, link lines, the offline
//! error text, and the shape of `patches/`. None of them needs ACL sources or network.

#[path = "../build/acl_install.rs"]
#[allow(dead_code)]
mod acl_install;
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
fn target_to_scons_table() {
    assert_eq!(
        scons::scons_os_arch("aarch64-unknown-linux-gnu"),
        Some(("linux", "armv8.6-a"))
    );
    assert_eq!(
        scons::scons_os_arch("aarch64-unknown-linux-musl"),
        Some(("linux", "armv8.6-a"))
    );
    assert_eq!(
        scons::scons_os_arch("aarch64-apple-darwin"),
        Some(("macos", "armv8.6-a"))
    );
    assert_eq!(
        scons::scons_os_arch("aarch64-linux-android"),
        Some(("android", "armv8.6-a"))
    );
    assert_eq!(scons::scons_os_arch("x86_64-unknown-linux-gnu"), None);
    assert_eq!(scons::scons_os_arch("aarch64-pc-windows-msvc"), None);
    assert_eq!(scons::scons_os_arch("armv7-unknown-linux-gnueabihf"), None);
}

#[test]
fn scons_arguments_for_a_cross_build() {
    let extra = vec!["debug=1".to_string()];
    let args = scons::scons_args(&scons::SconsConfig {
        os: "linux",
        arch: "armv8.6-a",
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
            "arch=armv8.6-a",
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
        ]
    );
}

#[test]
fn scons_arguments_for_a_native_build() {
    let args = scons::scons_args(&scons::SconsConfig {
        os: "macos",
        arch: "armv8.6-a",
        cross_prefix: None,
        build_dir: Path::new("/b"),
        build_config: Path::new("/c.json"),
        jobs: 0,
        extra: &[],
    });
    assert_eq!(args[0], "-j1", "at least one job");
    assert!(args.contains(&"build=native".to_string()));
    assert!(args.contains(&"os=macos".to_string()));
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
         patches and compiles with scons (about 40 minutes on 2 cores). On Debian or Ubuntu, \
         `apt install libarm-compute-dev` is found without any variable. To build without the \
         ACL backend, use --no-default-features."
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
                    hunk_counts(rest).unwrap_or_else(|| panic!("bad hunk header {line:?}"));
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

/// `a,b +c,d @@` -> (b, d); a missing count means 1.
fn hunk_counts(rest: &str) -> Option<(usize, usize)> {
    let mut parts = rest.split_whitespace();
    let old = parts.next()?;
    let new = parts.next()?.strip_prefix('+')?;
    let count = |s: &str| -> Option<usize> {
        match s.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    Some((count(old)?, count(new)?))
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
                hunk_counts(lines[i + 2].strip_prefix("@@ -").expect("hunk header")).unwrap();
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

/// Score rows for one threshold: random spreads, exact index boundaries (D = ceil(T (2k-1) / 62)
/// and one below), i32 extremes, and flat rows.
fn score_rows(t: u32, width: usize, rows: usize, rng: &mut XorShift) -> Vec<i32> {
    let t64 = t as i64;
    let boundaries: Vec<i64> = (1..=31i64)
        .flat_map(|k| {
            let b = (t64 * (2 * k - 1) + 61) / 62;
            [b, b - 1]
        })
        .filter(|&d| (0..=t64).contains(&d))
        .collect();
    let mut out = Vec::with_capacity(width * rows);
    for r in 0..rows {
        let m: i64 = match r % 4 {
            0 => i32::MAX as i64,
            1 => 0,
            _ => rng.below(1 << 32) as i64 - (1 << 31),
        };
        for j in 0..width {
            let d: i64 = match (r + j) % 5 {
                _ if r % 7 == 6 => 0, // flat row
                0 => boundaries[rng.below(boundaries.len() as u64) as usize],
                1 => rng.below(2 * t as u64 + 1) as i64,
                2 => rng.below(1 << 33) as i64,
                3 => m - i32::MIN as i64, // the smallest score
                _ => rng.below(t as u64 / 4 + 1) as i64,
            };
            out.push((m - d).clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        }
    }
    out
}

/// Compiles the kernel as the patch ships it, with patches/test/index_softmax_harness.cpp,
/// against Debian's ACL 20.08 headers, and checks it bit for bit against src/reference.rs
/// under qemu-aarch64 (the emulated aarch64 tier's tools; without them the test says so and
/// checks nothing).
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
    assert_eq!(
        files.len(),
        2,
        "the patch adds index_softmax.h and index_softmax.cpp"
    );
    for (path, body) in &files {
        write(&tmp.path().join(path), body.as_bytes());
    }
    let exe = tmp.path().join("harness");
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
        .arg(
            tmp.path()
                .join("src/cpu/kernels/softmax/generic/neon/index_softmax.cpp"),
        )
        .arg(root.join("patches/test/index_softmax_harness.cpp"))
        .args(["-larm_compute", "-larm_compute_core", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        "the kernel's table is SPEC section 3's"
    );
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut cases = 0;
    // Thresholds are integers exact in f32 (they travel through `beta`).
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
        3 << 25,
        1 << 30,
    ] {
        for width in [1usize, 5, 15, 16, 17, 31, 32, 33, 64, 100, 1000, 4099] {
            let rows = if width > 1000 { 3 } else { 8 };
            let scores = score_rows(t, width, rows, &mut rng);
            let mut input = Vec::with_capacity(12 + 4 * scores.len());
            for v in [t, width as u32, rows as u32] {
                input.extend_from_slice(&v.to_le_bytes());
            }
            for s in &scores {
                input.extend_from_slice(&s.to_le_bytes());
            }
            let (in_path, out_path) = (tmp.path().join("in.bin"), tmp.path().join("out.bin"));
            fs::write(&in_path, &input).unwrap();
            let run = qemu(&["rows".as_ref(), in_path.as_os_str(), out_path.as_os_str()]);
            assert!(
                run.status.success(),
                "T={t} width={width}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let got = fs::read(&out_path).unwrap();
            for r in 0..rows {
                let row = &scores[r * width..(r + 1) * width];
                let mut want = vec![0u8; width];
                let sum = intattention::reference::index_softmax_row(
                    row,
                    |_| true,
                    &lut,
                    t as i32,
                    &mut want,
                );
                intattention::reference::normalize_row(&mut want, sum);
                assert_eq!(
                    &got[r * width..(r + 1) * width],
                    &want[..],
                    "T={t} width={width} row {r}: {row:?}"
                );
            }
            cases += rows;
        }
    }
    assert!(cases > 700);
}
