//! Output files replaced atomically, alone or as a set: each array is written to a temporary
//! file beside its target, synced to disk, and renamed over the target only once every file of
//! the set is written. A failure on the way (a full disk, a read-only directory, an error
//! between two outputs) removes the temporaries and leaves every target as it was, so a
//! command never leaves a truncated `.npy` or half of its outputs behind.
//!
//! A target that exists and is no regular file (`/dev/null`, a pipe, a terminal) cannot be
//! renamed over; it is written directly when staged. A symbolic link to a regular file is
//! followed: the file it points to is replaced and the link kept.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_shape, write_data, Element};
use crate::error::{Error, Result};

/// Outputs written but not yet in place. Dropping it without [`Outputs::commit`] removes the
/// temporaries, which is what happens when a caller returns an error with `?`.
#[derive(Default)]
pub struct Outputs {
    staged: Vec<Staged>,
}

/// One written temporary and where it goes.
struct Staged {
    /// The path the caller named, for messages.
    target: PathBuf,
    /// The path renamed over: `target` with symbolic links resolved.
    dest: PathBuf,
    /// The temporary, until it is renamed.
    temp: Option<PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

impl Outputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `data` with `shape` to a temporary file beside `path` and syncs it; `path` itself
    /// changes only in [`Outputs::commit`] (unless it is a device or pipe, see the module
    /// documentation). On error nothing is left of this output.
    pub fn stage<T: Element>(
        &mut self,
        path: impl AsRef<Path>,
        shape: &[usize],
        data: &[T],
    ) -> Result<()> {
        let target = path.as_ref();
        let cannot = |e: io::Error| Error::Npy(format!("cannot write {}: {e}", target.display()));
        check_shape(shape, data.len())
            .map_err(|e| Error::Npy(format!("{}: {e}", target.display())))?;
        let (dest, existing) = match fs::metadata(target) {
            Ok(m) if m.is_dir() => {
                return Err(Error::Npy(format!(
                    "cannot write {}: it is a directory",
                    target.display()
                )))
            }
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(target)
                    .map_err(cannot)?;
                return write_data(file, shape, data).map(drop).map_err(cannot);
            }
            Ok(m) => (
                fs::canonicalize(target).map_err(cannot)?,
                Some(m.permissions()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (target.to_path_buf(), None),
            Err(e) => return Err(cannot(e)),
        };
        let (file, temp) = create_temp(&dest).map_err(cannot)?;
        // From here on the temporary is removed if anything fails.
        let staged = Staged {
            target: target.to_path_buf(),
            dest,
            temp: Some(temp),
        };
        if let Some(perm) = existing {
            // The replacement keeps the old file's mode, as an in-place write would.
            file.set_permissions(perm).map_err(cannot)?;
        }
        let file = write_data(file, shape, data).map_err(cannot)?;
        file.sync_all().map_err(cannot)?;
        drop(file);
        self.staged.push(staged);
        Ok(())
    }

    /// Renames every staged file over its target, in the order staged. Each rename is atomic;
    /// should a later one fail (which needs the directory to change under us: every target was
    /// checked when staged), the message names the outputs already replaced.
    pub fn commit(mut self) -> Result<()> {
        let mut done: Vec<String> = Vec::new();
        for s in &mut self.staged {
            let Some(temp) = s.temp.as_ref() else {
                continue;
            };
            if let Err(e) = fs::rename(temp, &s.dest) {
                let already = if done.is_empty() {
                    String::new()
                } else {
                    format!(" ({} already written)", done.join(", "))
                };
                return Err(Error::Npy(format!(
                    "cannot write {}: {e}{already}",
                    s.target.display()
                )));
            }
            s.temp = None;
            sync_dir(&s.dest);
            done.push(s.target.display().to_string());
        }
        Ok(())
    }
}

/// The directory a path's entry lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, empty file beside `dest`: same directory, so the rename cannot cross file systems.
fn create_temp(dest: &Path) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(dest);
    loop {
        // Short and independent of the target's name, so it always fits the name limit.
        let name = format!(
            ".intattention-{}-{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let temp = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => return Ok((f, temp)),
            // A leftover of an earlier process with our pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Makes a rename durable. Best effort: some file systems refuse to sync a directory, and the
/// rename itself has already succeeded, so the output is in place either way.
fn sync_dir(dest: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(parent_dir(dest)) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dest;
}

/// Checks, before any work is done, that `path` can name an output: its directory exists and
/// it is not itself a directory. (Whether the directory is writable shows when the output is
/// staged; nothing is replaced before then.)
pub fn check_output(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    let fail = |why: String| {
        Err(Error::Npy(format!(
            "cannot write {}: {why}",
            path.display()
        )))
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return fail(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fail(format!("directory {} does not exist", dir.display()))
        }
        Err(e) => return fail(e.to_string()),
    }
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return fail("it is a directory".into());
    }
    Ok(())
}

/// Whether `a` and `b` name the same file: the same inode where both exist (whatever the
/// spelling, links included), else the same entry of the same directory.
pub fn same_file(a: &Path, b: &Path) -> bool {
    if let (Some(x), Some(y)) = (file_id(a), file_id(b)) {
        return x == y;
    }
    let entry = |p: &Path| Some(fs::canonicalize(parent_dir(p)).ok()?.join(p.file_name()?));
    match (entry(a), entry(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> Option<PathBuf> {
    fs::canonicalize(path).ok()
}
