//! The pipelines on `ndarray` arrays: `[batch, heads, len, head_dim]` f32 views in, an owned
//! array out. Views in standard (row-major) layout are read in place; other layouts are copied
//! once into it (use [`crate::TensorView::strided`] to read strided memory without a copy).

use ndarray::{Array4, ArrayView4, ArrayViewMut4, CowArray, Ix4};

use crate::attention::{Attention, Workspace};
use crate::error::{Error, Result};
use crate::tensor::TensorView;

/// A view's data in standard layout (borrowed when it already is).
fn standard<'a>(a: &'a ArrayView4<'a, f32>) -> CowArray<'a, f32, Ix4> {
    a.as_standard_layout()
}

fn tensor<'a>(a: &'a CowArray<'a, f32, Ix4>) -> Result<TensorView<'a, f32>> {
    let d = a.shape();
    // `standard` made it contiguous and row-major; this arm is not reached.
    let data = a.as_slice().ok_or(Error::InvalidParameter {
        name: "array layout",
        value: format!("strides {:?}", a.strides()),
        expected: "standard (row-major, contiguous)",
    })?;
    TensorView::new(data, [d[0], d[1], d[2], d[3]])
}

/// `attn` on `q` (`[batch, heads, q_len, d]`), `k` and `v` (`[batch, kv_heads, kv_len, d]`),
/// with a fresh workspace; returns the output shaped like `q`.
///
/// # Errors
/// As [`Attention::run`].
pub fn run(
    attn: &Attention,
    q: ArrayView4<'_, f32>,
    k: ArrayView4<'_, f32>,
    v: ArrayView4<'_, f32>,
) -> Result<Array4<f32>> {
    // Allocated fallibly: a shape too large for memory is an error, not an abort.
    let len = q.len();
    let mut storage = Vec::new();
    storage
        .try_reserve_exact(len)
        .map_err(|_| Error::Allocation {
            what: "the output",
            bytes: len.saturating_mul(4),
        })?;
    storage.resize(len, 0f32);
    let mut out =
        Array4::from_shape_vec(q.raw_dim(), storage).map_err(|e| Error::InvalidParameter {
            name: "output shape",
            value: e.to_string(),
            expected: "the shape of Q",
        })?;
    run_into(attn, &mut Workspace::new(), q, k, v, out.view_mut())?;
    Ok(out)
}

/// [`run`] into `out` (shaped like `q`, standard layout) with a caller's workspace.
///
/// # Errors
/// As [`Attention::run_into`]; [`Error::DimensionMismatch`] if `out` is not shaped like `q`,
/// [`Error::InvalidParameter`] if it is not in standard layout.
pub fn run_into(
    attn: &Attention,
    ws: &mut Workspace,
    q: ArrayView4<'_, f32>,
    k: ArrayView4<'_, f32>,
    v: ArrayView4<'_, f32>,
    mut out: ArrayViewMut4<'_, f32>,
) -> Result<()> {
    for (i, dim) in ["batch", "heads", "q_len", "head_dim"].iter().enumerate() {
        if out.shape()[i] != q.shape()[i] {
            return Err(Error::DimensionMismatch {
                tensor: "output",
                dim,
                expected: q.shape()[i],
                found: out.shape()[i],
            });
        }
    }
    let (qs, ks, vs) = (standard(&q), standard(&k), standard(&v));
    let out = out.as_slice_mut().ok_or_else(|| Error::InvalidParameter {
        name: "output",
        value: "a non-standard layout".into(),
        expected: "an array in standard (row-major) layout",
    })?;
    attn.run_into(ws, tensor(&qs)?, tensor(&ks)?, tensor(&vs)?, out)
}
