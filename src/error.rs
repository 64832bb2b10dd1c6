//! The crate's one error type: every public operation reports bad input through it.

/// Errors returned by every public operation of the crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NaN or an infinity in an input tensor.
    #[error("{what} contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
    /// Shapes or buffer lengths that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// A parameter outside its documented range.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// Input that a kernel cannot compute exactly (for example a reduction that would overflow).
    #[error("unsupported input: {0}")]
    Unsupported(String),
    /// The ARM ComputeLibrary backend is not part of this build.
    #[error("the ACL backend is unavailable: {0}")]
    AclUnavailable(String),
    /// ARM ComputeLibrary reported an error (validation status or a caught C++ exception).
    #[error("ACL: {0}")]
    Acl(String),
    /// Reading or writing a `.npy` file.
    #[error("npy: {0}")]
    Npy(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape(msg.into()))
}

pub(crate) fn param_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Param(msg.into()))
}
