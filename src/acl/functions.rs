//! ACL operations, configured once on tensors and run many times.
//!
//! Every constructor goes through the shim, which calls ACL's `validate()` before
//! `configure()` and turns a rejected configuration into [`Error::Acl`] with ACL's message.
//! A [`Function`] keeps its tensors' shim handles alive, and its lifetime `'buf` ends no later
//! than any borrowed buffer behind them.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

use super::ffi;
use super::tensor::{RawTensor, Tensor};
use super::{param_err, Error, Result};
use crate::ops::softmax::{IndexSoftmaxParams, SoftmaxVariant};

/// Options of the two GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmOptions {
    /// B holds the same values on every run, so ACL may pack it once on the first run and
    /// reuse the packed copy. Leave false when B changes (attention's K and V): with it set,
    /// later runs would silently use the first run's B.
    pub b_constant: bool,
}

impl GemmOptions {
    fn to_ffi(self) -> ffi::ia_gemm_options {
        ffi::ia_gemm_options {
            b_constant: self.b_constant as u8,
        }
    }
}

/// What a function is, for its setters' checks and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acl(&'static str),
    IndexSoftmax,
    Logits,
}

/// A configured ACL function (or one of the shim's out-of-tree kernels).
pub struct Function<'buf> {
    raw: NonNull<ffi::ia_function>,
    kind: Kind,
    /// Rows of the shim kernels (for row limits).
    rows: usize,
    /// Scheduler threads this function was configured for.
    threads: u32,
    // Dropped after `raw` is destroyed (see Drop), keeping the tensors alive until then.
    _tensors: Vec<Rc<RawTensor>>,
    _buf: PhantomData<&'buf mut [u8]>,
}

impl Drop for Function<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful create and is destroyed once, here,
        // before `_tensors` releases the tensors it refers to.
        unsafe {
            ffi::ia_function_destroy(self.raw.as_ptr());
        }
    }
}

type Create<'a> = &'a mut dyn FnMut(*mut *mut ffi::ia_function) -> ffi::ia_status;

impl<'buf> Function<'buf> {
    /// Configures under the ACL lock, with the scheduler at the requested thread count.
    fn create(
        kind: Kind,
        tensors: &[&Tensor<'buf>],
        rows: usize,
        create: Create<'_>,
    ) -> Result<Self> {
        let mut g = super::lock();
        let threads = g.requested();
        g.use_threads(threads)?;
        let mut raw = std::ptr::null_mut();
        ffi::check(create(&mut raw))?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::Acl(format!("{kind:?}: the shim returned no function")))?;
        Ok(Function {
            raw,
            kind,
            rows,
            threads,
            _tensors: tensors.iter().map(|t| t.raw().clone()).collect(),
            _buf: PhantomData,
        })
    }

    /// `d = alpha * a x b` in F32 or F16 (NEGEMM); a `[M, K]`, b `[K, N]`, d `[M, N]`.
    pub fn gemm(
        a: &Tensor<'buf>,
        b: &Tensor<'buf>,
        d: &Tensor<'buf>,
        alpha: f32,
        options: GemmOptions,
    ) -> Result<Self> {
        if !alpha.is_finite() {
            return param_err(format!("GEMM alpha must be finite, got {alpha}"));
        }
        let o = options.to_ffi();
        Function::create(Kind::Acl("NEGEMM"), &[a, b, d], 0, &mut |out| {
            // SAFETY: live tensor handles (borrowed for the call), a valid options struct and
            // out-pointer; the shim validates before configuring.
            unsafe {
                ffi::ia_gemm_create(
                    a.raw().as_ptr(),
                    b.raw().as_ptr(),
                    d.raw().as_ptr(),
                    alpha,
                    &o,
                    out,
                )
            }
        })
    }

    /// `d = (a - a.offset) x (b - b.offset)` exactly in S32 (NEGEMMLowpMatrixMultiplyCore, no
    /// output stage). a and b are QAsymm8 or QAsymm8Signed of the same signedness: ACL computes
    /// wrong results for mixed signedness, which the shim therefore refuses.
    pub fn gemm_lowp(
        a: &Tensor<'buf>,
        b: &Tensor<'buf>,
        d: &Tensor<'buf>,
        options: GemmOptions,
    ) -> Result<Self> {
        let o = options.to_ffi();
        Function::create(
            Kind::Acl("NEGEMMLowpMatrixMultiplyCore"),
            &[a, b, d],
            0,
            &mut |out| {
                // SAFETY: as in `gemm`.
                unsafe {
                    ffi::ia_gemmlowp_create(
                        a.raw().as_ptr(),
                        b.raw().as_ptr(),
                        d.raw().as_ptr(),
                        &o,
                        out,
                    )
                }
            },
        )
    }

