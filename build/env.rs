//! Environment variables of the build script. Every user-facing variable is read through
//! [`Env::var`], which tries the target-prefixed name first (`AARCH64_UNKNOWN_LINUX_GNU_ACL_ROOT_DIR`,
//! as openssl-sys does) and tells cargo to rerun when either name changes.

/// Reads build-script environment variables for one target triple.
pub struct Env {
    target: String,
}

impl Env {
    pub fn new(target: &str) -> Self {
        Env {
            target: target.to_string(),
        }
    }

    /// The value of `name`, preferring the target-prefixed spelling; empty values count as
    /// unset so that `ACL_ROOT_DIR=` can switch a variable off in a shell.
    pub fn var(&self, name: &str) -> Option<String> {
        let names = candidate_names(name, &self.target);
        for n in &names {
            println!("cargo:rerun-if-env-changed={n}");
        }
        names
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .find(|v| !v.trim().is_empty())
    }

    /// A boolean switch: set to anything but `0`, `false`, `no` or `off`.
    pub fn flag(&self, name: &str) -> bool {
        self.var(name).is_some_and(|v| is_truthy(&v))
    }
}

/// The names tried for `name`, in order: target-prefixed (triple upper-cased, `-` and `.` as
/// `_`), then plain.
pub fn candidate_names(name: &str, target: &str) -> [String; 2] {
    let prefix: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    [format!("{prefix}_{name}"), name.to_string()]
}

/// How a switch variable's value reads.
pub fn is_truthy(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}
