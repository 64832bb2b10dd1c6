//! `.npy` input and output for the CLI and tests: our own reader and writer of numpy's format
//! (versions 1.0, 2.0 and 3.0), for the dtypes a numeric tool here needs.
//!
//! This replaces the `npyz` crate, whose header parser takes time exponential in the nesting
//! of brackets (26 s at 22 levels) and which reserves whatever header length a file claims
//! (4 GiB for a 585-byte file). Files come from users, so reading is bounded by the file:
//!
//! - the header is parsed in one pass, linear in its length, and may be at most
//!   [`MAX_HEADER_LEN`] bytes; a header length the file cannot hold is refused before anything
//!   is allocated;
//! - the dtype must be exactly the one asked for (no silent int-to-float reading), either byte
//!   order; C order only; no 0-D arrays and no zero-length dimensions;
//! - the shape's element count is a checked product, and the data must fill the rest of the
//!   file exactly: short data and trailing bytes are both errors, found from the file's length
//!   before the data buffer is (fallibly) allocated.
//!
//! Writing produces the bytes `numpy.save` produces for the same array, and replaces the target
//! atomically (see [`output`]). Every error names the file and fits on one line.

mod output;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

pub use output::{check_output, same_file, Outputs};

/// The longest header accepted. numpy's own reader refuses headers over 10 000 bytes unless
/// told to trust the file; this allows every version 1.0 header (their length field is 16
/// bits) and the rank-64 shapes numpy can write, and keeps what a lying file can make us
/// read small.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

/// numpy's limit on the number of dimensions (`NPY_MAXDIMS` in numpy 2).
const MAX_RANK: usize = 64;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Data is read and written through a buffer of this many bytes: large files are never copied
/// whole into a byte buffer beside their decoded values.
const CHUNK: usize = 64 * 1024;

/// An array read from or written to a `.npy` file: C-order data and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T> NpyArray<T> {
    /// Errors unless the array has one of the ranks in `ranks`; `what` names the array in the
    /// message (usually the file).
    pub fn require_rank(&self, what: &str, ranks: &[usize]) -> Result<()> {
        if ranks.contains(&self.shape.len()) {
            return Ok(());
        }
        let want: Vec<String> = ranks.iter().map(|r| format!("{r}-D")).collect();
        Err(Error::Npy(format!(
            "{what}: expected a {} array, got shape {:?} ({}-D)",
            want.join(" or "),
            self.shape,
            self.shape.len()
        )))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The element types this module reads and writes: `float16`, `float32`, `int32`, `uint8`,
/// `uint32` and `bool`.
pub trait Element: Copy + sealed::Sealed {
    /// numpy's name for the dtype, for messages.
    const NAME: &'static str;
    /// numpy's kind character: `f`, `i`, `u` or `b`.
    const KIND: u8;
    /// Bytes per element.
    const SIZE: usize;
    /// The `descr` numpy writes for this dtype on a little-endian machine.
    const DESCR: &'static str;
    /// One element from exactly `SIZE` bytes; `None` when the bytes are no valid value (a bool
    /// byte other than 0 or 1).
    fn decode(bytes: &[u8], big_endian: bool) -> Option<Self>;
    /// Writes the element's `SIZE` little-endian bytes into `out`.
    fn encode(self, out: &mut [u8]);
}

macro_rules! numeric_element {
    ($t:ty, $name:literal, $kind:literal, $descr:literal) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const NAME: &'static str = $name;
            const KIND: u8 = $kind;
            const SIZE: usize = std::mem::size_of::<$t>();
            const DESCR: &'static str = $descr;
            fn decode(bytes: &[u8], big_endian: bool) -> Option<Self> {
                let b = bytes.try_into().ok()?;
                Some(if big_endian {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                })
            }
            fn encode(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
        }
    };
}

