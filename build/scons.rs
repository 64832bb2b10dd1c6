//! How ACL is configured when we build it: the target-to-scons table, the scons command line,
//! the reduced operator set (`build_config`) and the CMake fallback's definitions. Pure
//! functions; build/source.rs runs them.

use std::path::Path;

/// The operators the shim calls (NEGEMM, NEGEMMLowpMatrixMultiplyCore, NESoftmaxLayer,
/// NECast, NEQuantizationLayer, NEDequantizationLayer, NETranspose), plus those they link
/// against: filelist.json's dependency lists are incomplete, and this list is the smallest
/// that links NEGEMM (checked on v52.3.0).
pub const OPERATORS: &[&str] = &[
    "Activation",
    "Cast",
    "Conv2d",
    "Copy",
    "Dequantize",
    "Gemm",
    "Permute",
    "Quantize",
    "Softmax",
    "Transpose",
];

/// Data types, lower-case as scons expects; `integer` turns on `ENABLE_INTEGER_KERNELS`, which
/// IndexSoftmax (an S32-input kernel) needs.
pub const DATA_TYPES: &[&str] = &["fp32", "fp16", "qasymm8", "qasymm8_signed", "integer"];

pub const DATA_LAYOUTS: &[&str] = &["nhwc", "nchw"];

/// scons' `os` for a Rust target triple; `None` for targets ACL cannot run on.
pub fn scons_os(triple: &str) -> Option<&'static str> {
    if triple.split('-').next()? != "aarch64" {
        return None;
    }
    if triple.contains("-apple-darwin") {
        Some("macos")
    } else if triple.contains("-linux-android") {
        Some("android")
    } else if triple.contains("-linux-") {
        Some("linux")
    } else {
        None
    }
}

/// ACL's scons `arch` values for 64-bit Arm (SConstruct's list without 32-bit and x86).
pub const AARCH64_ARCHS: &[&str] = &[
    "armv8a",
    "armv8.2-a",
    "armv8.2-a-sve",
    "armv8.2-a-sve2",
    "armv8.6-a",
    "armv8.6-a-sve",
    "armv8.6-a-sve2",
    "armv8.6-a-sve2-sme2",
    "arm64-v8a",
    "arm64-v8.2-a",
    "arm64-v8.2-a-sve",
    "arm64-v8.2-a-sve2",
];

/// The instruction set ACL is compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchChoice {
    /// scons `arch=`.
    pub arch: String,
    /// scons `multi_isa=1`: the common code for `arch`, each kernel also for the extensions it
    /// uses, chosen at run time by ACL's CPU detection.
    pub multi_isa: bool,
    /// One phrase for messages: why this choice.
    pub why: String,
}

/// What the choice depends on.
pub struct ArchRequest<'a> {
    pub target: &'a str,
    pub host: &'a str,
    /// `INTATTENTION_ACL_ARCH`: `multi-isa` (the default), `native`, or one of
    /// [`AARCH64_ARCHS`].
    pub requested: Option<&'a str>,
    /// The build machine's CPU features as Linux lists them (`/proc/cpuinfo`, "Features"), for
    /// `native`.
    pub build_machine_features: fn() -> Option<String>,
}

/// The ACL arch for a build. By default ACL's multi-ISA variant on an Armv8-A baseline: a
/// library built anywhere runs on every 64-bit Arm core (a Cortex-A72 without LSE atomics,
/// dotprod or fp16 included) and still uses dotprod, i8mm, fp16 and SVE kernels where the core
/// has them. A single-ISA build for a newer arch dies with SIGILL on older cores (it lets the
/// compiler use LSE atomics anywhere), so it is only chosen on request: `native` picks the
/// build machine's arch (native builds only), any name in [`AARCH64_ARCHS`] is taken as is.
pub fn choose_arch(r: &ArchRequest<'_>) -> Result<ArchChoice, String> {
    let requested = r.requested.map(str::trim).unwrap_or("");
    match requested {
        "" | "multi-isa" | "multi_isa" => Ok(ArchChoice {
            arch: "armv8a".to_string(),
            multi_isa: true,
            why: "multi-ISA on an Armv8-A baseline: runs on every 64-bit Arm core, picks \
                  dotprod/i8mm/fp16/SVE kernels at run time"
                .to_string(),
        }),
        "native" => {
            if r.target != r.host {
                return Err(format!(
                    "INTATTENTION_ACL_ARCH=native describes the build machine, but this build \
                     cross-compiles ({} for {}); leave it unset (multi-ISA) or name an arch \
                     ({})",
                    r.host,
                    r.target,
                    AARCH64_ARCHS.join(", ")
                ));
            }
            let features = (r.build_machine_features)().ok_or_else(|| {
                "INTATTENTION_ACL_ARCH=native: cannot read this machine's CPU features \
                 (/proc/cpuinfo); name an arch instead"
                    .to_string()
            })?;
            let arch = arch_for_features(&features);
            Ok(ArchChoice {
                arch: arch.to_string(),
                multi_isa: false,
                why: format!("{arch} for the build machine (INTATTENTION_ACL_ARCH=native)"),
            })
        }
        name if AARCH64_ARCHS.contains(&name) => Ok(ArchChoice {
            arch: name.to_string(),
            multi_isa: false,
            why: format!("{name} (INTATTENTION_ACL_ARCH)"),
        }),
        other => Err(format!(
            "INTATTENTION_ACL_ARCH={other} is not one of multi-isa, native, {}",
            AARCH64_ARCHS.join(", ")
        )),
    }
}

