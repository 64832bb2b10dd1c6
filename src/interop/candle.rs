//! IntAttention (and the other pipelines) as a candle custom operation on CPU tensors:
//! `q.apply_op3_no_bwd(&k, &v, &CandleAttention::new(attn))?` with `q` `[batch, heads, q_len,
//! head_dim]` and `k`, `v` `[batch, kv_heads, kv_len, head_dim]`, f32, any strides whose last
//! dimension is contiguous (read in place, no copy). The result is a contiguous f32 tensor
//! shaped like `q`. Forward only: there is no gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};

use crate::attention::{Attention, Workspace};
use crate::tensor::TensorView;

/// An [`Attention`] configuration as a candle [`CustomOp3`].
#[derive(Clone, Debug)]
pub struct CandleAttention {
    attn: Attention,
}

impl CandleAttention {
    /// The operation running `attn`.
    pub fn new(attn: Attention) -> Self {
        CandleAttention { attn }
    }

    /// The configuration it runs.
    pub fn attention(&self) -> &Attention {
        &self.attn
    }
}

/// A candle tensor's storage and layout as a [`TensorView`].
fn view<'a>(
    name: &'static str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<TensorView<'a, f32>> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("intattention: {name} must be f32, got {:?}", s.dtype())
    };
    let (dims, stride) = (l.dims(), l.stride());
    if dims.len() != 4 {
        candle_core::bail!(
            "intattention: {name} must be [batch, heads, len, head_dim], got {dims:?}"
        )
    }
    if dims[3] > 1 && stride[3] != 1 {
        candle_core::bail!("intattention: {name} must be contiguous in its last dimension")
    }
    let data = data.get(l.start_offset()..).ok_or_else(|| {
        candle_core::Error::msg(format!("intattention: {name}: offset past the storage"))
    })?;
    TensorView::strided(
        data,
        [dims[0], dims[1], dims[2], dims[3]],
        [stride[0], stride[1], stride[2]],
    )
    .map_err(candle_core::Error::msg)
}

impl CustomOp3 for CandleAttention {
    fn name(&self) -> &'static str {
        "intattention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (view("Q", s1, l1)?, view("K", s2, l2)?, view("V", s3, l3)?);
        let dims = q.dims();
        let n = dims.iter().product::<usize>();
        let mut out = vec![0f32; n];
        self.attn
            .run_into(&mut Workspace::new(), q, k, v, &mut out)
            .map_err(candle_core::Error::msg)?;
        Ok((CpuStorage::F32(out), Shape::from(dims.to_vec())))
    }
}