numeric_element!(half::f16, "float16", b'f', "<f2");
numeric_element!(f32, "float32", b'f', "<f4");
numeric_element!(i32, "int32", b'i', "<i4");
numeric_element!(u8, "uint8", b'u', "|u1");
numeric_element!(u32, "uint32", b'u', "<u4");

impl sealed::Sealed for bool {}
impl Element for bool {
    const NAME: &'static str = "bool";
    const KIND: u8 = b'b';
    const SIZE: usize = 1;
    const DESCR: &'static str = "|b1";
    fn decode(bytes: &[u8], _big_endian: bool) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
    fn encode(self, out: &mut [u8]) {
        out[0] = u8::from(self);
    }
}

/// Reads a `float16` array widened to f32 (exactly: every f16 is an f32). The real-activation
/// suite (tests/data/real) is stored as f16.
pub fn read_f16_as_f32(path: impl AsRef<Path>) -> Result<NpyArray<f32>> {
    let a = read::<half::f16>(path)?;
    Ok(NpyArray {
        shape: a.shape,
        data: a.data.iter().map(|x| x.to_f32()).collect(),
    })
}

/// Reads an array whose dtype must be exactly `T` (either byte order).
pub fn read<T: Element>(path: impl AsRef<Path>) -> Result<NpyArray<T>> {
    let path = path.as_ref();
    let named = |msg: String| Error::Npy(format!("{}: {msg}", path.display()));
    let file =
        File::open(path).map_err(|e| Error::Npy(format!("cannot read {}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| named(e.to_string()))?;
    if meta.is_dir() {
        return Err(named("is a directory".into()));
    }
    // A pipe or device has no length to check against up front; it is read until the shape's
    // data is in and then must be at its end.
    let len = meta.is_file().then_some(meta.len());
    read_from(file, len).map_err(named)
}

pub fn read_f32(path: impl AsRef<Path>) -> Result<NpyArray<f32>> {
    read(path)
}
pub fn read_i32(path: impl AsRef<Path>) -> Result<NpyArray<i32>> {
    read(path)
}
pub fn read_u8(path: impl AsRef<Path>) -> Result<NpyArray<u8>> {
    read(path)
}
pub fn read_bool(path: impl AsRef<Path>) -> Result<NpyArray<bool>> {
    read(path)
}

/// Parses a whole `.npy` file held in memory (the fuzz target's entry; files go through
/// [`read`]).
pub fn read_bytes<T: Element>(bytes: &[u8]) -> Result<NpyArray<T>> {
    read_from(bytes, Some(bytes.len() as u64)).map_err(Error::Npy)
}

/// What a header says, once parsed.
struct Header {
    descr: Vec<u8>,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// Reads the file from `r`; `len` is its length in bytes where known.
fn read_from<T: Element, R: Read>(
    mut r: R,
    len: Option<u64>,
) -> std::result::Result<NpyArray<T>, String> {
    let mut prefix = [0u8; 8];
    let got = fill(&mut r, &mut prefix)?;
    if got < 8 || &prefix[..6] != MAGIC {
        return Err("not a valid .npy file: it does not start with numpy's magic string".into());
    }
    let (major, minor) = (prefix[6], prefix[7]);
    // Versions differ in the width of the header length and in the header's encoding.
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => {
            let known = "1.0, 2.0 and 3.0 are known";
            return Err(format!(
                "not a valid .npy file: format version {major}.{minor} ({known})"
            ));
        }
    };
    let mut field = [0u8; 4];
    if fill(&mut r, &mut field[..len_bytes])? < len_bytes {
        return Err("not a valid .npy file: it ends inside the header length".into());
    }
    let header_len = u32::from_le_bytes(field) as u64;
    let data_start = 8 + len_bytes as u64 + header_len;
    if let Some(len) = len {
        if data_start > len {
            return Err(format!(
                "not a valid .npy file: the header claims {header_len} bytes but only {} follow",
                len - (8 + len_bytes as u64)
            ));
        }
    }
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(format!(
            "the header is {header_len} bytes long; at most {MAX_HEADER_LEN} are accepted"
        ));
    }
    let mut text = vec![0u8; header_len as usize];
    if fill(&mut r, &mut text)? < text.len() {
        return Err("not a valid .npy file: it ends inside the header".into());
    }
    if utf8 && std::str::from_utf8(&text).is_err() {
        return Err("not a valid .npy file: a version 3.0 header must be UTF-8".into());
    }
    let header = parse_header(&text).map_err(|e| match e {
        HeaderError::Syntax(e) => format!("not a valid .npy file: {e}"),
        HeaderError::Structured => format!("expected dtype {}, found a structured dtype", T::NAME),
    })?;

    let big_endian = check_descr::<T>(&header.descr)?;
    if header.fortran_order {
        return Err("is stored in Fortran order; save a C-contiguous array \
                    (numpy.ascontiguousarray) instead"
            .into());
    }
    let shape: Vec<usize> = header
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large")))
        .collect::<std::result::Result<_, _>>()?;
    if shape.is_empty() {
        return Err("holds a 0-D scalar; expected an array".into());
    }
    if shape.contains(&0) {
        return Err(format!("has a zero-length dimension (shape {shape:?})"));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let need = n as u128 * T::SIZE as u128;
    if let Some(len) = len {
        let have = (len - data_start) as u128;
        if have < need {
            return Err(format!(
                "truncated: shape {shape:?} needs {need} bytes of data, the file has {have}"
            ));
        }
        if have > need {
            return Err(format!(
                "{} bytes follow the data of shape {shape:?} ({need} bytes); \
                 a .npy file holds one array",
                have - need
            ));
        }
    }
    let data = read_data::<T, R>(&mut r, n, len.is_some(), big_endian)
        .map_err(|e| e.message(&shape, need))?;
    Ok(NpyArray { shape, data })
}

/// Why reading the data failed.
enum DataError {
    Short(u128),
    Trailing,
    Alloc(u128),
    BadBool(usize, u8),
    Io(String),
}

impl DataError {
    fn message(self, shape: &[usize], need: u128) -> String {
        match self {
            DataError::Short(have) => format!(
                "truncated: shape {shape:?} needs {need} bytes of data, the file has {have}"
            ),
            DataError::Trailing => {
                format!("bytes follow the data of shape {shape:?}; a .npy file holds one array")
            }
            DataError::Alloc(bytes) => format!("cannot allocate {bytes} bytes for the data"),
            DataError::BadBool(i, b) => {
                format!("invalid value {b} for a bool at flat index {i} (must be 0 or 1)")
            }
            DataError::Io(e) => format!("cannot read the data: {e}"),
        }
    }
}

/// Reads and decodes `n` elements, then checks that the input ends there. With `exact_len`
/// the caller has already matched the file's length to the shape, so the whole buffer is
/// reserved at once; otherwise it grows only as data arrives, so a lying header on a pipe costs
/// no more memory than the bytes actually sent.
fn read_data<T: Element, R: Read>(
    r: &mut R,
    n: usize,
    exact_len: bool,
    big_endian: bool,
) -> std::result::Result<Vec<T>, DataError> {
    let alloc_err = |_| DataError::Alloc(n as u128 * T::SIZE as u128);
    let mut data: Vec<T> = Vec::new();
    if exact_len {
        data.try_reserve_exact(n).map_err(alloc_err)?;
    }
    let chunk_elems = CHUNK / T::SIZE;
    let mut buf = vec![0u8; chunk_elems * T::SIZE];
    while data.len() < n {
        let elems = chunk_elems.min(n - data.len());
        data.try_reserve(elems).map_err(alloc_err)?;
        let bytes = &mut buf[..elems * T::SIZE];
        let got = fill(r, bytes).map_err(DataError::Io)?;
        if got < bytes.len() {
            return Err(DataError::Short(
                (data.len() * T::SIZE) as u128 + got as u128,
            ));
        }
        for c in bytes.chunks_exact(T::SIZE) {
            match T::decode(c, big_endian) {
                Some(x) => data.push(x),
                None => return Err(DataError::BadBool(data.len(), c[0])),
            }
        }
    }
    if fill(r, &mut [0u8; 1]).map_err(DataError::Io)? > 0 {
        return Err(DataError::Trailing);
    }
    Ok(data)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> std::result::Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    Ok(got)
}

/// Checks that the header's dtype is `T`; returns whether the data is big-endian.
fn check_descr<T: Element>(descr: &[u8]) -> std::result::Result<bool, String> {
    descr_matches::<T>(descr)
        .ok_or_else(|| format!("expected dtype {}, found {}", T::NAME, describe(descr)))
}

/// `Some(big_endian)` when `descr` spells `T`: a byte-order mark (`<` or `>`, or `|` for
/// one-byte types), the kind, the size.
fn descr_matches<T: Element>(descr: &[u8]) -> Option<bool> {
    let [order, kind, size @ ..] = descr else {
        return None;
    };
    if *kind != T::KIND || size != T::SIZE.to_string().as_bytes() {
        return None;
    }
    match order {
        b'<' => Some(false),
        b'>' => Some(true),
        b'|' if T::SIZE == 1 => Some(false),
        _ => None,
    }
}

/// numpy-style name of a plain dtype for messages, e.g. `int32 ('<i4')`.
fn describe(descr: &[u8]) -> String {
    let quoted = format!("'{}'", excerpt(descr));
    let name = match descr {
        [b'<' | b'>' | b'|', kind, size @ ..]
            if !size.is_empty() && size.len() <= 3 && size.iter().all(u8::is_ascii_digit) =>
        {
            let bits = std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .map_or(0, |b| b * 8);
            match kind {
                b'f' => format!("float{bits}"),
                b'i' => format!("int{bits}"),
                b'u' => format!("uint{bits}"),
                b'c' => format!("complex{bits}"),
                b'b' => "bool".into(),
                _ => return quoted,
            }
        }
        _ => return quoted,
    };
    format!("{name} ({quoted})")
}

/// At most 40 bytes of untrusted text, escaped, so that a message stays on one line.
fn excerpt(text: &[u8]) -> String {
    let shown: String = text
        .iter()
        .take(40)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if text.len() > 40 {
        format!("{shown}...")
    } else {
        shown
    }
}

/// Parses the header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` followed by padding.
///
/// The grammar is the subset of Python literals numpy writes: a dict with exactly the keys
/// `descr` (a string; a list or tuple there is a structured dtype, refused unread),
/// `fortran_order` (`True` or `False`) and `shape` (a tuple of non-negative integers).
/// Each byte is looked at a bounded number of times, so time is linear in the header length
/// however the brackets nest.
fn parse_header(text: &[u8]) -> std::result::Result<Header, HeaderError> {
    let mut p = Parser {
        text,
        pos: 0,
        structured: false,
    };
    parse_dict(&mut p).map_err(|e| {
        if p.structured {
            HeaderError::Structured
        } else {
            HeaderError::Syntax(e)
        }
    })
}

/// Why a header was refused: it is no dict numpy writes, or it describes a structured dtype
/// (a well-formed file this module does not read).
enum HeaderError {
    Syntax(String),
    Structured,
}

fn parse_dict(p: &mut Parser) -> std::result::Result<Header, String> {
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        if p.peek() == Some(b'}') {
            p.pos += 1;
            break;
        }
        let key_at = p.pos;
        let key = p.string()?;
        p.expect(b':')?;
        let slot_taken = match key {
            b"descr" => descr.replace(p.descr()?).is_some(),
            b"fortran_order" => fortran_order.replace(p.boolean()?).is_some(),
            b"shape" => shape.replace(p.shape()?).is_some(),
            _ => {
                return Err(format!(
                    "unexpected key '{}' in the header (at byte {key_at})",
                    excerpt(key)
                ))
            }
        };
        if slot_taken {
            return Err(format!(
                "key '{}' appears twice in the header",
                excerpt(key)
            ));
        }
        match p.peek() {
            Some(b',') => p.pos += 1,
            Some(b'}') => {}
            _ => return Err(p.unexpected("',' or '}'")),
        }
    }
    p.skip_ws();
    if p.pos < p.text.len() {
        return Err(p.unexpected("only padding after the header's dict"));
    }
    let missing = |k: &str| format!("the header has no '{k}' key");
    Ok(Header {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    /// Set when the dtype turns out structured, which stops the parse.
    structured: bool,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn unexpected(&self, want: &str) -> String {
        match self.text.get(self.pos) {
            None => format!("the header ends where {want} was expected"),
            Some(_) => format!(
                "expected {want} at byte {} of the header, found '{}'",
                self.pos,
                excerpt(&self.text[self.pos..(self.pos + 10).min(self.text.len())])
            ),
        }
    }

    fn expect(&mut self, b: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{}'", char::from(b))))
        }
    }

    /// A quoted string without escapes (numpy's keys and dtypes need none).
    fn string(&mut self) -> std::result::Result<&'a [u8], String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.unexpected("a quoted string")),
        };
        let start = self.pos + 1;
        let len = self.text[start..]
            .iter()
            .position(|&b| b == quote || b == b'\\' || b == b'\n')
            .ok_or_else(|| "a string in the header is not closed".to_string())?;
        let end = start + len;
        if self.text[end] != quote {
            return Err(format!(
                "escapes and line breaks in header strings are not supported (byte {end})"
            ));
        }
        self.pos = end + 1;
        Ok(&self.text[start..end])
    }

    fn descr(&mut self) -> std::result::Result<Vec<u8>, String> {
        match self.peek() {
            // A list of fields or a (base, shape) tuple: refused without reading further.
            Some(b'[' | b'(') => {
                self.structured = true;
                Err("a structured dtype".into())
            }
            _ => Ok(self.string()?.to_vec()),
        }
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let (value, word) = if rest.starts_with(b"True") {
            (true, 4)
        } else if rest.starts_with(b"False") {
            (false, 5)
        } else {
            return Err(self.unexpected("True or False"));
        };
        self.pos += word;
        if self
            .text
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            return Err(self.unexpected("',' or '}' after the bool"));
        }
        Ok(value)
    }

    /// `()`, `(n,)` or `(n, m, ...)` with an optional trailing comma.
    fn shape(&mut self) -> std::result::Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.pos += 1;
                break;
            }
            if dims.len() == MAX_RANK {
                return Err(format!("the shape has more than {MAX_RANK} dimensions"));
            }
            dims.push(self.integer()?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                // `(n)` is the integer n in Python, not a tuple.
                Some(b')') if dims.len() > 1 => {}
                _ => return Err(self.unexpected("',' in the shape tuple")),
            }
        }
        Ok(dims)
    }

    /// A decimal integer; the `L` suffix of Python 2 writers is allowed.
    fn integer(&mut self) -> std::result::Result<u64, String> {
        self.skip_ws();
        let start = self.pos;
        let mut value: u64 = 0;
        let mut overflow = false;
        while let Some(&b) = self.text.get(self.pos).filter(|b| b.is_ascii_digit()) {
            match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
            {
                Some(v) => value = v,
                None => overflow = true,
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.unexpected("a non-negative integer in the shape"));
        }
        if overflow {
            return Err(format!(
                "dimension {} in the header is too large",
                excerpt(&self.text[start..self.pos])
            ));
        }
        if let Some(b'L' | b'l') = self.text.get(self.pos) {
            self.pos += 1;
        }
        Ok(value)
    }
}

