//! The command's error type for its own modules (.npy files, seeded data, accuracy reports),
//! and the conversions from the library's errors. Commands add context with `anyhow`.

/// Errors of the command's modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a `.npy` file.
    #[error("npy: {0}")]
    Npy(String),
    /// A parameter outside its range.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// Shapes or lengths that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// An error of the library.
    #[error(transparent)]
    Lib(#[from] intattention::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The command modules' result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape(msg.into()))
}

pub(crate) fn param_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Param(msg.into()))
}
