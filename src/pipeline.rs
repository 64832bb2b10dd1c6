//! The four pipelines of the numerical contract (docs/numerics.md, section 5), as a plain enum
//! every layer may name.

use std::fmt;
use std::str::FromStr;

use crate::error::{invalid, Error, Result};

/// Which arithmetic an attention call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pipeline {
    /// 0: f32 end to end.
    Fp32,
    /// 1: f16 GEMMs, f32 softmax between casts.
    Fp16,
    /// 2: int8 GEMMs with a float softmax, P quantized to u8.
    Int8,
    /// 3: int8 GEMMs with IndexSoftmax (the paper's pipeline).
    IntAttention,
}

impl Pipeline {
    /// Every pipeline, in the paper's numbering.
    pub const ALL: [Pipeline; 4] = [
        Pipeline::Fp32,
        Pipeline::Fp16,
        Pipeline::Int8,
        Pipeline::IntAttention,
    ];

    /// The short name used by the CLI and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Pipeline::Fp32 => "fp32",
            Pipeline::Fp16 => "fp16",
            Pipeline::Int8 => "int8",
            Pipeline::IntAttention => "intattn",
        }
    }

    /// Whether the pipeline quantizes Q, K, V to int8.
    pub fn is_integer(self) -> bool {
        matches!(self, Pipeline::Int8 | Pipeline::IntAttention)
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pipeline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "0" | "fp32" | "f32" => Ok(Pipeline::Fp32),
            "1" | "fp16" | "f16" => Ok(Pipeline::Fp16),
            "2" | "int8" | "i8" => Ok(Pipeline::Int8),
            "3" | "intattn" | "intattention" | "int" => Ok(Pipeline::IntAttention),
            _ => invalid("pipeline", s, "0-3, fp32, fp16, int8 or intattn"),
        }
    }
}
