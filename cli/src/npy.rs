//! `.npy` input and output for the CLI and tests: a thin, strict layer over the `npyz` crate.
//!
//! `npyz` parses and writes the format; this module adds the checks a numeric tool needs and
//! that `npyz` leaves to callers: the exact dtype (no silent int-to-float reading), C order,
//! no zero-length dimensions, and enough data bytes for the header's shape (checked before
//! anything is allocated, so a lying header cannot ask for terabytes). Every error names the
//! file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use npyz::{DType, Deserialize, TypeChar, WriterBuilder};

use crate::error::{Error, Result};

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

/// The element types this module reads and writes.
pub trait Element: Deserialize + npyz::Serialize + npyz::AutoSerialize + Copy {
    /// numpy's name for the dtype, for messages.
    const NAME: &'static str;
    const CHAR: TypeChar;
    const SIZE: u64;
}

macro_rules! element {
    ($t:ty, $name:literal, $char:expr) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            const CHAR: TypeChar = $char;
            const SIZE: u64 = std::mem::size_of::<$t>() as u64;
        }
    };
}

element!(f32, "float32", TypeChar::Float);
element!(i32, "int32", TypeChar::Int);
element!(u8, "uint8", TypeChar::Uint);
element!(u32, "uint32", TypeChar::Uint);
element!(bool, "bool", TypeChar::Bool);

/// Reads an array whose dtype must be exactly `T` (either byte order).
pub fn read<T: Element>(path: impl AsRef<Path>) -> Result<NpyArray<T>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Npy(format!("cannot read {}: {e}", path.display())))?;
    parse(&bytes).map_err(|msg| Error::Npy(format!("{}: {msg}", path.display())))
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

fn parse<T: Element>(bytes: &[u8]) -> std::result::Result<NpyArray<T>, String> {
    let (header, shape, data) = checked_header(bytes, T::NAME, T::SIZE, |ts| {
        ts.type_char() == T::CHAR && ts.size_field() == T::SIZE
    })?;
    let values = npyz::NpyFile::with_header(header, data)
        .into_vec::<T>()
        .map_err(|e| format!("cannot decode the data: {e}"))?;
    Ok(NpyArray {
        shape,
        data: values,
    })
}

/// Parses and checks the header (dtype by `accept`, C order, shape, enough data for it) and
/// returns it with the shape and the data bytes.
fn checked_header<'a>(
    bytes: &'a [u8],
    name: &str,
    size: u64,
    accept: impl Fn(&npyz::TypeStr) -> bool,
) -> std::result::Result<(npyz::NpyHeader, Vec<usize>, &'a [u8]), String> {
    let file = npyz::NpyFile::new(bytes).map_err(|e| format!("not a valid .npy file: {e}"))?;
    let header = file.header().clone();
    let dtype = header.dtype();
    let matches = match &dtype {
        DType::Plain(ts) => accept(ts),
        _ => false,
    };
    if !matches {
        return Err(format!("expected dtype {name}, found {}", describe(&dtype)));
    }
    if header.order() == npyz::Order::Fortran {
        return Err("is stored in Fortran order; save a C-contiguous array \
                    (numpy.ascontiguousarray) instead"
            .into());
    }
    let shape: Vec<usize> = header
        .shape()
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
    let need = (n as u128) * size as u128;
    let data = file.into_inner();
    if (data.len() as u128) < need {
        return Err(format!(
            "truncated: shape {shape:?} needs {need} bytes of data, the file has {}",
            data.len()
        ));
    }
    Ok((header, shape, data))
}

/// Reads a float16 array (`<f2` or `>f2`) widened to f32, which is exact. Compact stored
/// activations (tests/data/real) are f16; npyz decodes f16 only with its `half` feature, so
/// the two bytes per element are decoded here.
pub fn read_f16_as_f32(path: impl AsRef<Path>) -> Result<NpyArray<f32>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Npy(format!("cannot read {}: {e}", path.display())))?;
    parse_f16(&bytes).map_err(|msg| Error::Npy(format!("{}: {msg}", path.display())))
}

fn parse_f16(bytes: &[u8]) -> std::result::Result<NpyArray<f32>, String> {
    let (header, shape, data) = checked_header(bytes, "float16", 2, |ts| {
        ts.type_char() == TypeChar::Float && ts.size_field() == 2
    })?;
    let big =
        matches!(header.dtype(), DType::Plain(ts) if ts.endianness() == npyz::Endianness::Big);
    let n: usize = shape.iter().product();
    let data = data[..2 * n]
        .chunks_exact(2)
        .map(|b| {
            let bits = if big {
                u16::from_be_bytes([b[0], b[1]])
            } else {
                u16::from_le_bytes([b[0], b[1]])
            };
            half::f16::from_bits(bits).to_f32()
        })
        .collect();
    Ok(NpyArray { shape, data })
}

/// numpy-style name of a dtype for messages, e.g. `int32 ('<i4')`.
fn describe(dtype: &DType) -> String {
    let descr = dtype.descr();
    let name = match dtype {
        DType::Plain(ts) => match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, n) => format!("float{}", n * 8),
            (TypeChar::Int, n) => format!("int{}", n * 8),
            (TypeChar::Uint, n) => format!("uint{}", n * 8),
            (TypeChar::Bool, _) => "bool".into(),
            _ => return descr,
        },
        _ => "a structured dtype".into(),
    };
    format!("{name} ({descr})")
}

