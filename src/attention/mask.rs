//! Which keys each query row sees: the key count of every batch row (key padding, or a cached
//! sequence's length) and the causal limit. Visible keys are always a prefix of the keys.

/// The masks of one call.
#[derive(Clone, Debug)]
pub(crate) struct Visibility {
    /// Query rows per head.
    pub q_len: usize,
    /// Per batch row: keys present (`key_lens`, or the cached length).
    pub keys: Vec<usize>,
    /// Per batch row: the key length the causal mask is relative to (`kv_len`, or the cached
    /// length).
    pub causal_len: Vec<usize>,
    pub causal: bool,
}

impl Visibility {
    /// Number of keys query row `i` of batch row `b` attends to: keys `0..valid(b, i)`.
    pub fn valid(&self, b: usize, i: usize) -> usize {
        let n = self.keys[b];
        if self.causal {
            // j is masked when j > i + (len - q_len): keep j < i + len - q_len + 1.
            n.min((i + self.causal_len[b] + 1).saturating_sub(self.q_len))
        } else {
            n
        }
    }

    /// The longest key count of any batch row.
    pub fn max_keys(&self) -> usize {
        self.keys.iter().copied().max().unwrap_or(0)
    }
}
