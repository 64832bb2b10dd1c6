//! [`KvCache`]: keys and values kept between attention calls, for decoding (one new token per
//! sequence per step) and chunked prefill, one cache per layer.
//!
//! Integer pipelines keep int8 keys and values *already packed in the kernel's layout*, in
//! pages of [`PAGE`] tokens per sequence and key/value head, so a call reads them without
//! quantizing or packing anything again, and appending a token writes only that token's bytes
//! (capacity grows by whole pages: nothing is ever copied or rewritten). The scales are chosen
//! so that old tokens never change (docs/numerics.md, section 7): each head of each sequence
//! fixes a base scale at its first non-zero append, and every token carries a power-of-two
//! exponent `e` in `0..=15` with scale `base * 2^e`, the smallest that holds the token without
//! clamping. The integer results stay exact: scores and P x V terms of a token are shifted
//! left by its exponent, in i64. Float pipelines keep f32 (fp32) or f16 (fp16) pages.

use half::f16;

use crate::attention::{column_maxima, unit_mean, v_slice_scales, Quantization};
use crate::attention::{Attention, AttnShape, Workspace};
use crate::error::{check_len, invalid, Error, Result};
use crate::exec::{Executor, Par};
use crate::kernels::{Kernel, KernelImpl, LayoutId, PackedB};
use crate::memory::AlignedVec;
use crate::ops::quant::all_finite;
use crate::ops::quant::{
    check_finite, divisors_of, max_abs_bits, quantize_with_divisors, quantize_with_scale,
    scale_of_max_bits,
};
use crate::pipeline::Pipeline;
use crate::tensor::TensorView;

/// Tokens per page.
pub const PAGE: usize = 256;

/// Largest per-token exponent: a token up to `2^15` times larger than the first appended ones
/// is stored without clamping.
pub const MAX_EXP: u8 = 15;

/// One page of one head of one sequence.
#[derive(Clone)]
enum Page {
    Int {
        /// `PAGE` keys packed as the B of Q K^T.
        k: PackedB,
        /// `PAGE` values packed as the B of P x V.
        v: PackedB,
        k_exp: Vec<u8>,
        v_exp: Vec<u8>,
        /// Largest exponent written (0: the page needs no shifts).
        k_max: u8,
        v_max: u8,
    },
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
}

/// One key/value head of one sequence.
#[derive(Clone, Default)]
struct Head {
    /// Base scale of the keys (0 until the first non-zero append).
    k_base: f32,
    /// Base scales of the values: one, or one per channel (empty until the first non-zero
    /// append).
    v_base: Vec<f32>,
    /// The mean key subtracted before quantizing (empty without smoothing or before the first
    /// append).
    mean: Vec<f32>,
    /// The mean value subtracted before quantizing and added back to outputs (empty without
    /// V smoothing or before the first append).
    v_mean: Vec<f32>,
    pages: Vec<Page>,
}

#[derive(Clone, Default)]
struct Seq {
    len: usize,
    heads: Vec<Head>,
}

/// How the cache stores tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    /// int8, packed in `kernel`'s layout.
    Int {
        layout: LayoutId,
    },
    F32,
    F16,
}

/// The keys and values of a batch of sequences for one attention layer (see the module docs).
#[derive(Clone)]
pub struct KvCache {
    store: Store,
    pipeline: Pipeline,
    kernel: Kernel,
    executor: Executor,
    kv_heads: usize,
    head_dim: usize,
    quant: Quantization,
    seqs: Vec<Seq>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("pipeline", &self.pipeline)
            .field("kernel", &self.kernel.name())
            .field("kv_heads", &self.kv_heads)
            .field("head_dim", &self.head_dim)
            .field("lens", &self.lens())
            .finish()
    }
}

