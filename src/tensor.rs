//! [`TensorView`]: how the pipelines read Q, K and V. A borrowed 4-D tensor `[batch, heads,
//! rows, head_dim]` whose last dimension is contiguous and whose other three have any stride,
//! so `[B, L, H, d]` activations (the layout a fused QKV projection produces), a slice of a
//! larger buffer or a transposed view are read in place, without a copy.

use crate::error::{check_len, mul, Error, Result};

/// A borrowed `[batch, heads, rows, head_dim]` tensor with a contiguous last dimension.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a, T> {
    data: &'a [T],
    dims: [usize; 4],
    strides: [usize; 3],
}

impl<'a, T> TensorView<'a, T> {
    /// A contiguous row-major `[batch, heads, rows, head_dim]` tensor.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `data` holds exactly the product of `dims`;
    /// [`Error::SizeOverflow`] if that product overflows.
    pub fn new(data: &'a [T], dims: [usize; 4]) -> Result<Self> {
        let [_, h, l, d] = dims;
        let n = dims
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or(Error::SizeOverflow { what: "tensor" })?;
        check_len("tensor", n, data.len())?;
        Ok(TensorView {
            data,
            dims,
            strides: [h * l * d, l * d, d],
        })
    }

    /// A tensor with the given element strides of batch, heads and rows (the head dimension
    /// is contiguous). For `[B, L, H, d]` data: `dims = [B, H, L, d]`, `strides = [L * H * d,
    /// d, H * d]` (or [`TensorView::from_blhd`]).
    ///
    /// # Errors
    /// [`Error::StridesOutOfBounds`] if the strides reach past the end of `data`.
    pub fn strided(data: &'a [T], dims: [usize; 4], strides: [usize; 3]) -> Result<Self> {
        let reach = if dims.contains(&0) {
            0
        } else {
            let mut last = 0usize;
            for (&n, &s) in dims[..3].iter().zip(&strides) {
                last = mul("tensor strides", n - 1, s)?.checked_add(last).ok_or(
                    Error::SizeOverflow {
                        what: "tensor strides",
                    },
                )?;
            }
            last.checked_add(dims[3]).ok_or(Error::SizeOverflow {
                what: "tensor strides",
            })?
        };
        if reach > data.len() {
            return Err(Error::StridesOutOfBounds {
                tensor: "tensor",
                needed: reach,
                len: data.len(),
            });
        }
        Ok(TensorView {
            data,
            dims,
            strides,
        })
    }

    /// A contiguous `[batch, rows, heads, head_dim]` tensor, viewed as `[batch, heads, rows,
    /// head_dim]`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `data` holds exactly the product of `dims`.
    pub fn from_blhd(data: &'a [T], dims_blhd: [usize; 4]) -> Result<Self> {
        let [b, l, h, d] = dims_blhd;
        let n = mul("tensor", mul("tensor", b, l)?, mul("tensor", h, d)?)?;
        check_len("tensor", n, data.len())?;
        Self::strided(data, [b, h, l, d], [l * h * d, d, h * d])
    }

    /// `[batch, heads, rows, head_dim]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Element strides of batch, heads and rows.
    pub fn strides(&self) -> [usize; 3] {
        self.strides
    }

    /// Whether the tensor is contiguous row-major.
    pub fn is_contiguous(&self) -> bool {
        let [_, h, l, d] = self.dims;
        self.strides == [h * l * d, l * d, d]
    }

    /// Row `i` of head `h` of batch row `b` (`head_dim` values).
    pub(crate) fn row(&self, b: usize, h: usize, i: usize) -> &'a [T] {
        let at = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        &self.data[at..at + self.dims[3]]
    }

    /// The position in logical (contiguous) order of element `c` of row `(b, h, i)`: how
    /// errors name an element.
    pub(crate) fn flat_index(&self, b: usize, h: usize, i: usize, c: usize) -> usize {
        let [_, hh, l, d] = self.dims;
        ((b * hh + h) * l + i) * d + c
    }
}
