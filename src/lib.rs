//! # intattention
//!
//! Fully integer attention (IntAttention, Zhong et al., MLSys 2026) for CPUs: int8 Q K^T into
//! i32 scores, IndexSoftmax into u8 probabilities, u8 P times int8 V, and the three baselines
//! (fp32, fp16, int8 with a float softmax). Every integer result is exact against a scalar
//! reference of the numerical contract (docs/numerics.md).
//!
//! ```
//! use intattention::{Attention, AttnShape, Pipeline, SoftmaxVariant};
//!
//! let shape = AttnShape::new(1, 8, 64, 64).with_kv_heads(2);
//! let q = vec![0.1f32; shape.q_elems()];
//! let (k, v) = (vec![0.2f32; shape.kv_elems()], vec![0.3f32; shape.kv_elems()]);
//! let out = Attention::new(Pipeline::IntAttention)
//!     .with_variant(SoftmaxVariant::Deferred)
//!     .with_causal(true)
//!     .run(&shape, &q, &k, &v)?;
//! assert_eq!(out.len(), shape.q_elems());
//! # Ok::<(), intattention::Error>(())
//! ```
//!
//! - [`Attention`]: the configuration and its calls (`run`, `run_into` on strided
//!   [`TensorView`]s with a caller's [`Workspace`], `run_quantized`, `run_cached` over a
//!   [`KvCache`]); [`Executor`] says where the work runs.
//! - [`ops`]: the standalone operations (quantization, IndexSoftmax, the integer GEMMs).
//! - [`kernels`]: the compute kernels ([`Kernel`]); every SIMD kernel is checked against
//!   [`reference`], the scalar code that reads like the contract.
//! - `acl` (feature `acl`, aarch64): ARM ComputeLibrary's operators and pipelines.

#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(intattention_acl)]
pub mod acl;
mod attention;
pub mod backend;
mod cache;
mod error;
mod exec;
pub mod interop;
pub mod kernels;
pub mod lut;
mod memory;
pub mod ops;
mod pipeline;
pub mod reference;
mod rounding;
mod simd;
mod tensor;

pub use attention::{
    Attention, AttnShape, Granularity, Quantization, Schedule, Workspace, DEFERRED_TABLE_BITS,
};
pub use backend::Backend;
pub use cache::{KvCache, MAX_EXP, PAGE};
pub use error::{Error, Result};
pub use exec::Executor;
pub use kernels::Kernel;
pub use ops::quant::{quantize_symmetric, QTensor};
pub use ops::softmax::{index_softmax, IndexSoftmaxParams, RowSums, ScoreMask, SoftmaxVariant};
pub use pipeline::Pipeline;
pub use tensor::TensorView;