/// Writes `data` with `shape` (C order, little endian). The shape must account for every
/// element.
pub fn write<T: Element>(path: impl AsRef<Path>, shape: &[usize], data: &[T]) -> Result<()> {
    let path = path.as_ref();
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Npy(format!("{}: shape {shape:?} overflows", path.display())))?;
    if n != data.len() {
        return Err(Error::Npy(format!(
            "{}: shape {shape:?} holds {n} elements, got {}",
            path.display(),
            data.len()
        )));
    }
    let io_err = |e: std::io::Error| Error::Npy(format!("cannot write {}: {e}", path.display()));
    let file = File::create(path).map_err(io_err)?;
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(io_err)?;
    w.extend(data.iter().copied()).map_err(io_err)?;
    w.finish().map_err(io_err)?;
    Ok(())
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
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("intattention-npy-{}-{name}", std::process::id()))
    }

    #[test]
    fn round_trips_every_type() {
        let p = tmp("f32.npy");
        write_f32(&p, &[2, 3], &[1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]).unwrap();
        let a = read_f32(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]);
        let p = tmp("i32.npy");
        write_i32(&p, &[3], &[i32::MIN, 0, i32::MAX]).unwrap();
        assert_eq!(read_i32(&p).unwrap().data, vec![i32::MIN, 0, i32::MAX]);
        let p = tmp("u8.npy");
        write_u8(&p, &[1, 2], &[0, 255]).unwrap();
        assert_eq!(read_u8(&p).unwrap().data, vec![0, 255]);
        let p = tmp("u32.npy");
        write_u32(&p, &[2], &[7, u32::MAX]).unwrap();
        assert_eq!(read::<u32>(&p).unwrap().data, vec![7, u32::MAX]);
    }

    #[test]
    fn wrong_dtype_names_both_types_and_the_file() {
        let p = tmp("dtype.npy");
        write_i32(&p, &[2], &[1, 2]).unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("expected dtype float32"), "{e}");
        assert!(e.contains("int32"), "{e}");
        assert!(e.contains("dtype.npy"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let p = tmp("trunc.npy");
        write_f32(&p, &[4, 4], &[1.0; 16]).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 5);
        write_raw(&p, &bytes).unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        write_raw(&p, b"not an npy file at all").unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid .npy"), "{e}");
        assert!(read_f32(tmp("does-not-exist.npy")).is_err());
    }

    #[test]
    fn zero_dims_and_scalars_are_errors() {
        let p = tmp("zero.npy");
        write_f32(&p, &[0, 4], &[]).unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("zero-length"), "{e}");
        write_f32(&p, &[], &[1.0]).unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("0-D"), "{e}");
    }

    #[test]
    fn fortran_order_and_big_endian() {
        let p = tmp("fortran.npy");
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[2, 2])
            .order(npyz::Order::Fortran)
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1f32, 2.0, 3.0, 4.0]).unwrap();
        w.finish().unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("Fortran order"), "{e}");
        // Big-endian float32 is still float32: read and swapped.
        let p = tmp("be.npy");
        let mut w = npyz::WriteOptions::new()
            .dtype(DType::Plain(">f4".parse().unwrap()))
            .shape(&[2])
            .writer(BufWriter::new(File::create(&p).unwrap()))
            .begin_nd()
            .unwrap();
        w.extend([1.5f32, -2.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(read_f32(&p).unwrap().data, vec![1.5, -2.0]);
    }

    #[test]
    fn reads_f16_in_both_byte_orders() {
        let vals = [1.0f32, -2.5, 65504.0, 6.0e-8, 0.0, -0.0, f32::INFINITY];
        for dt in ["<f2", ">f2"] {
            let p = tmp(&format!("f16{}.npy", &dt[..1] == "<"));
            // npyz writes f16 only with its `half` feature: write the bits as a u16 dtype of
            // the same byte order and patch the type character in the header.
            let mut bytes = Vec::new();
            let mut w16 = npyz::WriteOptions::new()
                .dtype(DType::Plain(dt.replace('f', "u").parse().unwrap()))
                .shape(&[7])
                .writer(&mut bytes)
                .begin_nd()
                .unwrap();
            w16.extend(vals.iter().map(|&x| half::f16::from_f32(x).to_bits()))
                .unwrap();
            w16.finish().unwrap();
            let at = bytes
                .windows(3)
                .position(|w| w == dt.replace('f', "u").as_bytes())
                .unwrap();
            bytes[at + 1] = b'f';
            write_raw(&p, &bytes).unwrap();
            let a = read_f16_as_f32(&p).unwrap();
            assert_eq!(a.shape, vec![7]);
            assert_eq!(
                a.data,
                vals.map(|x| half::f16::from_f32(x).to_f32()).to_vec()
            );
            // f16 is not f32: the exact-dtype readers refuse it, and f32 is refused here.
            assert!(read_f32(&p).unwrap_err().to_string().contains("float16"));
        }
        let p = tmp("f16-wrong.npy");
        write_f32(&p, &[1], &[1.0]).unwrap();
        let e = read_f16_as_f32(&p).unwrap_err().to_string();
        assert!(
            e.contains("expected dtype float16") && e.contains("float32"),
            "{e}"
        );
    }

    #[test]
    fn shape_must_match_data_when_writing() {
        assert!(write_f32(tmp("bad.npy"), &[2, 2], &[1.0; 3]).is_err());
    }
}
