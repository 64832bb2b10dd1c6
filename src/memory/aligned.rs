//! [`AlignedVec`]: a buffer whose first element starts a 64-byte cache line.
//!
//! Why not `Vec<T>`: the allocator only promises `align_of::<T>()`, and glibc places large
//! blocks 16 bytes past a page boundary. AMX tile loads and stores move whole 64-byte rows, and
//! a row that straddles two cache lines costs two accesses (docs/performance.md has the
//! measurement). The storage is a `Vec` of 64-byte aligned lines, so allocation and freeing
//! stay with the standard library; only the typed view over it is ours.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::Pod;
use crate::error::{Error, Result};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `len` values of `T` at the start of a 64-byte aligned allocation.
pub(crate) struct AlignedVec<T: Pod> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

fn lines_for<T>(len: usize) -> Option<usize> {
    Some(len.checked_mul(size_of::<T>())?.div_ceil(64))
}

/// `n` zeroed lines from the allocator's zeroing path (calloc: fresh pages arrive zeroed and
/// are faulted in later by whoever writes them), or `None` if the allocation fails.
fn try_zeroed_lines(n: usize) -> Option<Vec<Line>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<Line>(n).ok()?;
    // SAFETY: `layout` has non-zero size (n > 0, 64-byte lines).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Line;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[Line; n]`
    // (size and alignment as `Vec<Line>` with capacity n uses), and all n elements are
    // initialised: all-zero bytes are a valid `Line`.
    Some(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

impl<T: Pod> AlignedVec<T> {
    /// `len` zeros. Panics only where `Vec` would (the size overflows or memory runs out):
    /// for buffers whose size comes from the caller's input use [`AlignedVec::try_zeroed`].
    pub fn zeroed(len: usize) -> Self {
        let n = lines_for::<T>(len).expect("AlignedVec: length overflows usize");
        match try_zeroed_lines(n) {
            Some(lines) => AlignedVec {
                lines,
                len,
                _t: PhantomData,
            },
            None => std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<Line>(n).expect("layout of a valid allocation"),
            ),
        }
    }

    /// `len` zeros, or [`Error::Allocation`] naming `what` when the memory cannot be had.
    pub fn try_zeroed(len: usize, what: &'static str) -> Result<Self> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or(Error::SizeOverflow { what })?;
        let lines =
            try_zeroed_lines(bytes.div_ceil(64)).ok_or(Error::Allocation { what, bytes })?;
        Ok(AlignedVec {
            lines,
            len,
            _t: PhantomData,
        })
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        let mut v = Self::zeroed(values.len());
        v.copy_from_slice(values);
        v
    }

    /// Makes the buffer `len` zeros long, reusing its storage when it is large enough.
    pub fn try_resize_zeroed(&mut self, len: usize, what: &'static str) -> Result<()> {
        let n = lines_for::<T>(len).ok_or(Error::SizeOverflow { what })?;
        if n <= self.lines.len() {
            self.len = len;
            self.fill_zero();
            return Ok(());
        }
        // Free the old storage first: both at once may not fit.
        self.lines = Vec::new();
        self.len = 0;
        *self = Self::try_zeroed(len, what)?;
        Ok(())
    }

    /// Makes the buffer at least `len` values long; new values are zero, existing ones are
    /// kept only when no reallocation is needed (callers use it as scratch).
    pub fn grow(&mut self, len: usize) {
        if self.len < len {
            if len * size_of::<T>() <= self.lines.len() * 64 {
                let old = self.len;
                self.len = len;
                self[old..].fill(T::zeroed());
            } else {
                *self = Self::zeroed(len);
            }
        }
    }

    /// Makes the buffer at least `len` values long without keeping or zeroing any value in
    /// particular (scratch that is written before it is read), allocating only when the
    /// storage is too small; [`Error::Allocation`] if the memory cannot be had.
    pub fn try_grow(&mut self, len: usize, what: &'static str) -> Result<()> {
        if self.len >= len {
            return Ok(());
        }
        let n = lines_for::<T>(len).ok_or(Error::SizeOverflow { what })?;
        if n <= self.lines.len() {
            self.len = len;
            return Ok(());
        }
        self.lines = Vec::new();
        self.len = 0;
        *self = Self::try_zeroed(len, what)?;
        Ok(())
    }

    /// Makes the buffer exactly `len` values long without zeroing (storage that its caller
    /// overwrites whole), allocating only when the storage is too small; [`Error::Allocation`]
    /// if the memory cannot be had.
    pub fn try_set_len(&mut self, len: usize, what: &'static str) -> Result<()> {
        if len > self.len {
            self.try_grow(len, what)?;
        }
        self.len = len;
        Ok(())
    }

    /// Bytes of storage held (at least `len * size_of::<T>()`).
    pub fn capacity_bytes(&self) -> usize {
        self.lines.len() * 64
    }

    fn fill_zero(&mut self) {
        bytemuck::cast_slice_mut::<T, u8>(self).fill(0);
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let bytes = bytemuck::cast_slice::<Line, u8>(&self.lines);
        // `lines` holds at least `len * size_of::<T>()` bytes (every constructor sizes it so,
        // `resize_zeroed` and `grow` keep `len` within it) starting on a 64-byte line, which
        // every `Pod` alignment divides.
        bytemuck::cast_slice(&bytes[..self.len * size_of::<T>()])
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let n = self.len * size_of::<T>();
        let bytes = bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines);
        bytemuck::cast_slice_mut(&mut bytes[..n])
    }
}

// SAFETY: `Line` is 64 plain bytes with no padding (`repr(C)`, one u8 array); every bit
// pattern is valid and all zeros is a valid value.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above; `Line` is `Copy` and `'static`.
unsafe impl bytemuck::Pod for Line {}

impl<T: Pod> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Pod> Default for AlignedVec<T> {
    fn default() -> Self {
        AlignedVec {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Pod + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_reads_back() {
        for n in [0usize, 1, 15, 64, 65, 1000] {
            let src: Vec<i32> = (0..n as i32).map(|i| i * 7 - 3).collect();
            let v = AlignedVec::from_slice(&src);
            assert_eq!(&v[..], &src[..]);
            if n > 0 {
                assert_eq!(v.as_ptr() as usize % 64, 0);
            }
        }
    }

    #[test]
    fn resize_reuses_storage_and_zeroes() {
        let mut v = AlignedVec::<u8>::zeroed(1000);
        v.fill(7);
        let p = v.as_ptr();
        v.try_resize_zeroed(600, "test").unwrap();
        assert_eq!(v.as_ptr(), p);
        assert!(v.iter().all(|&x| x == 0));
        v.try_resize_zeroed(5000, "test").unwrap();
        assert_eq!(v.len(), 5000);
        assert!(v.iter().all(|&x| x == 0));
        let mut g = AlignedVec::<i32>::zeroed(3);
        g.fill(1);
        g.grow(10);
        assert_eq!(&g[..], &[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn impossible_sizes_are_errors() {
        assert!(matches!(
            AlignedVec::<i32>::try_zeroed(usize::MAX / 2, "huge"),
            Err(Error::SizeOverflow { what: "huge" })
        ));
        assert!(matches!(
            AlignedVec::<u8>::try_zeroed(1 << 62, "huge"),
            Err(Error::Allocation { what: "huge", .. })
        ));
    }
}
