//! ACL tensors: element types, shapes, and memory that is either owned by ACL or borrowed from
//! a caller's slice for the tensor's lifetime `'buf`.
//!
//! A new owned tensor gets its memory lazily (first write, read or run), after the functions
//! configured on it have settled its padding. A borrowed tensor is fixed to the caller's dense
//! row-major slice from the start; functions that would need to pad it fail to configure with
//! ACL's message instead of running past the slice.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

use half::f16;

use super::ffi;
use super::{param_err, shape_err, Error, Result};

/// Element types, as ACL names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// 32-bit float.
    F32,
    /// 16-bit float (IEEE binary16).
    F16,
    /// 32-bit signed integer (scores, P x V sums).
    S32,
    /// 32-bit unsigned integer (IndexSoftmax's row sums).
    U32,
    /// 8-bit unsigned integer without quantization info (probabilities).
    U8,
    /// 8-bit signed integer without quantization info.
    S8,
    /// u8 with a scale and an offset (`real = scale * (q - offset)`).
    QAsymm8,
    /// i8 with a scale and an offset.
    QAsymm8Signed,
}

impl DataType {
    fn to_ffi(self) -> ffi::ia_dtype {
        match self {
            DataType::F32 => ffi::IA_DTYPE_F32,
            DataType::F16 => ffi::IA_DTYPE_F16,
            DataType::S32 => ffi::IA_DTYPE_S32,
            DataType::U32 => ffi::IA_DTYPE_U32,
            DataType::U8 => ffi::IA_DTYPE_U8,
            DataType::S8 => ffi::IA_DTYPE_S8,
            DataType::QAsymm8 => ffi::IA_DTYPE_QASYMM8,
            DataType::QAsymm8Signed => ffi::IA_DTYPE_QASYMM8_SIGNED,
        }
    }

    /// Whether the type carries a scale and an offset ([`Quantization`]).
    pub fn is_quantized(self) -> bool {
        matches!(self, DataType::QAsymm8 | DataType::QAsymm8Signed)
    }
}

/// Per-tensor affine quantization: `real = scale * (q - offset)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantization {
    /// The real value of one step.
    pub scale: f32,
    /// The integer that stands for real 0.
    pub offset: i32,
}

/// A tensor's type and row-major shape (outermost dimension first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    /// Element type.
    pub dtype: DataType,
    /// Dimensions, outermost first (row-major; 1 to 4 of them).
    pub dims: Vec<usize>,
    /// Required for the quantized types, absent otherwise.
    pub quant: Option<Quantization>,
}

impl TensorDesc {
    /// A tensor of a type without quantization info.
    pub fn new(dtype: DataType, dims: &[usize]) -> Self {
        TensorDesc {
            dtype,
            dims: dims.to_vec(),
            quant: None,
        }
    }

