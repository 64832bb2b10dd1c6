//! Applying `patches/*.patch` to a copied ACL tree, and proving that it happened.
//!
//! `git apply` run in a directory inside another git work tree (the default cache,
//! `.acl-cache/` of a crate checkout) takes the patch's paths relative to that outer
//! repository, skips every file as "outside the directory" and still exits 0, `--check`
//! included. So git runs here with `GIT_CEILING_DIRECTORIES` set to the tree's parent (it
//! cannot discover any repository around the tree and applies relative to it, like
//! `patch -p1`), and whatever tool applied the patch, [`verify`] then reads the files back:
//! every new file must hold exactly the patch's text and every hunk's resulting lines must be
//! in its file. A patch that did not land is a build error, never a success message.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// One file of a unified diff, as far as verification needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePatch {
    /// Path inside the tree (the `+++ b/` name).
    pub path: String,
    /// Created by the patch (`--- /dev/null`).
    pub new_file: bool,
    /// Per hunk: its header and the lines the file holds there afterwards (context and added
    /// lines, in order).
    pub hunks: Vec<(String, Vec<String>)>,
}

/// Reads the files and hunks of a unified diff (the format `git diff` and `diff -u` write).
/// Text before the first `--- ` line (a commit message) is ignored.
pub fn parse(text: &str) -> Result<Vec<FilePatch>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut files: Vec<FilePatch> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let (Some(old), Some(new)) = (
            line.strip_prefix("--- "),
            lines.get(i + 1).and_then(|l| l.strip_prefix("+++ ")),
        ) {
            let new = new.split('\t').next().unwrap_or(new).trim_end();
            if new == "/dev/null" {
                return Err(format!(
                    "the patch deletes {old}: not supported (nothing could verify it)"
                ));
            }
            let path = new.strip_prefix("b/").unwrap_or(new).to_string();
            files.push(FilePatch {
                path,
                new_file: old.split('\t').next().unwrap_or(old).trim_end() == "/dev/null",
                hunks: Vec::new(),
            });
            i += 2;
            continue;
        }
        if let Some(rest) = line.strip_prefix("@@ -") {
            let file = files
                .last_mut()
                .ok_or_else(|| format!("hunk {line:?} before any file header"))?;
            let (old_count, new_count) =
                hunk_counts(rest).ok_or_else(|| format!("bad hunk header {line:?}"))?;
            let (mut seen_old, mut seen_new) = (0, 0);
            let mut result = Vec::new();
            i += 1;
            while i < lines.len() && (seen_old < old_count || seen_new < new_count) {
                let l = lines[i];
                match l.as_bytes().first() {
                    // An empty line is an empty context line (some tools strip the space).
                    Some(b' ') | None => {
                        seen_old += 1;
                        seen_new += 1;
                        result.push(l.get(1..).unwrap_or("").to_string());
                    }
                    Some(b'-') => seen_old += 1,
                    Some(b'+') => {
                        seen_new += 1;
                        result.push(l[1..].to_string());
                    }
                    Some(b'\\') => {}
                    _ => return Err(format!("{}: unexpected line in hunk: {l:?}", file.path)),
                }
                i += 1;
            }
            if (seen_old, seen_new) != (old_count, new_count) {
                return Err(format!("{}: hunk {line:?} is truncated", file.path));
            }
            file.hunks.push((line.to_string(), result));
            continue;
        }
        i += 1;
    }
    if files.is_empty() {
        return Err("no file in the patch".to_string());
    }
    Ok(files)
}

