//! The symbols a static library (`ar` archive) defines, read from its symbol index: the proof,
//! after a source build and on every later use of the cached build, that the patched kernels
//! are compiled into `libarm_compute-static.a`. Only the index member at the start of the
//! archive is read (the archive itself is about 100 MB).
//!
//! Formats: System V / GNU (`/` and `/SYM64/`, what GNU ar and llvm-ar write on Linux) and BSD
//! (`__.SYMDEF`, `__.SYMDEF SORTED`, `__.SYMDEF_64`, with `#1/N` long names: Apple's ar and
//! ranlib). The index lists defined global symbols only, which is what the check needs: an
//! object that merely calls a function names it in its own string table, not in the index.

use std::fs::File;
use std::io::Read;
use std::path::Path;

const HEADER: usize = 60;

/// The defined symbols listed in the archive's index.
pub fn defined_symbols(path: &Path) -> Result<Vec<String>, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut head = [0u8; 8 + HEADER];
    f.read_exact(&mut head)
        .map_err(|e| format!("{}: too short for an ar archive ({e})", path.display()))?;
    let size = member_size(&head[8..]).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut member = vec![0u8; size];
    f.read_exact(&mut member)
        .map_err(|e| format!("{}: truncated symbol index ({e})", path.display()))?;
    let mut bytes = head.to_vec();
    bytes.extend_from_slice(&member);
    parse_index(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Which of `wanted` (exact symbol names) the archive at `path` does not define.
pub fn missing_symbols(path: &Path, wanted: &[String]) -> Result<Vec<String>, String> {
    let have = defined_symbols(path)?;
    Ok(wanted
        .iter()
        .filter(|w| !have.iter().any(|h| h == *w))
        .cloned()
        .collect())
}

fn member_size(header: &[u8]) -> Result<usize, String> {
    if header.len() < HEADER || &header[58..60] != b"`\n" {
        return Err("bad ar member header".to_string());
    }
    let text = std::str::from_utf8(&header[48..58]).map_err(|_| "bad member size")?;
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("bad member size {text:?}"))
}

/// Parses the beginning of an archive (magic, first member header, first member's data).
pub fn parse_index(bytes: &[u8]) -> Result<Vec<String>, String> {
    let magic = bytes.get(..8).ok_or("too short for an ar archive")?;
    if magic != b"!<arch>\n" && magic != b"!<thin>\n" {
        return Err("not an ar archive".to_string());
    }
    let header = bytes.get(8..8 + HEADER).ok_or("no member in the archive")?;
    let size = member_size(header)?;
    let data = bytes
        .get(8 + HEADER..8 + HEADER + size)
        .ok_or("truncated symbol index")?;
    let name = std::str::from_utf8(&header[..16])
        .map_err(|_| "bad member name")?
        .trim_end();
    match name {
        "/" => gnu_index(data, 4),
        "/SYM64/" => gnu_index(data, 8),
        _ => {
            // BSD: the name is in the header, or (`#1/N`) in the first N bytes of the data.
            let (name, data) = match name.strip_prefix("#1/") {
                Some(n) => {
                    let n: usize = n.parse().map_err(|_| format!("bad long name {name:?}"))?;
                    let raw = data.get(..n).ok_or("truncated member name")?;
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(n);
                    (
                        String::from_utf8_lossy(&raw[..end]).into_owned(),
                        &data[n..],
                    )
                }
                None => (name.to_string(), data),
            };
            match name.as_str() {
                "__.SYMDEF" | "__.SYMDEF SORTED" => bsd_index(data, 4),
                "__.SYMDEF_64" | "__.SYMDEF_64 SORTED" => bsd_index(data, 8),
                _ => Err(format!(
                    "no symbol index (first member is {name:?}); run ranlib on the archive"
                )),
            }
        }
    }
}

fn read_uint(data: &[u8], at: usize, width: usize, big_endian: bool) -> Option<usize> {
    let b = data.get(at..at + width)?;
    let mut v: u64 = 0;
    for i in 0..width {
        let byte = if big_endian { b[i] } else { b[width - 1 - i] };
        v = (v << 8) | byte as u64;
    }
    usize::try_from(v).ok()
}

/// System V / GNU: big-endian count, count offsets, then count NUL-terminated names.
fn gnu_index(data: &[u8], width: usize) -> Result<Vec<String>, String> {
    let count = read_uint(data, 0, width, true).ok_or("truncated symbol index")?;
    let names_at = count
        .checked_add(1)
        .and_then(|n| n.checked_mul(width))
        .filter(|&n| n <= data.len())
        .ok_or("symbol count past the index")?;
    let names: Vec<String> = data[names_at..]
        .split(|&b| b == 0)
        .take(count)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if names.len() != count {
        return Err("fewer symbol names than the index counts".to_string());
    }
    Ok(names)
}

/// BSD: little-endian byte size of the (name offset, member offset) pairs, the pairs, the byte
/// size of the string table, the string table.
fn bsd_index(data: &[u8], width: usize) -> Result<Vec<String>, String> {
    let ranlib_bytes = read_uint(data, 0, width, false).ok_or("truncated symbol index")?;
    let pairs_at = width;
    let strings_size_at = pairs_at.checked_add(ranlib_bytes).ok_or("bad index size")?;
    let strings_size =
        read_uint(data, strings_size_at, width, false).ok_or("truncated symbol index")?;
    let strings = data
        .get(strings_size_at + width..strings_size_at + width + strings_size)
        .ok_or("truncated string table")?;
    let mut names = Vec::new();
    for k in 0..ranlib_bytes / (2 * width) {
        let strx =
            read_uint(data, pairs_at + 2 * width * k, width, false).ok_or("truncated index")?;
        let s = strings
            .get(strx..)
            .ok_or("name offset past the string table")?;
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        names.push(String::from_utf8_lossy(&s[..end]).into_owned());
    }
    Ok(names)
}