    /// A quantized tensor (QAsymm8 or QAsymm8Signed).
    pub fn quantized(dtype: DataType, dims: &[usize], scale: f32, offset: i32) -> Self {
        TensorDesc {
            dtype,
            dims: dims.to_vec(),
            quant: Some(Quantization { scale, offset }),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_ffi(&self) -> Result<ffi::ia_tensor_desc> {
        let rank = self.dims.len();
        if rank == 0 || rank > ffi::IA_MAX_RANK as usize {
            return shape_err(format!(
                "ACL tensors have 1 to {} dimensions, got {rank}",
                ffi::IA_MAX_RANK
            ));
        }
        let mut d = ffi::ia_tensor_desc {
            dtype: self.dtype.to_ffi(),
            rank: rank as u32,
            ..Default::default()
        };
        for (slot, &n) in d.dims.iter_mut().zip(&self.dims) {
            *slot = n as u64;
        }
        match (self.dtype.is_quantized(), self.quant) {
            (true, Some(q)) => {
                d.scale = q.scale;
                d.offset = q.offset;
            }
            (true, None) => {
                return param_err(format!("{:?} needs a scale and an offset", self.dtype));
            }
            (false, Some(_)) => {
                return param_err(format!("{:?} takes no quantization", self.dtype));
            }
            (false, None) => {}
        }
        Ok(d)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Rust element types that can be copied in and out of ACL tensors. Every bit pattern of
/// these types is a valid value, so bytes ACL wrote can be read back as them.
pub trait Element: Copy + Default + sealed::Sealed + 'static {
    /// Whether tensors of `dtype` hold elements of this type.
    fn matches(dtype: DataType) -> bool;
}

macro_rules! element {
    ($t:ty, $($dt:ident),+) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            fn matches(dtype: DataType) -> bool {
                matches!(dtype, $(DataType::$dt)|+)
            }
        }
    };
}
element!(f32, F32);
element!(f16, F16);
element!(i32, S32);
element!(u32, U32);
element!(u8, U8, QAsymm8);
element!(i8, S8, QAsymm8Signed);

/// Where a tensor's elements lie (row-major order, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per element.
    pub element_size: usize,
    /// Byte strides, in the order of [`TensorDesc::dims`] (outermost first; entries past the
    /// rank are unused).
    pub strides: [usize; 4],
    /// Byte offset of the first element in the buffer (past ACL's padding).
    pub offset_first_element: usize,
    /// Bytes of the whole buffer, padding included.
    pub total_size: usize,
    /// No padding: a plain row-major array.
    pub dense: bool,
    /// The tensor has its memory (allocated or imported) now.
    pub has_memory: bool,
    /// The memory is a caller's slice ([`Tensor::borrowed`]).
    pub imported: bool,
}

/// Owns one shim tensor handle. Shared (through `Rc`) by the [`Tensor`] and every function
/// configured on it, so that the handle outlives all its users.
pub(crate) struct RawTensor(NonNull<ffi::ia_tensor>);

impl RawTensor {
    pub(crate) fn as_ptr(&self) -> *mut ffi::ia_tensor {
        self.0.as_ptr()
    }
}

impl Drop for RawTensor {
    fn drop(&mut self) {
        // SAFETY: the handle came from ia_tensor_create and is destroyed once, here. Functions
        // hold an `Rc` of this value and destroy their shim handle before releasing it, so no
        // function still refers to the tensor (the only failure the shim reports).
        let status = unsafe { ffi::ia_tensor_destroy(self.0.as_ptr()) };
        debug_assert_eq!(status, ffi::IA_OK, "ACL tensor destroyed while in use");
    }
}

/// An ACL tensor. `'buf` is `'static` for tensors that own their memory and the borrow of the
/// caller's slice for [`Tensor::borrowed`] ones.
pub struct Tensor<'buf> {
    raw: Rc<RawTensor>,
    desc: TensorDesc,
    _buf: PhantomData<&'buf mut [u8]>,
}

impl Tensor<'static> {
    /// A tensor whose memory ACL allocates on first use.
    pub fn new(desc: &TensorDesc) -> Result<Self> {
        Tensor::create(desc)
    }
}

