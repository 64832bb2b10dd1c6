//! The per-row softmax of the integer pipelines (docs/numerics.md, sections 3 and 5): the one
//! function every schedule calls for a row of scores, so that they agree bit for bit.

use crate::error::Result;
use crate::kernels::KernelImpl;
use crate::lut::{threshold_of_checked, threshold_paper_sim, Lut, MAX_THRESHOLD};
use crate::ops::softmax::SoftmaxVariant;
use crate::pipeline::Pipeline;

/// How a row's scores become probabilities.
pub(crate) enum Soft {
    /// IntAttention.
    Index {
        lut: Box<Lut>,
        variant: SoftmaxVariant,
        clip: f32,
    },
    /// INT8 with a float softmax.
    Float,
}

/// What a row needs besides its scores: the threshold of IndexSoftmax, or the logit scale of
/// the float softmax.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RowParam {
    pub threshold: i32,
    pub logit_scale: f32,
}

/// The row softmax of one call.
pub(crate) struct RowSoftmax {
    pub soft: Soft,
    /// The logit scale `1/sqrt(d)` or the caller's.
    pub scale: f32,
}

impl RowSoftmax {
    /// The softmax of `pipeline` (INT8 or IntAttention) as an attention call configures it.
    pub fn new(attn: &super::Attention, head_dim: usize) -> Result<RowSoftmax> {
        let soft = match attn.pipeline() {
            Pipeline::IntAttention => Soft::Index {
                lut: Box::new(Lut::new(attn.table_bits(), attn.clip())?),
                variant: attn.variant(),
                clip: attn.clip(),
            },
            _ => Soft::Float,
        };
        Ok(RowSoftmax {
            soft,
            scale: attn.softmax_scale(head_dim),
        })
    }

    /// The parameter of a row whose queries have scale `s_q`, against keys of scale `s_k`:
    /// `T = round_half_up(c / (s_q s_k scale))` (the paper-simulation rule for PaperSim), or
    /// the float logit scale `s_q s_k scale`.
    pub fn param(&self, s_q: f32, s_k: f32) -> RowParam {
        match &self.soft {
            Soft::Index { variant, clip, .. } => {
                // Scales here are finite and non-negative, the softmax scale positive and the
                // clip checked by `Lut::new`: the paper-simulation rule's error arm is never
                // taken, and would mean "no scale", i.e. the largest threshold.
                let threshold = match variant {
                    SoftmaxVariant::PaperSim => {
                        threshold_paper_sim(*clip, s_q, s_k, self.scale).unwrap_or(MAX_THRESHOLD)
                    }
                    _ => threshold_of_checked(*clip, s_q, s_k, self.scale),
                };
                RowParam {
                    threshold,
                    logit_scale: 0.0,
                }
            }
            Soft::Float => RowParam {
                threshold: 1,
                logit_scale: (s_q as f64 * s_k as f64 * self.scale as f64) as f32,
            },
        }
    }

    /// The softmax of one score row whose first `valid` keys take part, into the u8 row
    /// `prow` (as long as `srow`). `exp2(j)` is the power-of-two exponent of key `j`'s scale
    /// (0 except for cached keys, see docs/numerics.md section 7); for IndexSoftmax the caller
    /// has already made such rows relative to their maximum. Returns the divisor of the row's
    /// O32 (255 when P carries scale 1/255, the row sum for Deferred) and whether every float
    /// logit was finite.
    pub fn row(
        &self,
        kernel: &dyn KernelImpl,
        srow: &[i32],
        valid: usize,
        prow: &mut [u8],
        param: RowParam,
        exp2: impl Fn(usize) -> u8,
        frow: &mut Vec<f32>,
    ) -> (u32, bool) {
        match &self.soft {
            Soft::Index { lut, variant, .. } => {
                let t = param.threshold;
                let div = match variant {
                    SoftmaxVariant::PaperSim => {
                        let keep: Vec<bool> = (0..srow.len()).map(|j| j < valid).collect();
                        kernel.paper_sim_row(srow, &keep, lut, t, prow);
                        255
                    }
                    SoftmaxVariant::Normalized => {
                        let sum = kernel.index_softmax_row(srow, valid, lut, t, prow);
                        kernel.normalize_row(prow, sum);
                        255
                    }
                    _ => kernel.index_softmax_row(srow, valid, lut, t, prow),
                };
                (div, true)
            }
            Soft::Float => {
                frow.clear();
                frow.resize(srow.len(), 0.0);
                let ls = param.logit_scale;
                let mut ok = ls.is_finite();
                for (j, (f, &x)) in frow.iter_mut().zip(srow).enumerate().take(valid) {
                    *f = x as f32 * ls;
                    let e = exp2(j);
                    if e > 0 {
                        *f *= (e as f32).exp2();
                    }
                    ok &= f.is_finite();
                }
                kernel.softmax_f32_row(frow, valid);
                for (pv, &f) in prow.iter_mut().zip(frow.iter()) {
                    *pv = (f * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
                }
                (255, ok)
            }
        }
    }
}
