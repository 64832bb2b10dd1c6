//! The standalone operations of the contract, shape-checked and run on a chosen kernel:
//! quantization ([`quant`]), IndexSoftmax ([`softmax`]), the two integer GEMMs ([`gemm`]) and
//! the exact output conversion (`output`, crate-internal). The attention pipelines are built
//! from the same functions, so a caller composing them gets the pipelines' numbers.

pub mod gemm;
pub(crate) mod output;
pub mod quant;
pub mod softmax;