impl<'buf> Tensor<'buf> {
    fn create(desc: &TensorDesc) -> Result<Self> {
        let d = desc.to_ffi()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `d` and `raw` are valid for the call; on success the shim hands over a new
        // handle that RawTensor then owns.
        super::ffi::check(unsafe { ffi::ia_tensor_create(&d, &mut raw) })?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::Acl("ia_tensor_create returned no tensor".into()))?;
        Ok(Tensor {
            raw: Rc::new(RawTensor(raw)),
            desc: desc.clone(),
            _buf: PhantomData,
        })
    }

    /// A tensor over the caller's slice (ACL's `import_memory`), which stays borrowed for the
    /// tensor's lifetime. The slice is the dense row-major array of the tensor's elements.
    pub fn borrowed<T: Element>(desc: &TensorDesc, buf: &'buf mut [T]) -> Result<Self> {
        check_type::<T>(desc)?;
        if buf.len() != desc.len() {
            return shape_err(format!(
                "a {:?} tensor of shape {:?} needs {} elements, the slice has {}",
                desc.dtype,
                desc.dims,
                desc.len(),
                buf.len()
            ));
        }
        let t = Tensor::create(desc)?;
        // SAFETY: the slice is valid for writes of `size_of_val(buf)` bytes for 'buf, which
        // bounds this tensor's lifetime (and, through the functions' own `'buf`, every function
        // configured on it); the shim checks size, alignment and layout before importing.
        ffi::check(unsafe {
            ffi::ia_tensor_import(
                t.raw.as_ptr(),
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(buf) as u64,
            )
        })?;
        Ok(t)
    }

    /// The tensor's type and shape.
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    pub(crate) fn raw(&self) -> &Rc<RawTensor> {
        &self.raw
    }

    /// Gives an owned tensor its memory now (otherwise its first use does).
    pub fn allocate(&self) -> Result<()> {
        // SAFETY: the handle is live while `self` is.
        ffi::check(unsafe { ffi::ia_tensor_allocate(self.raw.as_ptr()) })
    }

    /// Copies a dense row-major array of all elements into the tensor.
    pub fn write<T: Element>(&self, data: &[T]) -> Result<()> {
        self.check_slice::<T>(data.len())?;
        // SAFETY: `data` is valid for reads of its byte size; the shim checks that size
        // against the tensor's and copies row by row within its own buffer.
        ffi::check(unsafe {
            ffi::ia_tensor_write(
                self.raw.as_ptr(),
                data.as_ptr().cast(),
                std::mem::size_of_val(data) as u64,
            )
        })
    }

    /// Copies all elements out into a dense row-major array.
    pub fn read<T: Element>(&self, out: &mut [T]) -> Result<()> {
        self.check_slice::<T>(out.len())?;
        // SAFETY: `out` is valid for writes of its byte size, which the shim checks; every
        // bit pattern is a valid `T` (see `Element`).
        ffi::check(unsafe {
            ffi::ia_tensor_read(
                self.raw.as_ptr(),
                out.as_mut_ptr().cast(),
                std::mem::size_of_val(out) as u64,
            )
        })
    }

    /// All elements as a new dense row-major vector.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let mut v = vec![T::default(); self.desc.len()];
        self.read(&mut v)?;
        Ok(v)
    }

    /// Where ACL placed the elements (strides, padding, whether memory is there yet).
    pub fn layout(&self) -> Result<Layout> {
        let mut l = ffi::ia_tensor_layout::default();
        // SAFETY: the handle is live and `l` is a valid out-pointer.
        ffi::check(unsafe { ffi::ia_tensor_layout_get(self.raw.as_ptr(), &mut l) })?;
        let mut strides = [0usize; 4];
        for (s, &v) in strides.iter_mut().zip(&l.strides) {
            *s = v as usize;
        }
        Ok(Layout {
            element_size: l.element_size as usize,
            strides,
            offset_first_element: l.offset_first_element as usize,
            total_size: l.total_size as usize,
            dense: l.dense != 0,
            has_memory: l.has_memory != 0,
            imported: l.imported != 0,
        })
    }

    fn check_slice<T: Element>(&self, len: usize) -> Result<()> {
        check_type::<T>(&self.desc)?;
        if len != self.desc.len() {
            return shape_err(format!(
                "tensor of shape {:?} has {} elements, the slice {len}",
                self.desc.dims,
                self.desc.len()
            ));
        }
        Ok(())
    }
}

fn check_type<T: Element>(desc: &TensorDesc) -> Result<()> {
    if !T::matches(desc.dtype) {
        return param_err(format!(
            "a {:?} tensor does not hold {} elements",
            desc.dtype,
            std::any::type_name::<T>()
        ));
    }
    Ok(())
}
