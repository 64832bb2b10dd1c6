//! The IntAttention settings a command may override (`--bits`, `--paper`, `--quant` and the
//! scale options), shared by `bench`, `run` and `accuracy`. Each is an override: what is not
//! given stays the library's default for the finish (docs/numerics.md section 6), so that the
//! commands measure what a user of `Attention::new` gets.

use std::str::FromStr;

use clap::Args;
use intattention::{Attention, Granularity, Quantization};

/// A named quantization scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// One scale per tensor (the paper's).
    Tensor,
    /// `Quantization::FINE`: per-row Q, per-head K, per-head per-channel smoothed V.
    Fine,
}

impl Preset {
    pub fn quantization(self) -> Quantization {
        match self {
            Preset::Tensor => Quantization::PER_TENSOR,
            Preset::Fine => Quantization::FINE,
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensor" => Ok(Preset::Tensor),
            "fine" => Ok(Preset::Fine),
            _ => Err(format!("unknown scheme '{s}' (tensor or fine)")),
        }
    }
}

/// Overrides of the IntAttention settings; an empty one changes nothing.
#[derive(Args, Clone, Copy, Debug, Default, PartialEq)]
pub struct Settings {
    /// The published method's settings whatever the finish: b = 5, c = 6.6, per-tensor scales
    /// (later options still override them).
    #[arg(long)]
    pub paper: bool,
    /// IndexSoftmax table bits b, 4..=8 (intattn only) [default: 7 for deferred, else 5].
    #[arg(long)]
    pub bits: Option<u32>,
    /// Quantization scheme of the integer pipelines: tensor or fine [default: fine for intattn
    /// deferred, else tensor].
    #[arg(long, value_name = "SCHEME")]
    pub quant: Option<Preset>,
    /// Scales of Q: tensor, head or row (overrides the scheme).
    #[arg(long = "q-scales")]
    pub q_scales: Option<Granularity>,
    /// Scales of K and V: tensor or head (overrides the scheme).
    #[arg(long = "kv-scales")]
    pub kv_scales: Option<Granularity>,
    /// Subtract each head's mean key before quantizing K: true or false (a bare flag is true).
    #[arg(long = "smooth-k", num_args = 0..=1, default_missing_value = "true")]
    pub smooth_k: Option<bool>,
    /// One V scale per channel: true or false (a bare flag is true).
    #[arg(long = "v-channels", num_args = 0..=1, default_missing_value = "true")]
    pub v_channels: Option<bool>,
    /// Subtract each head's mean value before quantizing V and add it back to the output:
    /// true or false (a bare flag is true).
    #[arg(long = "smooth-v", num_args = 0..=1, default_missing_value = "true")]
    pub smooth_v: Option<bool>,
}

impl Settings {
    /// The paper's settings (`--paper`).
    pub const PAPER: Settings = Settings {
        paper: true,
        bits: None,
        quant: None,
        q_scales: None,
        kv_scales: None,
        smooth_k: None,
        v_channels: None,
        smooth_v: None,
    };

    /// `attn` with these overrides (its pipeline and finish must be set already: the defaults
    /// the overrides start from depend on them).
    pub fn apply(&self, mut attn: Attention) -> Attention {
        if self.paper {
            attn = attn.with_paper_settings();
        }
        if let Some(b) = self.bits {
            attn = attn.with_table_bits(b);
        }
        let scales = self.quant.is_some()
            || self.q_scales.is_some()
            || self.kv_scales.is_some()
            || self.smooth_k.is_some()
            || self.v_channels.is_some()
            || self.smooth_v.is_some();
        if scales {
            let mut q = self
                .quant
                .map_or_else(|| attn.quantization(), Preset::quantization);
            if let Some(g) = self.q_scales {
                q = q.with_q(g);
            }
            if let Some(g) = self.kv_scales {
                q = q.with_kv(g);
            }
            if let Some(on) = self.smooth_k {
                q = q.with_smooth_k(on);
            }
            if let Some(on) = self.v_channels {
                q = q.with_v_per_channel(on);
            }
            if let Some(on) = self.smooth_v {
                q = q.with_smooth_v(on);
            }
            attn = attn.with_quantization(q);
        }
        attn
    }
}

/// A quantization scheme in words, as reports print it: `q row, kv head, v channel,
/// smooth v` (`tensor` for the paper's).
pub fn describe(q: &Quantization) -> String {
    if *q == Quantization::PER_TENSOR {
        return "tensor".to_string();
    }
    let g = granularity_name;
    let mut parts = vec![format!("q {}", g(q.q)), format!("kv {}", g(q.kv))];
    if q.v_per_channel {
        parts.push("v channel".to_string());
    }
    if q.smooth_k {
        parts.push("smooth k".to_string());
    }
    if q.smooth_v {
        parts.push("smooth v".to_string());
    }
    parts.join(", ")
}

/// A granularity as the options spell it (`tensor`, `head`, `row`).
pub fn granularity_name(g: Granularity) -> &'static str {
    match g {
        Granularity::PerTensor => "tensor",
        Granularity::PerHead => "head",
        Granularity::PerRow => "row",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use intattention::{Pipeline, SoftmaxVariant};

    #[test]
    fn empty_settings_keep_each_finish_default() {
        for v in SoftmaxVariant::ALL {
            let a = Attention::new(Pipeline::IntAttention).with_variant(v);
            let b = Settings::default().apply(a.clone());
            assert_eq!(a.quantization(), b.quantization());
            assert_eq!(a.table_bits(), b.table_bits());
        }
    }

    #[test]
    fn overrides_start_from_the_finish_default() {
        let s = Settings {
            smooth_v: Some(false),
            ..Settings::default()
        };
        let a = s.apply(Attention::new(Pipeline::IntAttention));
        assert_eq!(a.quantization(), Quantization::FINE.with_smooth_v(false));
        let p = Settings {
            bits: Some(6),
            ..Settings::PAPER
        }
        .apply(Attention::new(Pipeline::IntAttention));
        assert_eq!(
            (p.table_bits(), p.quantization()),
            (6, Quantization::PER_TENSOR)
        );
        assert_eq!(
            describe(&Quantization::FINE),
            "q row, kv head, v channel, smooth v"
        );
    }
}