    /// Softmax over the contiguous dimension of every row (NESoftmaxLayer, F32):
    /// `exp(beta (x - max)) / sum`.
    pub fn softmax(input: &Tensor<'buf>, output: &Tensor<'buf>, beta: f32) -> Result<Self> {
        Function::create(
            Kind::Acl("NESoftmaxLayer"),
            &[input, output],
            0,
            &mut |out| {
                // SAFETY: live tensor handles and a valid out-pointer.
                unsafe {
                    ffi::ia_softmax_create(input.raw().as_ptr(), output.raw().as_ptr(), beta, out)
                }
            },
        )
    }

    /// Type conversion with saturation (NECast).
    pub fn cast(input: &Tensor<'buf>, output: &Tensor<'buf>) -> Result<Self> {
        Function::unary("NECast", input, output, ffi::ia_cast_create)
    }

    /// F32 to QAsymm8 / QAsymm8Signed with the output's scale and offset (NEQuantizationLayer).
    pub fn quantize(input: &Tensor<'buf>, output: &Tensor<'buf>) -> Result<Self> {
        Function::unary(
            "NEQuantizationLayer",
            input,
            output,
            ffi::ia_quantize_create,
        )
    }

    /// QAsymm8 / QAsymm8Signed to F32 with the input's scale and offset (NEDequantizationLayer).
    pub fn dequantize(input: &Tensor<'buf>, output: &Tensor<'buf>) -> Result<Self> {
        Function::unary(
            "NEDequantizationLayer",
            input,
            output,
            ffi::ia_dequantize_create,
        )
    }

    /// Matrix transpose, `[R, C]` to `[C, R]` (NETranspose).
    pub fn transpose(input: &Tensor<'buf>, output: &Tensor<'buf>) -> Result<Self> {
        Function::unary("NETranspose", input, output, ffi::ia_transpose_create)
    }

    fn unary(
        name: &'static str,
        input: &Tensor<'buf>,
        output: &Tensor<'buf>,
        f: unsafe extern "C" fn(
            *mut ffi::ia_tensor,
            *mut ffi::ia_tensor,
            *mut *mut ffi::ia_function,
        ) -> ffi::ia_status,
    ) -> Result<Self> {
        Function::create(Kind::Acl(name), &[input, output], 0, &mut |out| {
            // SAFETY: live tensor handles and a valid out-pointer.
            unsafe { f(input.raw().as_ptr(), output.raw().as_ptr(), out) }
        })
    }

    /// IndexSoftmax (docs/numerics.md, section 3) over the rows of an S32 `[rows, cols]` matrix
    /// into U8 or QAsymm8 probabilities of the same shape, bit-identical to the crate's reference.
    /// `row_sums` (S32 or U32, `[rows]`) receives each row's sum of table values; Deferred needs
    /// it. The threshold can change between runs ([`Function::set_threshold`]).
    pub fn index_softmax(
        scores: &Tensor<'buf>,
        probs: &Tensor<'buf>,
        row_sums: Option<&Tensor<'buf>>,
        params: &IndexSoftmaxParams,
    ) -> Result<Self> {
        let lut = params.lut();
        let mut p = ffi::ia_index_softmax_params {
            threshold: params.threshold(),
            table_len: lut.entries().len() as u32,
            table: [0; 256],
            variant: match params.variant() {
                SoftmaxVariant::Normalized => ffi::IA_INDEX_SOFTMAX_NORMALIZED,
                SoftmaxVariant::Deferred => ffi::IA_INDEX_SOFTMAX_DEFERRED,
                SoftmaxVariant::PaperSim => ffi::IA_INDEX_SOFTMAX_PAPER_SIM,
            },
        };
        p.table[..lut.entries().len()].copy_from_slice(lut.entries());
        let rows = matrix_rows(scores);
        let mut tensors = vec![scores, probs];
        tensors.extend(row_sums);
        let sums = row_sums.map_or(std::ptr::null_mut(), |t| t.raw().as_ptr());
        Function::create(Kind::IndexSoftmax, &tensors, rows, &mut |out| {
            // SAFETY: live tensor handles (or null for no row sums), valid params and
            // out-pointer.
            unsafe {
                ffi::ia_index_softmax_create(
                    scores.raw().as_ptr(),
                    probs.raw().as_ptr(),
                    sums,
                    &p,
                    out,
                )
            }
        })
    }