impl KvCache {
    /// An empty cache of `sequences` sequences for attention configured as `attn` (its
    /// pipeline, kernel, executor and K smoothing) with `kv_heads` key/value heads of
    /// `head_dim`.
    ///
    /// # Errors
    /// [`Error::ZeroDimension`] for a zero size; [`Error::LimitExceeded`] for a head dimension
    /// past the i32 score limit.
    pub fn new(
        attn: &Attention,
        sequences: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<KvCache> {
        AttnShape::new(sequences, kv_heads, 1, head_dim).validate()?;
        let kernel = attn.kernel();
        let store = match attn.pipeline() {
            Pipeline::Fp32 => Store::F32,
            Pipeline::Fp16 => Store::F16,
            _ => Store::Int {
                layout: kernel.imp().layout(),
            },
        };
        Ok(KvCache {
            store,
            pipeline: attn.pipeline(),
            kernel,
            executor: attn.executor().clone(),
            kv_heads,
            head_dim,
            quant: attn.quantization(),
            seqs: vec![
                Seq {
                    len: 0,
                    heads: vec![Head::default(); kv_heads],
                };
                sequences
            ],
        })
    }

    /// Sequences in the cache.
    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The pipeline the cache stores tokens for.
    pub fn pipeline(&self) -> Pipeline {
        self.pipeline
    }

    /// Tokens cached for each sequence.
    pub fn lens(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.len).collect()
    }

    /// Tokens cached for sequence `seq`.
    ///
    /// # Errors
    /// [`Error::SequenceOutOfRange`].
    pub fn len(&self, seq: usize) -> Result<usize> {
        Ok(self.seq(seq)?.len)
    }

    /// Whether no sequence holds a token.
    pub fn is_empty(&self) -> bool {
        self.seqs.iter().all(|s| s.len == 0)
    }

    /// Bytes of memory the cache holds (payload, exponents, page padding).
    pub fn bytes(&self) -> usize {
        self.seqs
            .iter()
            .flat_map(|s| &s.heads)
            .map(|h| {
                (h.mean.len() + h.v_mean.len() + h.v_base.len()) * 4
                    + h.pages
                        .iter()
                        .map(|p| match p {
                            Page::Int {
                                k, v, k_exp, v_exp, ..
                            } => k.bytes() + v.bytes() + k_exp.len() + v_exp.len(),
                            Page::F32 { k, v } => 4 * (k.len() + v.len()),
                            Page::F16 { k, v } => 2 * (k.len() + v.len()),
                        })
                        .sum::<usize>()
            })
            .sum()
    }

