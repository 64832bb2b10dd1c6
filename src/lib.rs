//! # intattention
//!
//! Fully integer attention (IntAttention, Zhong et al., MLSys 2026) for CPUs: int8 Q K^T into
//! i32 scores, IndexSoftmax into u8 probabilities, u8 P times int8 V, plus the three baselines
//! (fp32, fp16, int8 with a float softmax). The numbers follow the project's SPEC exactly.
//!
//! - [`reference`]: scalar code that reads like the SPEC; every kernel is tested against it.
//! - [`kernels`]: the kernel trait, runtime dispatch, and the SIMD kernels.
//! - [`quant`], [`softmax`], [`gemm`]: the standalone operations.
//! - [`attention`]: the four pipelines.
//! - [`fused`]: the row-block schedule of the integer pipelines (no `Lq x Lk` buffer).

pub mod accuracy;
#[cfg(intattention_acl)]
pub mod acl;
#[doc(hidden)]
pub mod aligned;
pub mod attention;
pub mod backend;
pub mod data;
pub mod error;
pub mod float;
pub mod fused;
pub mod gemm;
pub mod kernels;
pub mod npy;
pub mod quant;
pub mod reference;
mod simd;
pub mod softmax;
pub mod threads;

pub use attention::{Attention, AttnShape, Pipeline, Schedule};
pub use backend::Backend;
pub use error::{Error, Result};
pub use gemm::{gemm_s8s8_nt, gemm_u8s8};
pub use quant::{quantize_symmetric, QTensor};
pub use softmax::{
    index_softmax, threshold_exact, threshold_paper_sim, IndexSoftmaxParams, Lut, RowSums,
    ScoreMask, SoftmaxVariant,
};
