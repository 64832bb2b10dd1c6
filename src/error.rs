//! The crate's one error type. Every public operation reports bad input through it, with the
//! offending values as typed fields; nothing reachable from safe public API panics on input.

use crate::pipeline::Pipeline;

/// Errors returned by every public operation of the crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A NaN or an infinity in an input tensor.
    #[error("{tensor} contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Which input (`"Q"`, `"K"`, `"V"`, ...).
        tensor: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A dimension that must be at least 1 is 0.
    #[error("{dim} must be at least 1")]
    ZeroDimension {
        /// The dimension's name.
        dim: &'static str,
    },
    /// A buffer whose length does not match the shape it is used with.
    #[error("{tensor} has {found} elements where the shape needs {expected}")]
    LengthMismatch {
        /// Which buffer.
        tensor: &'static str,
        /// Length the shape needs.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// Two tensors that must agree in a dimension do not.
    #[error("{tensor} has {dim} = {found} where {expected} is needed")]
    DimensionMismatch {
        /// The tensor whose dimension is off.
        tensor: &'static str,
        /// The dimension's name.
        dim: &'static str,
        /// The value the other operands imply.
        expected: usize,
        /// The value found.
        found: usize,
    },
    /// Grouped-query attention needs `kv_heads` to divide `heads`.
    #[error("kv_heads ({kv_heads}) must divide heads ({heads})")]
    HeadsNotDivisible {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// A strided view reaches past the end of its buffer.
    #[error("{tensor}: the strides reach element {needed} but the buffer has {len}")]
    StridesOutOfBounds {
        /// Which view.
        tensor: &'static str,
        /// One past the largest element index the strides reach.
        needed: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A size computation overflows `usize`.
    #[error("the size of {what} overflows usize")]
    SizeOverflow {
        /// What was being sized.
        what: &'static str,
    },
    /// A buffer the call needs could not be allocated (or is larger than any allocation can
    /// be); nothing was computed.
    #[error("{what} needs {bytes} bytes, which could not be allocated")]
    Allocation {
        /// The buffer.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// A value past a limit of exact integer arithmetic.
    #[error("{what} = {value} exceeds {limit}: {reason}")]
    LimitExceeded {
        /// The quantity.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The largest value supported.
        limit: usize,
        /// Why the limit exists.
        reason: &'static str,
    },
    /// A parameter outside its documented range.
    #[error("invalid {name}: {value} (expected {expected})")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// The value given, as text.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
    /// A key length (key padding) longer than the keys.
    #[error("key length {len} of batch row {batch} exceeds kv_len {kv_len}")]
    KeyLenTooLong {
        /// Batch row.
        batch: usize,
        /// The key length given.
        len: usize,
        /// The number of keys.
        kv_len: usize,
    },
    /// An operation that needs another pipeline.
    #[error("{operation} is not available for the {pipeline} pipeline")]
    PipelineMismatch {
        /// The operation.
        operation: &'static str,
        /// The pipeline it was asked of.
        pipeline: Pipeline,
    },
    /// Scaled scores or logits that overflow the pipeline's arithmetic.
    #[error("{what} overflows {arithmetic}: {hint}")]
    Overflow {
        /// What overflowed.
        what: &'static str,
        /// The arithmetic that overflowed (`"f16"`, `"f32"`).
        arithmetic: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// The output contains a NaN or an infinity (inputs so large that the result does not fit
    /// the output type).
    #[error(
        "the {pipeline} pipeline produced a non-finite output ({value}) at flat index {index}"
    )]
    NonFiniteOutput {
        /// The pipeline.
        pipeline: Pipeline,
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A packed matrix given to a kernel that did not pack it.
    #[error("a matrix packed by kernel '{packed_by}' was given to kernel '{kernel}'")]
    PackedLayout {
        /// The kernel that packed it.
        packed_by: &'static str,
        /// The kernel it was given to.
        kernel: &'static str,
    },
    /// A kernel name that is unknown or not supported by this CPU.
    #[error("kernel '{name}' is unknown or not supported by this CPU (available: {available})")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// The kernels this CPU can run, comma separated.
        available: String,
    },
    /// A sequence index past the sequences of a [`crate::KvCache`].
    #[error("sequence {seq} is out of range: the cache holds {sequences}")]
    SequenceOutOfRange {
        /// The index given.
        seq: usize,
        /// Sequences in the cache.
        sequences: usize,
    },
    /// A cache used with an attention configuration it was not made for.
    #[error("the KV cache was made for {what} {cache}, the attention uses {attention}")]
    CacheMismatch {
        /// What differs (`"kernel"`, `"pipeline"`, `"head_dim"`, ...).
        what: &'static str,
        /// The cache's value.
        cache: String,
        /// The attention's value.
        attention: String,
    },
    /// A cached sequence shorter than the queries that are to attend to it.
    #[error("sequence {seq} holds {len} tokens, fewer than the {queries} queries")]
    CacheTooShort {
        /// The sequence.
        seq: usize,
        /// Its cached tokens.
        len: usize,
        /// Query rows given.
        queries: usize,
    },
    /// The ARM ComputeLibrary backend is not part of this build.
    #[error("the ACL backend is unavailable: {0}")]
    AclUnavailable(String),
    /// ARM ComputeLibrary reported an error (validation status or a caught C++ exception).
    #[error("ACL: {0}")]
    Acl(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::InvalidParameter`] for `value`.
pub(crate) fn invalid<T>(
    name: &'static str,
    value: impl std::fmt::Display,
    expected: &'static str,
) -> Result<T> {
    Err(Error::InvalidParameter {
        name,
        value: value.to_string(),
        expected,
    })
}

/// An [`Error::LengthMismatch`] unless `found == expected`.
pub(crate) fn check_len(tensor: &'static str, expected: usize, found: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            tensor,
            expected,
            found,
        })
    }
}

/// `a * b`, or [`Error::SizeOverflow`].
pub(crate) fn mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::SizeOverflow { what })
}