    /// Appends `n` tokens to sequence `seq`: `k` and `v` are `[1, kv_heads, n, head_dim]`
    /// (any strides). Integer caches quantize each token once, here.
    ///
    /// # Errors
    /// [`Error::SequenceOutOfRange`], [`Error::DimensionMismatch`] for views of another
    /// shape, [`Error::NonFinite`] for NaN or infinity, [`Error::InvalidParameter`] for fp16
    /// caches and values outside the f16 range, [`Error::Allocation`] when pages cannot be had.
    /// On error the cache is unchanged.
    pub fn append(
        &mut self,
        seq: usize,
        k: TensorView<'_, f32>,
        v: TensorView<'_, f32>,
    ) -> Result<()> {
        self.seq(seq)?;
        self.check_new(&k, &v, 1)?;
        let n = k.dims()[2];
        let start = self.seqs[seq].len;
        let heads: Vec<(usize, &mut Head)> = self.seqs[seq].heads.iter_mut().enumerate().collect();
        let ctx = AppendCtx::of(self.store, self.kernel, self.head_dim, self.quant);
        let results = self.executor.run(|par: Par| {
            par.map(heads, |(g, head)| {
                ctx.append(head, start, n, |i| k.row(0, g, i), |i| v.row(0, g, i))
            })
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        self.seqs[seq].len += n;
        Ok(())
    }

    /// Appends `n` tokens to every sequence: `k` and `v` are `[sequences, kv_heads, n,
    /// head_dim]` (a decoding step appends one token per sequence).
    ///
    /// # Errors
    /// As [`KvCache::append`]; on error the cache is unchanged.
    pub fn append_all(&mut self, k: TensorView<'_, f32>, v: TensorView<'_, f32>) -> Result<()> {
        self.check_new(&k, &v, self.seqs.len())?;
        let n = k.dims()[2];
        let ctx = AppendCtx::of(self.store, self.kernel, self.head_dim, self.quant);
        let mut work = Vec::new();
        for (b, s) in self.seqs.iter_mut().enumerate() {
            let start = s.len;
            for (g, head) in s.heads.iter_mut().enumerate() {
                work.push((b, g, start, head));
            }
        }
        let results = self.executor.run(|par: Par| {
            par.map(work, |(b, g, start, head)| {
                ctx.append(head, start, n, |i| k.row(b, g, i), |i| v.row(b, g, i))
            })
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for s in &mut self.seqs {
            s.len += n;
        }
        Ok(())
    }

    /// Drops the tokens of sequence `seq` past `len` (speculative decoding rolls back this
    /// way); whole pages past it are freed. Scales stay: tokens appended later are quantized
    /// as if the dropped ones had never been there, unless `len` is 0, which resets the
    /// sequence.
    ///
    /// # Errors
    /// [`Error::SequenceOutOfRange`]; [`Error::InvalidParameter`] for `len` past the cached
    /// length.
    pub fn truncate(&mut self, seq: usize, len: usize) -> Result<()> {
        let s = self.seq_mut(seq)?;
        if len > s.len {
            return invalid("truncate length", len, "at most the cached length");
        }
        if len == 0 {
            return self.reset(seq);
        }
        let s = &mut self.seqs[seq];
        s.len = len;
        for h in &mut s.heads {
            h.pages.truncate(len.div_ceil(PAGE));
            // Exponents past `len` in the last page no longer count.
            if let Some(Page::Int {
                k_exp,
                v_exp,
                k_max,
                v_max,
                ..
            }) = h.pages.last_mut()
            {
                let used = len - (len - 1) / PAGE * PAGE;
                k_exp[used..].fill(0);
                v_exp[used..].fill(0);
                *k_max = k_exp.iter().copied().max().unwrap_or(0);
                *v_max = v_exp.iter().copied().max().unwrap_or(0);
            }
        }
        Ok(())
    }

    /// Empties sequence `seq`, its scales included.
    ///
    /// # Errors
    /// [`Error::SequenceOutOfRange`].
    pub fn reset(&mut self, seq: usize) -> Result<()> {
        let kv = self.kv_heads;
        let s = self.seq_mut(seq)?;
        *s = Seq {
            len: 0,
            heads: vec![Head::default(); kv],
        };
        Ok(())
    }

    /// Empties every sequence.
    pub fn clear(&mut self) {
        for s in 0..self.seqs.len() {
            // In range by construction.
            let _ = self.reset(s);
        }
    }

    fn seq(&self, seq: usize) -> Result<&Seq> {
        self.seqs.get(seq).ok_or(Error::SequenceOutOfRange {
            seq,
            sequences: self.seqs.len(),
        })
    }

    fn seq_mut(&mut self, seq: usize) -> Result<&mut Seq> {
        let sequences = self.seqs.len();
        self.seqs
            .get_mut(seq)
            .ok_or(Error::SequenceOutOfRange { seq, sequences })
    }

    /// Checks new tokens `[batch, kv_heads, n, head_dim]` before anything is written.
    fn check_new(
        &self,
        k: &TensorView<'_, f32>,
        v: &TensorView<'_, f32>,
        batch: usize,
    ) -> Result<()> {
        let want = [batch, self.kv_heads, k.dims()[2], self.head_dim];
        for (view, name) in [(k, "K"), (v, "V")] {
            for (i, dim) in ["batch", "kv_heads", "tokens", "head_dim"]
                .iter()
                .enumerate()
            {
                if view.dims()[i] != want[i] {
                    return Err(Error::DimensionMismatch {
                        tensor: name,
                        dim,
                        expected: want[i],
                        found: view.dims()[i],
                    });
                }
            }
            if let Some(e) = crate::attention::non_finite_in(view, name) {
                return Err(e);
            }
            if self.store == Store::F16 {
                crate::attention::fp16_range(view, name)?;
            }
        }
        Ok(())
    }

    /// The engine's view of the cache for queries `q` (`[sequences, heads, q_len, d]`).
    pub(crate) fn engine_view<'c>(
        &'c self,
        attn: &Attention,
        q: TensorView<'_, f32>,
    ) -> Result<(
        AttnShape,
        crate::attention::Visibility,
        Vec<crate::attention::UnitRef<'c>>,
    )> {
        let shape = self.query_shape(attn, &q)?;
        let vis = self.visibility(attn, &shape);
        let units = self
            .seqs
            .iter()
            .flat_map(|s| {
                s.heads.iter().map(move |h| crate::attention::UnitRef {
                    chunks: h
                        .pages
                        .iter()
                        .enumerate()
                        .filter_map(|(i, p)| match p {
                            Page::Int {
                                k,
                                v,
                                k_exp,
                                v_exp,
                                k_max,
                                v_max,
                            } => Some(crate::attention::ChunkRef {
                                start: i * PAGE,
                                len: PAGE.min(s.len - i * PAGE),
                                cap: PAGE,
                                k,
                                v,
                                k_exp: (*k_max > 0).then_some(&k_exp[..]),
                                v_exp: (*v_max > 0).then_some(&v_exp[..]),
                            }),
                            _ => None,
                        })
                        .collect(),
                    s_k: h.k_base,
                    // Nothing non-zero appended yet: every value is stored as 0.
                    s_v: if h.v_base.is_empty() {
                        &[0.0]
                    } else {
                        &h.v_base
                    },
                    v_mean: &h.v_mean,
                    q_scales: Vec::new(),
                })
            })
            .collect();
        Ok((shape, vis, units))
    }

    /// The attention shape of queries `q` against this cache, after every check.
    fn query_shape(&self, attn: &Attention, q: &TensorView<'_, f32>) -> Result<AttnShape> {
        let [b, h, lq, d] = q.dims();
        if attn.pipeline() != self.pipeline {
            return Err(Error::CacheMismatch {
                what: "pipeline",
                cache: self.pipeline.to_string(),
                attention: attn.pipeline().to_string(),
            });
        }
        if let Store::Int { layout } = self.store {
            if attn.kernel().imp().layout() != layout {
                return Err(Error::CacheMismatch {
                    what: "kernel",
                    cache: self.kernel.name().to_string(),
                    attention: attn.kernel().name().to_string(),
                });
            }
        }
        let mismatch = |dim, expected, found| Error::DimensionMismatch {
            tensor: "Q",
            dim,
            expected,
            found,
        };
        if b != self.seqs.len() {
            return Err(mismatch("batch", self.seqs.len(), b));
        }
        if attn.key_lens().is_some() {
            return invalid(
                "key_lens",
                "given",
                "none with a KV cache (each sequence's cached length masks its keys)",
            );
        }
        if d != self.head_dim {
            return Err(mismatch("head_dim", self.head_dim, d));
        }
        let max_len = self.seqs.iter().map(|s| s.len).max().unwrap_or(0);
        let shape = AttnShape {
            batch: b,
            heads: h,
            kv_heads: self.kv_heads,
            q_len: lq,
            kv_len: max_len.max(1),
            head_dim: d,
        };
        shape.validate()?;
        if attn.causal() {
            if let Some((seq, s)) = self.seqs.iter().enumerate().find(|(_, s)| s.len < lq) {
                return Err(Error::CacheTooShort {
                    seq,
                    len: s.len,
                    queries: lq,
                });
            }
        }
        Ok(shape)
    }

    fn visibility(&self, attn: &Attention, shape: &AttnShape) -> crate::attention::Visibility {
        crate::attention::Visibility {
            q_len: shape.q_len,
            keys: self.lens(),
            causal_len: self.lens(),
            causal: attn.causal(),
        }
    }

    /// The float pipelines over the cache's pages, into `out` (shaped like Q).
    pub(crate) fn run_float(
        &self,
        attn: &Attention,
        q: TensorView<'_, f32>,
        out: crate::memory::Fresh<'_, f32>,
    ) -> Result<()> {
        use crate::attention::{float_finish, float_head, gather, HeadError};
        use std::sync::atomic::{AtomicBool, Ordering};
        let shape = self.query_shape(attn, &q)?;
        let vis = self.visibility(attn, &shape);
        if let Some(e) = crate::attention::non_finite_in(&q, "Q") {
            return Err(e);
        }
        if self.store == Store::F16 {
            crate::attention::fp16_range(&q, "Q")?;
        }
        let (lq, d) = (shape.q_len, shape.head_dim);
        let scale = attn.softmax_scale(d);
        let kernel = self.kernel.imp();
        let (overflow, failed, bad_out) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        );
        let tasks: Vec<_> = out.chunks(lq * d).into_iter().enumerate().collect();
        attn.executor().run(|par: Par| {
            par.for_each(tasks, |(bh, o)| {
                let o = o.zeroed();
                let (b, h) = (bh / shape.heads, bh % shape.heads);
                let head = &self.seqs[b].heads[h / shape.group()];
                let len = self.seqs[b].len;
                let r = match self.store {
                    Store::F16 => {
                        let pages = float_pages(head, len, |p| match p {
                            Page::F16 { k, v } => Some((&k[..], &v[..])),
                            _ => None,
                        });
                        float_head::<f16>(
                            kernel,
                            &gather(&q, b, h, lq),
                            &pages,
                            lq,
                            d,
                            scale,
                            |i| vis.valid(b, i),
                            o,
                        )
                    }
                    _ => {
                        let pages = float_pages(head, len, |p| match p {
                            Page::F32 { k, v } => Some((&k[..], &v[..])),
                            _ => None,
                        });
                        float_head::<f32>(
                            kernel,
                            &gather(&q, b, h, lq),
                            &pages,
                            lq,
                            d,
                            scale,
                            |i| vis.valid(b, i),
                            o,
                        )
                    }
                };
                match r {
                    Ok(()) => {
                        if !all_finite(o) {
                            bad_out.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(HeadError::Overflow) => overflow.store(true, Ordering::Relaxed),
                    Err(HeadError::Allocation) => failed.store(true, Ordering::Relaxed),
                }
            })
        });
        float_finish(
            attn.pipeline(),
            &shape,
            failed.into_inner(),
            overflow.into_inner(),
            bad_out.into_inner(),
        )
    }
}

/// The pages of a float head as the float pipeline reads them.
fn float_pages<'a, T>(
    head: &'a Head,
    len: usize,
    of: impl Fn(&'a Page) -> Option<(&'a [T], &'a [T])>,
) -> Vec<crate::attention::FloatPage<'a, T>> {
    head.pages
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (k, v) = of(p)?;
            let _ = len;
            Some(crate::attention::FloatPage {
                start: i * PAGE,
                cap: PAGE,
                k,
                v,
            })
        })
        .collect()
}

/// What an append needs besides the head it writes.
#[derive(Clone, Copy)]
struct AppendCtx {
    store: Store,
    kernel: &'static dyn KernelImpl,
    d: usize,
    quant: Quantization,
}

impl AppendCtx {
    fn of(store: Store, kernel: Kernel, d: usize, quant: Quantization) -> AppendCtx {
        AppendCtx {
            store,
            kernel: kernel.imp(),
            d,
            quant,
        }
    }