/// numpy's header for an array of `T` with `shape` in C order, with the magic string, version
/// and length: the bytes `numpy.save` writes, including its spare room for growing the first
/// axis in place.
fn header_bytes<T: Element>(shape: &[usize]) -> Vec<u8> {
    let tuple = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {tuple}, }}",
        T::DESCR
    );
    if let Some(first) = shape.first() {
        // numpy's GROWTH_AXIS_MAX_DIGITS: room for the first dimension to reach 21 digits.
        let pad = 21usize.saturating_sub(first.to_string().len());
        dict.extend(std::iter::repeat_n(' ', pad));
    }
    // Padded with spaces and a newline so the data starts on a multiple of 64 bytes; version
    // 2.0 (a 32-bit length) only when the header does not fit version 1.0's 16 bits, as numpy
    // does.
    let padded_len = |prefix: usize| {
        let hlen = dict.len() + 1;
        hlen + 64 - (prefix + hlen) % 64
    };
    let mut out = MAGIC.to_vec();
    let len = match u16::try_from(padded_len(10)) {
        Ok(len) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            usize::from(len)
        }
        Err(_) => {
            let len = padded_len(12);
            out.extend_from_slice(&[2, 0]);
            // check_shape's rank limit keeps this far below 4 GiB.
            out.extend_from_slice(&(len as u32).to_le_bytes());
            len
        }
    };
    let end = out.len() + len;
    out.extend_from_slice(dict.as_bytes());
    out.resize(end - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes a `.npy` file for `data` with `shape` (C order, little endian) to `w`. The shape
/// must account for every element.
pub fn write_to<T: Element, W: Write>(w: W, shape: &[usize], data: &[T]) -> Result<()> {
    check_shape(shape, data.len())?;
    write_data(w, shape, data)
        .map(drop)
        .map_err(|e| Error::Npy(e.to_string()))
}

/// The bytes of [`write_to`] once the shape is checked; gives the writer back so a file can be
/// synced.
fn write_data<T: Element, W: Write>(mut w: W, shape: &[usize], data: &[T]) -> io::Result<W> {
    w.write_all(&header_bytes::<T>(shape))?;
    let mut buf = vec![0u8; CHUNK];
    for chunk in data.chunks(CHUNK / T::SIZE) {
        let bytes = &mut buf[..chunk.len() * T::SIZE];
        for (x, out) in chunk.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
            x.encode(out);
        }
        w.write_all(bytes)?;
    }
    w.flush()?;
    Ok(w)
}