/// `a,b +c,d @@` -> (b, d); a missing count means 1.
pub fn hunk_counts(rest: &str) -> Option<(usize, usize)> {
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

/// Lines a patch's preamble declares with `Provides-Symbol: NAME`: symbols the built static
/// library must define once the patch is in (checked with build/archive.rs).
pub fn provided_symbols(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| !l.starts_with("diff ") && !l.starts_with("--- "))
        .filter_map(|l| l.strip_prefix("Provides-Symbol:"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks that every file and hunk of `files` is present in `tree` (see the module docs).
pub fn verify(tree: &Path, files: &[FilePatch]) -> Result<(), String> {
    let mut problems = Vec::new();
    for f in files {
        let path = tree.join(&f.path);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: cannot read it ({e})", f.path));
                continue;
            }
        };
        let have: Vec<&str> = text.lines().collect();
        if f.new_file {
            let want: Vec<&str> = f
                .hunks
                .iter()
                .flat_map(|(_, l)| l.iter().map(String::as_str))
                .collect();
            if have != want {
                problems.push(format!("{}: not the file the patch creates", f.path));
            }
            continue;
        }
        for (header, result) in &f.hunks {
            if !result.is_empty() && !contains_run(&have, result) {
                problems.push(format!("{}: hunk {header} is not applied", f.path));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn contains_run(have: &[&str], run: &[String]) -> bool {
    have.len() >= run.len()
        && have
            .windows(run.len())
            .any(|w| w.iter().zip(run).all(|(a, b)| *a == b.as_str()))
}

/// What became of one patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and verified.
    Applied,
    /// An optional patch whose context is not in the tree (a release that no longer needs it):
    /// the tool's complaint.
    NotNeeded(String),
}

/// Whether the patch's preamble says `Optional: ...`: it fixes something a later ACL release may
/// have fixed itself, so a tree its context does not fit is built without it.
pub fn is_optional(text: &str) -> bool {
    text.lines()
        .take_while(|l| !l.starts_with("diff ") && !l.starts_with("--- "))
        .any(|l| l.starts_with("Optional:"))
}

/// Applies `patch` (an absolute path) to `tree`, then verifies it. The whole patch is checked
/// before anything is written (`git apply --check`, or `patch --dry-run` without git).
pub fn apply_and_verify(tree: &Path, patch: &Path) -> Result<Outcome, String> {
    let text =
        fs::read_to_string(patch).map_err(|e| format!("cannot read {}: {e}", patch.display()))?;
    let files = parse(&text).map_err(|e| format!("{}: {e}", patch.display()))?;
    if let Err(why) = check(tree, patch) {
        return if is_optional(&text) {
            Ok(Outcome::NotNeeded(why))
        } else {
            Err(why)
        };
    }
    apply(tree, patch)?;
    verify(tree, &files).map_err(|e| {
        format!(
            "{} was applied but the tree does not show it: {e}",
            patch.display()
        )
    })?;
    Ok(Outcome::Applied)
}

/// Whether the patch fits, without changing anything; `Err` carries the tool's complaint.
fn check(tree: &Path, patch: &Path) -> Result<(), String> {
    let out = match git_apply(tree, patch, true) {
        Ok(out) => out,
        // git missing: patch(1)'s dry run.
        Err(_) => Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--dry-run", "-i"])
            .arg(patch)
            .current_dir(tree)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("neither git nor patch runs ({e})"))?,
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(tool_output(&out))
    }
}

/// Runs the tool; `Err` carries its complaint.
fn apply(tree: &Path, patch: &Path) -> Result<(), String> {
    if let Ok(out) = git_apply(tree, patch, false) {
        if out.status.success() {
            return skipped(&out).map_or(Ok(()), Err);
        }
        return Err(tool_output(&out));
    }
    let out = Command::new("patch")
        .args(["-p1", "--forward", "--batch", "-i"])
        .arg(patch)
        .current_dir(tree)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("neither git nor patch runs ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(tool_output(&out))
    }
}

/// `git apply` confined to `tree`: no repository around it can be discovered, and no git
/// variable from the environment (cargo may run inside a git hook) points elsewhere.
fn git_apply(tree: &Path, patch: &Path, check: bool) -> std::io::Result<Output> {
    let mut cmd = Command::new("git");
    cmd.arg("apply").arg("--verbose");
    if check {
        cmd.arg("--check");
    }
    cmd.arg(patch)
        .current_dir(tree)
        .env("GIT_CEILING_DIRECTORIES", ceiling(tree))
        .stdin(Stdio::null());
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_COMMON_DIR",
        "GIT_OBJECT_DIRECTORY",
        "GIT_PREFIX",
    ] {
        cmd.env_remove(var);
    }
    cmd.output()
}

/// The directory above `tree`, as git compares it (symbolic links resolved).
pub fn ceiling(tree: &Path) -> PathBuf {
    let tree = fs::canonicalize(tree).unwrap_or_else(|_| tree.to_path_buf());
    tree.parent().map(Path::to_path_buf).unwrap_or(tree)
}

/// git's own report of files it left out, should any other cause make it skip them.
fn skipped(out: &Output) -> Option<String> {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("Skipped patch"))
        .collect();
    (!lines.is_empty()).then(|| format!("git apply skipped files: {}", lines.join(" ")))
}

fn tool_output(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(stdout.trim());
    }
    s
}