    /// Logits in place on an F32 `[rows, cols]` matrix: multiplies by a scale that can change
    /// between runs ([`Function::set_logit_scale`]; 1 until set) and masks every row past its
    /// valid length ([`Function::set_row_limits`]) with -inf for ACL's softmax. A row with no
    /// valid entry becomes zeros (finite; its output is the caller's to zero).
    pub fn logits(scores: &Tensor<'buf>) -> Result<Self> {
        let rows = matrix_rows(scores);
        Function::create(Kind::Logits, &[scores], rows, &mut |out| {
            // SAFETY: a live tensor handle and a valid out-pointer.
            unsafe { ffi::ia_logits_create(scores.raw().as_ptr(), out) }
        })
    }

    /// Per-row valid lengths (a prefix of every row takes part) for IndexSoftmax and logits;
    /// `None` makes every row whole again.
    pub fn set_row_limits(&mut self, valid: Option<&[usize]>) -> Result<()> {
        if !matches!(self.kind, Kind::IndexSoftmax | Kind::Logits) {
            return param_err(format!("{:?} takes no row limits", self.kind));
        }
        let limits: Option<Vec<u32>> = match valid {
            None => None,
            Some(v) => {
                if v.len() != self.rows {
                    return param_err(format!("{} row limits for {} rows", v.len(), self.rows));
                }
                Some(
                    v.iter()
                        .map(|&n| {
                            u32::try_from(n)
                                .map_err(|_| Error::Acl(format!("row limit {n} is too large")))
                        })
                        .collect::<Result<_>>()?,
                )
            }
        };
        let (ptr, len) = limits
            .as_ref()
            .map_or((std::ptr::null(), 0), |l| (l.as_ptr(), l.len() as u64));
        // SAFETY: a live function handle; `ptr` is null with len 0 or points to `len` u32s
        // that the shim copies during the call.
        ffi::check(unsafe { ffi::ia_function_set_row_limits(self.raw.as_ptr(), ptr, len) })
    }

    /// Sets IndexSoftmax's threshold T for the next runs.
    pub fn set_threshold(&mut self, threshold: i32) -> Result<()> {
        if self.kind != Kind::IndexSoftmax {
            return param_err(format!("{:?} has no threshold", self.kind));
        }
        // SAFETY: a live function handle; the shim range-checks T.
        ffi::check(unsafe { ffi::ia_index_softmax_set_threshold(self.raw.as_ptr(), threshold) })
    }

    /// Sets the logits' scale for the next runs.
    pub fn set_logit_scale(&mut self, scale: f32) -> Result<()> {
        if self.kind != Kind::Logits {
            return param_err(format!("{:?} has no logit scale", self.kind));
        }
        // SAFETY: a live function handle; the shim rejects a non-finite scale.
        ffi::check(unsafe { ffi::ia_logits_set_scale(self.raw.as_ptr(), scale) })
    }

    /// Runs the function once, on the tensors' current contents, with the thread count it was
    /// configured for. Owned tensors without memory get it now.
    pub fn run(&mut self) -> Result<()> {
        let mut g = super::lock();
        g.use_threads(self.threads)?;
        // SAFETY: a live function handle whose tensors are alive (held in `_tensors`), and
        // whose borrowed buffers outlive `'buf`; ACL's scheduler is serialised by the lock.
        ffi::check(unsafe { ffi::ia_function_run(self.raw.as_ptr()) })
    }
}

/// Rows of a matrix tensor (`[rows, cols]`; a vector is one row).
fn matrix_rows(t: &Tensor<'_>) -> usize {
    let dims = &t.desc().dims;
    if dims.len() >= 2 {
        dims[dims.len() - 2]
    } else {
        1
    }
}