fn check_shape(shape: &[usize], len: usize) -> Result<()> {
    if shape.len() > MAX_RANK {
        return Err(Error::Npy(format!(
            "{} dimensions; numpy reads at most {MAX_RANK}",
            shape.len()
        )));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Npy(format!("shape {shape:?} overflows")))?;
    if n != len {
        return Err(Error::Npy(format!(
            "shape {shape:?} holds {n} elements, got {len}"
        )));
    }
    Ok(())
}

/// Writes `data` with `shape` (C order, little endian) to `path`, replacing any file there
/// atomically: on failure the target is untouched and no temporary file is left. The shape
/// must account for every element.
pub fn write<T: Element>(path: impl AsRef<Path>, shape: &[usize], data: &[T]) -> Result<()> {
    let mut out = Outputs::new();
    out.stage(path, shape, data)?;
    out.commit()
}

pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, shape, data)
}
pub fn write_u8(path: impl AsRef<Path>, shape: &[usize], data: &[u8]) -> Result<()> {
    write(path, shape, data)
}
pub fn write_u32(path: impl AsRef<Path>, shape: &[usize], data: &[u32]) -> Result<()> {
    write(path, shape, data)
}
pub fn write_i32(path: impl AsRef<Path>, shape: &[usize], data: &[i32]) -> Result<()> {
    write(path, shape, data)
}

/// Writes raw bytes (for tests that need a malformed file next to well-formed ones).
pub fn write_raw(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let mut f = File::create(path)
        .map_err(|e| Error::Npy(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(bytes)
        .map_err(|e| Error::Npy(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