/// The newest single ACL arch whose code a core with these Linux feature flags executes:
/// `armv8.6-a` needs i8mm and bf16, `armv8.2-a` needs LSE atomics, fp16 arithmetic and dotprod.
pub fn arch_for_features(features: &str) -> &'static str {
    let has = |f: &str| features.split_whitespace().any(|x| x == f);
    if has("i8mm") && has("bf16") && has("atomics") && has("asimdhp") && has("asimddp") {
        "armv8.6-a"
    } else if has("atomics") && has("fphp") && has("asimdhp") && has("asimddp") {
        "armv8.2-a"
    } else {
        "armv8a"
    }
}

/// The "Features" line of this machine's /proc/cpuinfo (Linux on Arm), if any.
pub fn build_machine_features() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "Features").then(|| value.trim().to_string())
    })
}

/// The build_config JSON: operators, data types and layouts.
pub fn build_config_json() -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{\n  \"operators\": [{}],\n  \"data_types\": [{}],\n  \"data_layouts\": [{}]\n}}\n",
        list(OPERATORS),
        list(DATA_TYPES),
        list(DATA_LAYOUTS)
    )
}

/// The C and C++ compilers scons must use, split the way ACL's SConstruct combines them:
/// `CC = toolchain_prefix + $CC`, `CXX = toolchain_prefix + $CXX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// e.g. `aarch64-linux-gnu-` (with a directory if the compiler was given as a path).
    pub prefix: String,
    pub cc: String,
    pub cxx: String,
}

/// Splits the target's C++ compiler as the `cc` crate finds it (`aarch64-linux-gnu-g++`,
/// `/opt/x/bin/aarch64-linux-gnu-g++-12`, `clang++`, `c++`) into prefix and compiler names.
pub fn split_toolchain(cxx_path: &str) -> Toolchain {
    let (dir, file) = match cxx_path.rfind('/') {
        Some(i) => (&cxx_path[..=i], &cxx_path[i + 1..]),
        None => ("", cxx_path),
    };
    // Known compiler names, longest first so that `clang++` wins over `g++`.
    const NAMES: &[(&str, &str)] = &[
        ("clang++", "clang"),
        ("g++", "gcc"),
        ("c++", "cc"),
        ("clang", "clang"),
        ("gcc", "gcc"),
    ];
    for (cxx, cc) in NAMES {
        if let Some(pos) = file.find(cxx) {
            let at_boundary = pos == 0 || file.as_bytes()[pos - 1] == b'-';
            if at_boundary {
                let prefix = &file[..pos];
                let suffix = &file[pos + cxx.len()..]; // e.g. "-12"
                let cxx_name = if *cxx == "clang" { "clang++" } else { cxx };
                return Toolchain {
                    prefix: format!("{dir}{prefix}"),
                    cc: format!("{cc}{suffix}"),
                    cxx: format!("{cxx_name}{suffix}"),
                };
            }
        }
    }
    Toolchain {
        prefix: dir.to_string(),
        cc: "cc".to_string(),
        cxx: file.to_string(),
    }
}

/// Everything the scons command line depends on.
pub struct SconsConfig<'a> {
    pub os: &'a str,
    pub arch: &'a ArchChoice,
    /// `None` for a native build (scons then forces empty prefixes), `Some(prefix)` to cross
    /// compile.
    pub cross_prefix: Option<&'a str>,
    pub build_dir: &'a Path,
    pub build_config: &'a Path,
    pub jobs: u32,
    /// `INTATTENTION_ACL_SCONS_ARGS`, appended last so that it can override ours.
    pub extra: &'a [String],
}

/// The scons arguments (without the `scons` program itself). Only options every 52.x
/// SConstruct knows: an unknown option makes scons exit.
pub fn scons_args(c: &SconsConfig<'_>) -> Vec<String> {
    let mut args = vec![
        format!("-j{}", c.jobs.max(1)),
        format!("os={}", c.os),
        format!("arch={}", c.arch.arch),
        format!("multi_isa={}", u8::from(c.arch.multi_isa)),
        "neon=1".to_string(),
        "opencl=0".to_string(),
        "examples=0".to_string(),
        "Werror=0".to_string(),
        "cppthreads=1".to_string(),
        "openmp=0".to_string(),
        // Static library only.
        "standalone=1".to_string(),
    ];
    match c.cross_prefix {
        None => args.push("build=native".to_string()),
        Some(prefix) => {
            args.push("build=cross_compile".to_string());
            args.push(format!("toolchain_prefix={prefix}"));
        }
    }
    args.push(format!("build_dir={}", c.build_dir.display()));
    args.push(format!("build_config={}", c.build_config.display()));
    args.extend(c.extra.iter().cloned());
    // The static library's alias as the only target: a multi-ISA build otherwise also compiles
    // every source a second time as a shared object (SConscript marks both as default
    // targets, standalone=1 or not), which doubles the build time.
    args.push("arm_compute".to_string());
    args
}

/// CMake definitions for the fallback build (ACL's CMake cannot be reduced to an operator
/// list: it always compiles everything, for every ISA).
pub fn cmake_defines() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ARM_COMPUTE_BUILD_SHARED_LIB", "OFF"),
        ("ARM_COMPUTE_BUILD_EXAMPLES", "OFF"),
        ("ARM_COMPUTE_BUILD_TESTING", "OFF"),
        ("ARM_COMPUTE_ENABLE_OPENMP", "OFF"),
        ("ARM_COMPUTE_ENABLE_CPPTHREADS", "ON"),
        ("ARM_COMPUTE_ENABLE_WERROR", "OFF"),
        ("ARM_COMPUTE_ENABLE_ASSERTS", "OFF"),
    ]
}
