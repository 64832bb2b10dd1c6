//! [`AttnShape`]: the sizes of one attention call and the checks they must pass.

use crate::error::{mul, Error, Result};
use crate::kernels::MAX_K_S8S8;

/// Shapes: Q is `[batch, heads, q_len, head_dim]`, K and V are `[batch, kv_heads, kv_len,
/// head_dim]`, the output is shaped like Q. Query head `h` reads key/value head
/// `h / (heads / kv_heads)` (grouped-query attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttnShape {
    /// Batch rows (sequences).
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query rows per head.
    pub q_len: usize,
    /// Keys per key/value head.
    pub kv_len: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl AttnShape {
    /// Self-attention with as many key/value heads as query heads and `len` queries and keys.
    pub fn new(batch: usize, heads: usize, len: usize, head_dim: usize) -> Self {
        AttnShape {
            batch,
            heads,
            kv_heads: heads,
            q_len: len,
            kv_len: len,
            head_dim,
        }
    }

    /// The same shape with `kv_heads` key/value heads (grouped-query attention).
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.kv_heads = kv_heads;
        self
    }

    /// The same shape with `q_len` queries (decode: 1).
    pub fn with_q_len(mut self, q_len: usize) -> Self {
        self.q_len = q_len;
        self
    }

    /// The same shape with `kv_len` keys.
    pub fn with_kv_len(mut self, kv_len: usize) -> Self {
        self.kv_len = kv_len;
        self
    }

    /// Elements of Q (and of the output); saturates on overflow ([`AttnShape::validate`]
    /// rejects such shapes).
    pub fn q_elems(&self) -> usize {
        [self.batch, self.heads, self.q_len, self.head_dim]
            .iter()
            .fold(1usize, |a, &x| a.saturating_mul(x))
    }

    /// Elements of K (and of V); saturates on overflow.
    pub fn kv_elems(&self) -> usize {
        [self.batch, self.kv_heads, self.kv_len, self.head_dim]
            .iter()
            .fold(1usize, |a, &x| a.saturating_mul(x))
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Checks that every dimension is at least 1, `kv_heads` divides `heads`, tensor sizes fit
    /// `usize`, and `head_dim` keeps i32 scores exact.
    ///
    /// # Errors
    /// [`Error::ZeroDimension`], [`Error::HeadsNotDivisible`], [`Error::SizeOverflow`],
    /// [`Error::LimitExceeded`].
    pub fn validate(&self) -> Result<()> {
        let dims = [
            ("batch", self.batch),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("q_len", self.q_len),
            ("kv_len", self.kv_len),
            ("head_dim", self.head_dim),
        ];
        if let Some((dim, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(Error::ZeroDimension { dim });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsNotDivisible {
                heads: self.heads,
                kv_heads: self.kv_heads,
            });
        }
        let q = mul("Q", mul("Q", self.batch, self.heads)?, self.q_len)?;
        mul("Q", q, self.head_dim)?;
        let kv = mul("K", mul("K", self.batch, self.kv_heads)?, self.kv_len)?;
        mul("K", kv, self.head_dim)?;
        if self.head_dim > MAX_K_S8S8 {
            return Err(Error::LimitExceeded {
                what: "head_dim",
                value: self.head_dim,
                limit: MAX_K_S8S8,
                reason: "i32 scores could overflow",
            });
        }
        Ok(())
    }
}