    /// Appends tokens `start..start + n` of one head (`k(i)`, `v(i)` give token `start + i`).
    fn append<'a>(
        &self,
        head: &mut Head,
        start: usize,
        n: usize,
        k: impl Fn(usize) -> &'a [f32],
        v: impl Fn(usize) -> &'a [f32],
    ) -> Result<()> {
        let d = self.d;
        if n == 0 {
            return Ok(());
        }
        // Pages first (fallibly), so that a failure leaves the head as it was.
        let pages_needed = (start + n).div_ceil(PAGE);
        let mut fresh = Vec::new();
        for _ in head.pages.len()..pages_needed {
            fresh.push(self.new_page()?);
        }
        let int = matches!(self.store, Store::Int { .. });
        // The means and smoothed rows are staged first, so that an error changes nothing.
        let (mut k_mean, mut v_mean) = (head.mean.clone(), head.v_mean.clone());
        if start == 0 && int {
            if self.quant.smooth_k {
                k_mean = unit_mean(&k, n, d);
            }
            if self.quant.smooth_v {
                v_mean = unit_mean(&v, n, d);
            }
        }
        let smooth = |row: &[f32], mean: &[f32]| -> Vec<f32> {
            if mean.is_empty() {
                row.to_vec()
            } else {
                row.iter().zip(mean).map(|(&x, &mu)| x - mu).collect()
            }
        };
        // Smoothed rows must stay finite: check before writing.
        let keys: Vec<Vec<f32>> = (0..n).map(|i| smooth(k(i), &k_mean)).collect();
        let values: Vec<Vec<f32>> = (0..n).map(|i| smooth(v(i), &v_mean)).collect();
        if keys
            .iter()
            .chain(&values)
            .any(|r| check_finite("K", r).is_err())
        {
            return Err(Error::Overflow {
                what: "a smoothed key or value (minus the cache's mean)",
                arithmetic: "f32",
                hint: "turn K or V smoothing off or scale the inputs down",
            });
        }
        (head.mean, head.v_mean) = (k_mean, v_mean);
        if int {
            if head.k_base == 0.0 {
                head.k_base = base_of(keys.iter().map(|r| &r[..]));
            }
            if head.v_base.is_empty() {
                let mut cols = vec![0u32; d];
                column_maxima(values.iter().map(|r| &r[..]), None, &mut cols);
                let mut base = Vec::new();
                v_slice_scales(&cols, self.quant.v_per_channel, &mut base);
                if base.iter().any(|&b| b != 0.0) {
                    head.v_base = base;
                }
            }
        }
        head.pages.extend(fresh);
        let mut q8 = vec![0i8; d];
        let mut i = 0;
        while i < n {
            let j = start + i;
            let (p, at) = (j / PAGE, j % PAGE);
            match &mut head.pages[p] {
                Page::Int {
                    k: pk,
                    v: pv,
                    k_exp,
                    v_exp,
                    k_max,
                    v_max,
                } if at == 0 && i + PAGE <= n => {
                    // A whole page: quantize its tokens row-major and pack them with the
                    // kernel's packer, as the per-call path does (the same bytes as writing
                    // token by token).
                    let mut rows = vec![0i8; PAGE * d];
                    for t in 0..PAGE {
                        let dst = &mut rows[t * d..(t + 1) * d];
                        k_exp[t] = quantize_token(&keys[i + t], &[head.k_base], dst);
                    }
                    pk.data_mut().fill(0);
                    self.kernel.pack_k_into(&rows, PAGE, d, pk.data_mut());
                    for t in 0..PAGE {
                        let dst = &mut rows[t * d..(t + 1) * d];
                        v_exp[t] = quantize_token(&values[i + t], &head.v_base, dst);
                    }
                    pv.data_mut().fill(0);
                    self.kernel.pack_v_into(&rows, PAGE, d, pv.data_mut());
                    *k_max = k_exp.iter().copied().max().unwrap_or(0);
                    *v_max = v_exp.iter().copied().max().unwrap_or(0);
                    i += PAGE;
                    continue;
                }
                Page::Int {
                    k: pk,
                    v: pv,
                    k_exp,
                    v_exp,
                    k_max,
                    v_max,
                } => {
                    let layout = pk.layout();
                    let e = quantize_token(&keys[i], &[head.k_base], &mut q8);
                    layout.put_key(pk.data_mut(), PAGE, d, at, &q8);
                    k_exp[at] = e;
                    *k_max = (*k_max).max(e);
                    let e = quantize_token(&values[i], &head.v_base, &mut q8);
                    layout.put_value(pv.data_mut(), PAGE, d, at, &q8);
                    v_exp[at] = e;
                    *v_max = (*v_max).max(e);
                }
                Page::F32 { k: pk, v: pv } => {
                    pk[at * d..(at + 1) * d].copy_from_slice(k(i));
                    pv[at * d..(at + 1) * d].copy_from_slice(v(i));
                }
                Page::F16 { k: pk, v: pv } => {
                    use half::slice::HalfFloatSliceExt;
                    pk[at * d..(at + 1) * d].convert_from_f32_slice(k(i));
                    pv[at * d..(at + 1) * d].convert_from_f32_slice(v(i));
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn new_page(&self) -> Result<Page> {
        let d = self.d;
        Ok(match self.store {
            Store::Int { layout } => Page::Int {
                k: PackedB::from_parts(
                    AlignedVec::try_zeroed(layout.k_len(PAGE, d), "a cache page")?,
                    PAGE,
                    d,
                    layout,
                ),
                v: PackedB::from_parts(
                    AlignedVec::try_zeroed(layout.v_len(PAGE, d), "a cache page")?,
                    d,
                    PAGE,
                    layout,
                ),
                k_exp: vec![0; PAGE],
                v_exp: vec![0; PAGE],
                k_max: 0,
                v_max: 0,
            },
            Store::F32 => Page::F32 {
                k: try_vec(PAGE * d)?,
                v: try_vec(PAGE * d)?,
            },
            Store::F16 => Page::F16 {
                k: try_vec(PAGE * d)?,
                v: try_vec(PAGE * d)?,
            },
        })
    }
}

fn try_vec<T: Clone + Default>(n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Allocation {
        what: "a cache page",
        bytes: n * size_of::<T>(),
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// A base scale: `max |x| / 127` over rows (0 while they are all zero or subnormal).
fn base_of<'a>(rows: impl Iterator<Item = &'a [f32]>) -> f32 {
    scale_of_max_bits(rows.map(max_abs_bits).max().unwrap_or(0))
}

/// Quantizes one token with scales `base[c] * 2^e` (`base` has one entry, or one per channel),
/// `e` the smallest exponent in `0..=MAX_EXP` that rounds every `|x[c]| / (base[c] * 2^e)` to
/// at most 127 (docs/numerics.md, section 7); returns `e`. A base that is not fixed yet
/// (empty or 0: nothing non-zero appended) stores zeros.
fn quantize_token(x: &[f32], base: &[f32], out: &mut [i8]) -> u8 {
    if base.is_empty() || base == [0.0] {
        out.fill(0);
        return 0;
    }
    let fits = |e: u8| -> bool {
        let f = (e as f32).exp2();
        if let [b] = base {
            let max = f32::from_bits(max_abs_bits(x));
            (max / (b * f)).round_ties_even() <= 127.0
        } else {
            x.iter()
                .zip(base)
                .all(|(&v, &b)| (v.abs() / (b * f)).round_ties_even() <= 127.0)
        }
    };
    let mut e = 0u8;
    while e < MAX_EXP && !fits(e) {
        e += 1;
    }
    let f = (e as f32).exp2();
    if let [b] = base {
        quantize_with_scale(x, b * f, out);
    } else {
        let mut div = Vec::with_capacity(base.len());
        divisors_of(
            &base.iter().map(|&b| b * f).collect::<Vec<_>>(),
            base.len(),
            &mut div,
        );
        quantize_with_divisors(x, &div, out);
    }
    e
}

impl Attention {
    /// Attention of `q` (`[sequences, heads, q_len, head_dim]`, the newest `q_len` tokens of
    /// every sequence, already appended to the cache) over the cached keys and values, into
    /// `out` (shaped like `q`). With the causal mask, query `i` of a sequence of `len` tokens
    /// sees keys `0..=len - q_len + i`; without it, all of them. Decoding is `q_len = 1`.
    ///
    /// # Errors
    /// [`Error::CacheMismatch`] for a cache made for another pipeline or kernel family;
    /// [`Error::DimensionMismatch`], [`Error::CacheTooShort`] (causal, fewer tokens than
    /// queries), [`Error::NonFinite`], [`Error::NonFiniteOutput`], [`Error::Allocation`].
    /// Errors of the checks leave `out` as it was; later ones leave it zero.
    pub fn run_cached(
        &self,
        ws: &mut Workspace,
        cache: &KvCache,
        q: TensorView<'_, f32>,
        out: &mut [f32],
    ) -> Result<()> {
        let shape = cache.query_shape(self, &q)?;
        self.check(&shape)?;
        check_len("output", shape.q_elems(), out.len())?;
        let r = crate::memory::built_in(out, |o| {
            if self.pipeline().is_integer() {
                crate::attention::run_integer(
                    self,
                    ws,
                    self.kernel(),
                    crate::attention::IntInputs {
                        q: crate::attention::QSide::Float(q),
                        kv: crate::attention::KvSide::Cached(cache),
                    },
                    o,
                )
            } else {
                cache.run_float(self, q, o)
            }
        })
        .map_err(|e| crate::attention::locate(e, out));
        if r.is_err() {
            out.fill(0.0);
        }
        r
    }
}
