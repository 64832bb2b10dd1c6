#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! - [`Attention`]: the configuration and its calls ([`Attention::run`], [`Attention::run_into`]
//!   on strided [`TensorView`]s with a caller's [`Workspace`], [`Attention::run_quantized`],
//!   [`Attention::run_cached`] over a [`KvCache`]); [`Executor`] says where the work runs;
//!   [`Error`] is every failure.
//! - [`ops`]: the standalone operations (quantization, IndexSoftmax, the integer GEMMs).
//! - [`kernels`]: the compute kernels ([`Kernel`]); every SIMD kernel is checked against
//!   [`reference`](mod@reference), the scalar code that reads like the contract; [`lut`] holds IndexSoftmax's
//!   table and threshold.
//! - [`backend`]: set-up once, run many, on the native kernels or ACL.
//! - [`interop`]: `ndarray` and `candle` bridges (features of the same names).
//! - `acl` (feature `acl`, aarch64): ARM ComputeLibrary's tensors, operators and pipelines.

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
