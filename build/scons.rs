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

/// scons' `os` and `arch` for a Rust target triple; `None` for targets ACL cannot run on.
pub fn scons_os_arch(triple: &str) -> Option<(&'static str, &'static str)> {
    let arch = triple.split('-').next()?;
    if arch != "aarch64" {
        return None;
    }
    // armv8.6-a: the paper's platforms (Apple M2, RK3588's Cortex-A76 lacks i8mm but ACL
    // selects kernels at run time within what the build enables).
    if triple.contains("-apple-darwin") {
        Some(("macos", "armv8.6-a"))
    } else if triple.contains("-linux-android") {
        Some(("android", "armv8.6-a"))
    } else if triple.contains("-linux-") {
        Some(("linux", "armv8.6-a"))
    } else {
        None
    }
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
    pub arch: &'a str,
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
        format!("arch={}", c.arch),
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
