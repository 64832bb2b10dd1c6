//! Bridges to tensor libraries, each behind its feature: `ndarray` views in and out of the
//! pipelines (module and feature `ndarray`), and a candle custom operation (module and feature
//! `candle`).

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "ndarray")]
pub mod ndarray;
