//! The integer pipelines' schedule (INT8 and IntAttention), on per-call inputs and on a
//! [`crate::KvCache`] alike.
//!
//! Work is cut into *units* (one key/value head of one batch row with every query row that
//! reads it: all query heads of a GQA group share the unit's packed keys) and each unit's rows
//! into *blocks*. A block runs scores -> softmax -> P x V while its score rows are in cache,
//! chunk by chunk over the keys, so no `Lq x Lk` buffer exists. Rows of a GQA group are taken
//! position by position (`(i, h)` order), so a causal block holds rows that see about the same
//! keys. When there are fewer blocks than workers (decoding: a handful of rows against
//! thousands of keys) each block's keys are split across tasks: every split computes its
//! scores and their maximum, the row maxima are combined, every split computes its table
//! values against the common maximum and its partial P x V, and the partial sums are added:
//! integers all the way, so the result is the same bits as one task doing it all.
//!
//! Every step is the contract's integer arithmetic through the same per-row functions as the
//! unfused schedule ([`super::unfused`]), so the f32 outputs are bit-identical to it. Work is
//! skipped only where its result is known to be zero: keys past a batch row's key count are
//! never packed, and a causal block stops at the chunk holding its last row's last visible key.

use std::sync::atomic::{AtomicBool, Ordering};

use super::mask::Visibility;
use super::plan::{key_splits, BlockPlan, CacheSizes, PlanInput};
use super::prep::{self, float_scales, given_scales, Chunk, KvRows, QScale, Scales};
use super::rows::{RowParam, RowSoftmax, Soft};
use super::workspace::{Scratch, Workspace};
use super::{Attention, AttnShape, Schedule};
use crate::error::{Error, Result};
use crate::exec::Par;
use crate::kernels::{Kernel, KernelImpl, PackedB, MAX_K_U8S8};
use crate::lut::{Lut, MAX_ROW_LEN};
use crate::memory::Fresh;
use crate::ops::output::output_row_channels;
use crate::ops::quant::all_finite;
use crate::ops::quant::{max_abs_bits, quantize_with_scale, QTensor};
use crate::ops::softmax::SoftmaxVariant;
use crate::tensor::TensorView;

/// The queries of an integer call.
#[derive(Clone, Copy)]
pub(crate) enum QSide<'a> {
    /// f32 rows, quantized inside the blocks with the configured scales.
    Float(TensorView<'a, f32>),
    /// int8 rows the caller holds (contiguous), one scale.
    Int { shape: AttnShape, t: &'a QTensor },
}

/// The keys and values of an integer call.
#[derive(Clone, Copy)]
pub(crate) enum KvSide<'a> {
    Float {
        k: TensorView<'a, f32>,
        v: TensorView<'a, f32>,
    },
    Int {
        k: &'a QTensor,
        v: &'a QTensor,
    },
    /// Keys and values already quantized and packed in a cache.
    Cached(&'a crate::cache::KvCache),
}

/// The inputs of an integer call.
#[derive(Clone, Copy)]
pub(crate) struct IntInputs<'a> {
    pub q: QSide<'a>,
    pub kv: KvSide<'a>,
}

/// A chunk of one unit's keys as the blocks read it: packed K (`cap` columns, the first `len`
/// of them keys) and packed V (`cap` deep), and optionally a power-of-two exponent per key for
/// K and for V (docs/numerics.md, section 7; only cache pages have them).
#[derive(Clone, Copy)]
pub(crate) struct ChunkRef<'a> {
    pub start: usize,
    pub len: usize,
    pub cap: usize,
    pub k: &'a PackedB,
    pub v: &'a PackedB,
    pub k_exp: Option<&'a [u8]>,
    pub v_exp: Option<&'a [u8]>,
}

/// One unit's keys and values.
pub(crate) struct UnitRef<'a> {
    pub chunks: Vec<ChunkRef<'a>>,
    /// Scale (or base scale, with exponents) of the unit's keys.
    pub s_k: f32,
    /// Scale (or base scale) of its values: one, or one per channel.
    pub s_v: &'a [f32],
    /// The mean value added back to every output row (smoothed V; empty otherwise).
    pub v_mean: &'a [f32],
    /// The scales of the unit's query heads when the unit computed them itself (per-head Q
    /// scales in the one-pass schedule; [`QScale::Unit`]).
    pub q_scales: Vec<f32>,
}

/// Runs an integer pipeline into `out` (shaped like Q); shapes and parameters are checked.
pub(crate) fn run_integer(
    attn: &Attention,
    ws: &mut Workspace,
    kernel: Kernel,
    inputs: IntInputs<'_>,
    out: Fresh<'_, f32>,
) -> Result<()> {
    let unfused = attn.schedule() == Schedule::Unfused && !matches!(inputs.kv, KvSide::Cached(_));
    let ws = &*ws;
    attn.executor().run(|par| {
        if unfused {
            super::unfused::run(attn, kernel.imp(), par, inputs, out)
        } else {
            Engine::run(attn, ws, kernel.imp(), par, inputs, out)
        }
    })
}

/// The shape, masks and scales of a call, before any block runs.
pub(crate) struct Setup {
    pub shape: AttnShape,
    pub vis: Visibility,
    pub scales: Scales,
}

/// Shape and masks of per-call inputs (not a cache).
pub(crate) fn geometry(
    attn: &Attention,
    inputs: &IntInputs<'_>,
) -> Result<(AttnShape, Visibility)> {
    let shape = match (inputs.q, inputs.kv) {
        (QSide::Float(q), KvSide::Float { k, v }) => super::shape_of(q.dims(), k.dims(), v.dims())?,
        (QSide::Int { shape, .. }, _) => shape,
        _ => unreachable!("float queries with int8 keys are never dispatched"),
    };
    let vis = Visibility {
        q_len: shape.q_len,
        keys: match attn.key_lens() {
            Some(l) => l.to_vec(),
            None => vec![shape.kv_len; shape.batch],
        },
        causal_len: vec![shape.kv_len; shape.batch],
        causal: attn.causal(),
    };
    Ok((shape, vis))
}

/// The scales of per-call inputs.
fn setup_scales(
    attn: &Attention,
    par: Par,
    shape: &AttnShape,
    vis: &Visibility,
    inputs: &IntInputs<'_>,
) -> Result<Scales> {
    Ok(match (inputs.q, inputs.kv) {
        (QSide::Float(q), KvSide::Float { k, v }) => {
            float_scales(par, shape, vis, attn.quantization(), &q, &k, &v)?
        }
        (QSide::Int { t, .. }, KvSide::Int { k, v }) => {
            given_scales(t, k, v, shape.batch * shape.kv_heads)
        }
        _ => unreachable!("mixed inputs are never dispatched"),
    })
}

/// Shape, masks and scales of per-call inputs (not a cache).
pub(crate) fn setup(attn: &Attention, par: Par, inputs: &IntInputs<'_>) -> Result<Setup> {
    let (shape, vis) = geometry(attn, inputs)?;
    let scales = setup_scales(attn, par, &shape, &vis, inputs)?;
    Ok(Setup { shape, vis, scales })
}

/// The one-pass schedule of many short units (batches of short sequences): one task per unit
/// computes the unit's scales (unless a scale spans the whole tensor: then one pass over the
/// inputs finds it first), quantizes and packs its keys and values, and runs its blocks.
struct OnePass<'a> {
    attn: &'a Attention,
    ws: &'a Workspace,
    kernel: &'a dyn KernelImpl,
    par: Par,
    shape: AttnShape,
    vis: Visibility,
    q: TensorView<'a, f32>,
    k: TensorView<'a, f32>,
    v: TensorView<'a, f32>,
}

impl OnePass<'_> {
    fn run(self, engine: Engine<'_>, plan: BlockPlan, out: Fresh<'_, f32>) -> Result<()> {
        use super::Granularity;
        let quant = self.attn.quantization();
        let global = quant.kv == Granularity::PerTensor || quant.q == Granularity::PerTensor;
        let scales = if global {
            Some(float_scales(
                self.par,
                &self.shape,
                &self.vis,
                quant,
                &self.q,
                &self.k,
                &self.v,
            )?)
        } else {
            None
        };
        // With tensor-wide Q scales the engine reads them from the global pass.
        let mut engine = engine;
        if let Some(sc) = &scales {
            if quant.q != Granularity::PerRow {
                engine.q_scale = sc.q.clone();
            }
        }
        let tasks = engine.block_tasks(plan.rows, out);
        let units = self.shape.batch * self.shape.kv_heads;
        let mut per_unit: Vec<Vec<BlockTask<'_>>> = (0..units).map(|_| Vec::new()).collect();
        for t in tasks {
            per_unit[t.0.u].push(t);
        }
        let work: Vec<(usize, Vec<BlockTask<'_>>)> = per_unit.into_iter().enumerate().collect();
        let bad_input = AtomicBool::new(false);
        let failed = AtomicBool::new(false);
        let d = self.shape.head_dim;
        self.par.for_each(work, |(u, blocks)| {
            let own = match &scales {
                Some(sc) => {
                    let us = sc.unit(u, d);
                    let q = match &sc.q {
                        QScale::Head(h) => {
                            let group = self.shape.group();
                            let b = u / self.shape.kv_heads;
                            let g = u % self.shape.kv_heads;
                            let first = b * self.shape.heads + g * group;
                            h[first..first + group].to_vec()
                        }
                        _ => Vec::new(),
                    };
                    prep::OwnScales {
                        k: us.k,
                        v: us.v.to_vec(),
                        q,
                        k_mean: us.k_mean.map(<[f32]>::to_vec).unwrap_or_default(),
                        v_mean: us.v_mean.map(<[f32]>::to_vec).unwrap_or_default(),
                    }
                }
                None => match prep::own_unit_scales(
                    &self.shape,
                    &self.vis,
                    quant,
                    &self.q,
                    &self.k,
                    &self.v,
                    u,
                ) {
                    Some(own) => own,
                    None => {
                        bad_input.store(true, Ordering::Relaxed);
                        for (_, outs) in blocks {
                            for o in outs {
                                o.zeroed();
                            }
                        }
                        return;
                    }
                },
            };
            let keys = self.vis.keys[u / self.shape.kv_heads];
            let chunk = if keys == 0 {
                None
            } else {
                let us = own.unit();
                let rows = KvRows::Float {
                    k: self.k,
                    v: self.v,
                };
                match prep::prepare_chunk(
                    self.ws,
                    self.kernel,
                    &self.shape,
                    us,
                    rows,
                    u,
                    0,
                    keys,
                    self.ws.take_packed(self.kernel.layout().k_len(keys, d)),
                    self.ws.take_packed(self.kernel.layout().v_len(keys, d)),
                ) {
                    Ok(c) => Some(c),
                    Err(_) => {
                        failed.store(true, Ordering::Relaxed);
                        None
                    }
                }
            };
            let unit = UnitRef {
                chunks: chunk.iter().map(chunk_ref).collect(),
                s_k: own.k,
                s_v: &own.v,
                v_mean: &own.v_mean,
                q_scales: own.q.clone(),
            };
            let mut scr = self.ws.take_scratch();
            for (blk, outs) in blocks {
                if engine.block(&unit, blk, outs, &mut scr).is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
            }
            self.ws.give_scratch(scr);
            drop(unit);
            if let Some(c) = chunk {
                self.ws.give_packed(c.k.into_storage());
                self.ws.give_packed(c.v.into_storage());
            }
        });
        if bad_input.into_inner() {
            return Err(prep::input_error(&[&self.q, &self.k, &self.v]));
        }
        if failed.into_inner() {
            return Err(Error::Allocation {
                what: "a unit's packed keys or score rows",
                bytes: 0,
            });
        }
        engine.finish(self.attn)
    }
}

/// Everything a block task reads.
struct Engine<'a> {
    kernel: &'a dyn KernelImpl,
    shape: AttnShape,
    vis: Visibility,
    q: QSide<'a>,
    q_scale: QScale,
    rows: RowSoftmax,
    /// Set by a task that met a non-finite query row (per-row scales find them in the block).
    bad_q: AtomicBool,
    /// Set by a task whose float logits overflowed.
    overflow: AtomicBool,
    /// Set by a task that wrote a non-finite output value.
    bad_out: AtomicBool,
}

/// A block and the output rows it writes (one part per query head of its unit's group).
type BlockTask<'o> = (Block, Vec<Fresh<'o, f32>>);

/// Rows `r0..r0 + m` of unit `u` (`r0` and `m` multiples of the GQA group).
#[derive(Clone, Copy, Debug)]
struct Block {
    u: usize,
    r0: usize,
    m: usize,
}

impl<'a> Engine<'a> {
    fn run(
        attn: &'a Attention,
        ws: &Workspace,
        kernel: &'a dyn KernelImpl,
        par: Par,
        inputs: IntInputs<'a>,
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        if let KvSide::Cached(cache) = inputs.kv {
            let QSide::Float(q) = inputs.q else {
                unreachable!("cached attention takes f32 queries")
            };
            let (shape, vis, units) = cache.engine_view(attn, q)?;
            let scales = cache_q_scales(par, attn, &shape, &q)?;
            let engine = Engine::new(attn, kernel, shape, vis, inputs.q, scales.q)?;
            return engine.blocks(attn, ws, par, &units, out);
        }
        let (shape, vis) = geometry(attn, &inputs)?;
        if vis.max_keys() >= MAX_ROW_LEN {
            return Err(Error::LimitExceeded {
                what: "keys",
                value: vis.max_keys(),
                limit: MAX_ROW_LEN - 1,
                reason: "IndexSoftmax rows are exact only below 2^24 keys",
            });
        }
        let plan_in = PlanInput::of(&shape, attn.causal(), par.workers());
        let plan = make_plan(attn, plan_in, &shape);
        if let (QSide::Float(q), KvSide::Float { k, v }) = (inputs.q, inputs.kv) {
            // Many units, each short enough for one chunk: one task per unit does everything
            // (its scales, its keys' packing, its blocks) while its data is in the worker's
            // cache, with no pass over the inputs before it unless a scale spans the tensor.
            if plan_in.units >= 2 * plan_in.workers && plan.key_chunk >= vis.max_keys() {
                let engine_q = match attn.quantization().q {
                    super::Granularity::PerRow => QScale::Row,
                    _ => QScale::Unit,
                };
                let one = OnePass {
                    attn,
                    ws,
                    kernel,
                    par,
                    shape,
                    vis: vis.clone(),
                    q,
                    k,
                    v,
                };
                let engine = Engine::new(attn, kernel, shape, vis, inputs.q, engine_q)?;
                return one.run(engine, plan, out);
            }
        }
        let scales = setup_scales(attn, par, &shape, &vis, &inputs)?;
        let rows = match inputs.kv {
            KvSide::Float { k, v } => KvRows::Float { k, v },
            KvSide::Int { k, v } => KvRows::Int {
                k: k.data(),
                v: v.data(),
            },
            KvSide::Cached(_) => unreachable!("handled above"),
        };
        // Chunks made only to spread the packing over the workers are packed into one operand
        // per unit where the row blocks alone keep every worker busy (no key splits wanted):
        // each block then runs one product over all keys instead of one per chunk.
        let pos = plan
            .rows
            .div_ceil(shape.group())
            .clamp(1, shape.q_len.max(1));
        let blocks = plan_in.units * shape.q_len.div_ceil(pos);
        let merge = !attn.causal()
            && plan.key_chunk < vis.max_keys()
            && vis.max_keys() <= super::plan::PV_SPLIT
            && plan.key_chunk.is_multiple_of(prep::MERGE_ALIGN)
            && blocks >= par.workers();
        let prepare = if merge {
            prep::prepare_merged
        } else {
            prep::prepare_chunks
        };
        let chunks = prepare(par, ws, kernel, &shape, &vis, &scales, rows, plan.key_chunk)?;
        let units: Vec<UnitRef<'_>> = chunks
            .iter()
            .enumerate()
            .map(|(u, cs)| UnitRef {
                chunks: cs.iter().map(chunk_ref).collect(),
                s_k: scales.k[u],
                s_v: scales.unit(u, shape.head_dim).v,
                v_mean: scales.unit(u, shape.head_dim).v_mean.unwrap_or(&[]),
                q_scales: Vec::new(),
            })
            .collect();
        let engine = Engine::new(attn, kernel, shape, vis, inputs.q, scales.q.clone());
        let r = engine.and_then(|e| e.blocks_with_plan(attn, ws, par, &units, plan, out));
        drop(units);
        prep::give_back(ws, chunks);
        r
    }

    fn new(
        attn: &Attention,
        kernel: &'a dyn KernelImpl,
        shape: AttnShape,
        vis: Visibility,
        q: QSide<'a>,
        q_scale: QScale,
    ) -> Result<Self> {
        Ok(Engine {
            kernel,
            shape,
            vis,
            q,
            q_scale,
            rows: RowSoftmax::new(attn, shape.head_dim)?,
            bad_q: AtomicBool::new(false),
            overflow: AtomicBool::new(false),
            bad_out: AtomicBool::new(false),
        })
    }

    /// The blocks of a cached call, planned here.
    fn blocks(
        self,
        attn: &Attention,
        ws: &Workspace,
        par: Par,
        units: &[UnitRef<'_>],
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        let plan_in = PlanInput {
            units: units.len(),
            unit_rows: self.shape.group() * self.shape.q_len,
            keys: self.vis.max_keys(),
            d: self.shape.head_dim,
            causal: attn.causal(),
            workers: par.workers(),
        };
        let plan = make_plan(attn, plan_in, &self.shape);
        self.blocks_with_plan(attn, ws, par, units, plan, out)
    }

    /// Every block of every unit, then the checks of what they found.
    fn blocks_with_plan(
        self,
        attn: &Attention,
        ws: &Workspace,
        par: Par,
        units: &[UnitRef<'_>],
        plan: BlockPlan,
        out: Fresh<'_, f32>,
    ) -> Result<()> {
        let tasks = self.block_tasks(plan.rows, out);
        let most_chunks = units.iter().map(|u| u.chunks.len()).max().unwrap_or(0);
        let splits = key_splits(tasks.len(), most_chunks, par.workers());
        if splits > 1 {
            self.split_blocks(ws, par, units, tasks, splits)?;
        } else {
            let failed = AtomicBool::new(false);
            par.for_each(tasks, |(blk, outs)| {
                let mut scr = ws.take_scratch();
                if self.block(&units[blk.u], blk, outs, &mut scr).is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                ws.give_scratch(scr);
            });
            if failed.into_inner() {
                return Err(Error::Allocation {
                    what: "a block's score rows",
                    bytes: plan
                        .rows
                        .saturating_mul(self.vis.max_keys())
                        .saturating_mul(5),
                });
            }
        }
        self.finish(attn)
    }

    /// Errors that blocks could only flag.
    fn finish(&self, attn: &Attention) -> Result<()> {
        if self.bad_q.load(Ordering::Relaxed) {
            if let QSide::Float(q) = self.q {
                if let Some(e) = prep::non_finite_in(&q, "Q") {
                    return Err(e);
                }
            }
        }
        if self.overflow.load(Ordering::Relaxed) {
            return Err(Error::Overflow {
                what: "the int8 pipeline's logits (scores times the logit scale)",
                arithmetic: "f32",
                hint: "scale the inputs or the logit scale down, or use the intattn pipeline",
            });
        }
        if self.bad_out.load(Ordering::Relaxed) {
            return Err(Error::NonFiniteOutput {
                pipeline: attn.pipeline(),
                index: 0,
                value: f32::INFINITY,
            });
        }
        Ok(())
    }

    /// The blocks of every unit with the output rows each writes (one part per query head of
    /// the unit's group).
    fn block_tasks<'o>(&self, rows: usize, out: Fresh<'o, f32>) -> Vec<BlockTask<'o>> {
        let s = &self.shape;
        let (group, lq, d) = (s.group(), s.q_len, s.head_dim);
        // Positions per block (block rows are a multiple of the group).
        let pos = (rows.div_ceil(group)).clamp(1, lq);
        let blocks_per_unit = lq.div_ceil(pos);
        let units = s.batch * s.kv_heads;
        let mut tasks: Vec<(Block, Vec<Fresh<'o, f32>>)> =
            Vec::with_capacity(units * blocks_per_unit);
        for u in 0..units {
            for ib in 0..blocks_per_unit {
                let p0 = ib * pos;
                let np = pos.min(lq - p0);
                tasks.push((
                    Block {
                        u,
                        r0: p0 * group,
                        m: np * group,
                    },
                    Vec::with_capacity(group),
                ));
            }
        }
        // Head h of batch row b: its output rows, cut at the blocks' positions.
        for (bh, head) in out.chunks(lq * d).into_iter().enumerate() {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let u = b * s.kv_heads + h / group;
            for (ib, part) in head.chunks(pos * d).into_iter().enumerate() {
                tasks[u * blocks_per_unit + ib].1.push(part);
            }
        }
        tasks
    }

    /// Batch row, query head and position of row `r` of unit `u`.
    fn row_at(&self, u: usize, r: usize) -> (usize, usize, usize) {
        let s = &self.shape;
        let group = s.group();
        let (b, g) = (u / s.kv_heads, u % s.kv_heads);
        (b, g * group + r % group, r / group)
    }

    /// The block's queries as int8 into `scr.q8`, and each row's threshold or logit scale.
    fn block_queries(
        &self,
        unit: &UnitRef<'_>,
        blk: Block,
        scr: &mut Scratch,
        params: &mut Vec<RowParam>,
    ) {
        let d = self.shape.head_dim;
        scr.q8.grow(blk.m * d);
        params.clear();
        let mut last: Option<(f32, RowParam)> = None;
        for r in 0..blk.m {
            let (b, h, i) = self.row_at(blk.u, blk.r0 + r);
            let dst = &mut scr.q8[r * d..(r + 1) * d];
            let s_q = match self.q {
                QSide::Float(view) => {
                    let row = view.row(b, h, i);
                    let group = self.shape.group();
                    let s = self.q_scale.of(
                        b * self.shape.heads + h,
                        &unit.q_scales,
                        h % group,
                        || {
                            let m = max_abs_bits(row);
                            if m >= f32::INFINITY.to_bits() {
                                self.bad_q.store(true, Ordering::Relaxed);
                            }
                            m
                        },
                    );
                    quantize_with_scale(row, s, dst);
                    s
                }
                QSide::Int { shape, t } => {
                    let at = ((b * shape.heads + h) * shape.q_len + i) * d;
                    dst.copy_from_slice(&t.data()[at..at + d]);
                    t.scale()
                }
            };
            let p = match last {
                Some((s, p)) if s.to_bits() == s_q.to_bits() => p,
                _ => self.rows.param(s_q, unit.s_k),
            };
            last = Some((s_q, p));
            params.push(p);
        }
    }

    /// One block, all of its keys in this task.
    fn block(
        &self,
        unit: &UnitRef<'_>,
        blk: Block,
        outs: Vec<Fresh<'_, f32>>,
        scr: &mut Scratch,
    ) -> Result<()> {
        let (kernel, d, m) = (self.kernel, self.shape.head_dim, blk.m);
        let (b, _, i_last) = self.row_at(blk.u, blk.r0 + m - 1);
        // Visible keys only grow with the position, so the last row bounds the block.
        let last_valid = self.vis.valid(b, i_last);
        let nch = unit
            .chunks
            .iter()
            .take_while(|c| c.start < last_valid)
            .count();
        if nch == 0 {
            // Every row fully masked: O32 = 0, which both finishes turn into +0.0.
            for o in outs {
                o.zeroed();
            }
            return Ok(());
        }
        let chunks = &unit.chunks[..nch];
        let last = chunks[nch - 1];
        let ncols = last.start + last.cap;
        let ss = kernel.s_row_stride(ncols);
        let ps = kernel.p_row_stride(ncols);
        let mut params = Vec::with_capacity(m);
        self.block_queries(unit, blk, scr, &mut params);
        scr.scores.try_grow(m * ss, "score rows")?;
        scr.p.try_grow(m * ps, "probability rows")?;
        let s = &mut scr.scores[..m * ss];
        let q8 = &scr.q8[..m * d];
        for c in chunks {
            // Chunk columns start at `c.start`: every chunk but the last is whole.
            kernel.gemm_s8s8_packed_strided(q8, m, c.k, &mut s[c.start..], ss);
        }
        let exps = chunks.iter().any(|c| c.k_exp.is_some());
        let mut divisor = vec![0u32; m];
        for r in 0..m {
            let (b, _, i) = self.row_at(blk.u, blk.r0 + r);
            let valid = self.vis.valid(b, i);
            let srow = &mut scr.scores[r * ss..r * ss + ncols];
            let prow = &mut scr.p[r * ps..r * ps + ncols];
            if exps {
                if let Soft::Index { .. } = self.rows.soft {
                    relative_wide_row(srow, valid, chunks);
                }
            }
            let exp2 = |j| key_exp(chunks, j);
            let (div, ok) =
                self.rows
                    .row(kernel, srow, valid, prow, params[r], exp2, &mut scr.frow);
            if !ok {
                self.overflow.store(true, Ordering::Relaxed);
            }
            divisor[r] = div;
        }
        scr.o32.try_grow(m * d, "P x V rows")?;
        let one = nch == 1 && chunks[0].v_exp.is_none();
        if one {
            let c = chunks[0];
            kernel.gemm_u8s8_packed_strided(&scr.p[c.start..], ps, m, c.v, &mut scr.o32[..m * d]);
        } else {
            scr.acc.clear();
            scr.acc.resize(m * d, 0);
            for c in chunks {
                pv_chunk(
                    kernel,
                    &scr.p[..m * ps],
                    ps,
                    m,
                    d,
                    c,
                    &mut scr.o32,
                    &mut scr.digits,
                    &mut scr.acc,
                );
            }
        }
        let group = self.shape.group();
        let mut outs: Vec<&mut [f32]> = outs.into_iter().map(|o| o.zeroed()).collect();
        let mut bad = false;
        for (r, &div) in divisor.iter().enumerate() {
            let (hl, pl) = (r % group, r / group);
            let orow = &mut outs[hl][pl * d..(pl + 1) * d];
            if one {
                output_row_channels(
                    &scr.o32[r * d..(r + 1) * d],
                    div,
                    unit.s_v,
                    unit.v_mean,
                    orow,
                );
            } else {
                output_row_channels(
                    &scr.acc[r * d..(r + 1) * d],
                    div,
                    unit.s_v,
                    unit.v_mean,
                    orow,
                );
            }
            bad |= !all_finite(orow);
        }
        if bad {
            self.bad_out.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The blocks with their keys split over tasks (see the module docs).
    fn split_blocks(
        &self,
        ws: &Workspace,
        par: Par,
        units: &[UnitRef<'_>],
        tasks: Vec<(Block, Vec<Fresh<'_, f32>>)>,
        splits: usize,
    ) -> Result<()> {
        let d = self.shape.head_dim;
        let mut states: Vec<SplitBlock<'_>> = Vec::with_capacity(tasks.len());
        let mut parts: Vec<Part> = Vec::new();
        for (blk, outs) in tasks {
            let unit = &units[blk.u];
            let (b, _, i_last) = self.row_at(blk.u, blk.r0 + blk.m - 1);
            let last_valid = self.vis.valid(b, i_last);
            let nch = unit
                .chunks
                .iter()
                .take_while(|c| c.start < last_valid)
                .count();
            let per = nch.div_ceil(splits).max(1);
            let bounds: Vec<usize> = (0..=splits).map(|s| (s * per).min(nch)).collect();
            let mut scr = ws.take_scratch();
            let mut params = Vec::new();
            self.block_queries(unit, blk, &mut scr, &mut params);
            let q8 = scr.q8[..blk.m * d].to_vec();
            ws.give_scratch(scr);
            for s in 0..splits {
                if bounds[s] < bounds[s + 1] {
                    parts.push(Part::new(states.len(), bounds[s]..bounds[s + 1]));
                }
            }
            states.push(SplitBlock {
                blk,
                outs,
                q8,
                params,
                max: vec![i64::MIN; blk.m],
                sums: vec![0; blk.m],
            });
        }
        let chunks_of = |st: &SplitBlock<'_>, pt: &Part| -> &[ChunkRef<'_>] {
            &units[st.blk.u].chunks[pt.chunks.clone()]
        };
        let failed = AtomicBool::new(false);

        // Phase 1: scores and their row maxima, per split.
        let mut parts: Vec<Part> = par.map(parts, |mut pt| {
            let st = &states[pt.block];
            let chunks = chunks_of(st, &pt);
            let (c0, width) = span(chunks);
            let m = st.blk.m;
            pt.ss = self.kernel.s_row_stride(HEAD + width);
            pt.ps = self.kernel.p_row_stride(HEAD_P + width);
            if pt.scores.try_grow(m * pt.ss, "score rows").is_err()
                || pt.p.try_grow(m * pt.ps, "probability rows").is_err()
            {
                failed.store(true, Ordering::Relaxed);
                return pt;
            }
            for c in chunks {
                let at = HEAD + c.start - c0;
                self.kernel
                    .gemm_s8s8_packed_strided(&st.q8, m, c.k, &mut pt.scores[at..], pt.ss);
            }
            pt.max = (0..m)
                .map(|r| {
                    let (b, _, i) = self.row_at(st.blk.u, st.blk.r0 + r);
                    let row = &pt.scores[r * pt.ss + HEAD..r * pt.ss + HEAD + width];
                    wide_max(row, c0, self.vis.valid(b, i), chunks)
                })
                .collect();
            pt
        });
        if failed.load(Ordering::Relaxed) {
            return Err(Error::Allocation {
                what: "the score rows of the key splits",
                bytes: parts.iter().map(|p| p.ss * 4 + p.ps).sum(),
            });
        }
        for pt in &parts {
            let st = &mut states[pt.block];
            for (m, &x) in st.max.iter_mut().zip(&pt.max) {
                *m = (*m).max(x);
            }
        }

        // Phase 2: table values (or probabilities) against the common maxima.
        match &self.rows.soft {
            Soft::Index {
                lut,
                variant: SoftmaxVariant::Deferred | SoftmaxVariant::Normalized,
                ..
            } => {
                let deferred = matches!(
                    self.rows.soft,
                    Soft::Index {
                        variant: SoftmaxVariant::Deferred,
                        ..
                    }
                );
                parts = par.map(parts, |mut pt| {
                    let st = &states[pt.block];
                    let chunks = chunks_of(st, &pt);
                    pt.sums = (0..st.blk.m)
                        .map(|r| self.split_row_exponents(st, &mut pt, chunks, lut, r))
                        .collect();
                    if deferred {
                        // The table values are final: multiply them by V while they are hot.
                        self.split_pv(ws, st, units, &mut pt);
                    }
                    pt
                });
                for pt in &parts {
                    let st = &mut states[pt.block];
                    for (s, &x) in st.sums.iter_mut().zip(&pt.sums) {
                        *s += x;
                    }
                }
                if let Soft::Index {
                    variant: SoftmaxVariant::Normalized,
                    ..
                } = self.rows.soft
                {
                    parts = par.map(parts, |mut pt| {
                        let st = &states[pt.block];
                        let (_, width) = span(chunks_of(st, &pt));
                        for r in 0..st.blk.m {
                            let row = &mut pt.p[r * pt.ps + HEAD_P..r * pt.ps + HEAD_P + width];
                            // A row's sum fits u32: it has fewer than 2^24 entries of <= 255.
                            self.kernel.normalize_row(row, st.sums[r] as u32);
                        }
                        pt
                    });
                }
            }
            // Paper-simulation and float softmax read whole rows: gather them, per block.
            _ => {
                let mut groups: Vec<&mut [Part]> =
                    parts.chunk_by_mut(|a, b| a.block == b.block).collect();
                let work: Vec<&mut [Part]> = std::mem::take(&mut groups);
                par.for_each(work, |group| {
                    let st = &states[group[0].block];
                    self.split_full_rows(st, &units[st.blk.u], group);
                });
            }
        }

        // Phase 3: partial P x V per split (done in phase 2 for Deferred, whose P needs no
        // whole-row sum).
        let deferred = matches!(
            self.rows.soft,
            Soft::Index {
                variant: SoftmaxVariant::Deferred,
                ..
            }
        );
        if !deferred {
            parts = par.map(parts, |mut pt| {
                self.split_pv(ws, &states[pt.block], units, &mut pt);
                pt
            });
        }

        // Phase 4: add the partial sums and convert, per block.
        let mut totals: Vec<Vec<i64>> = states.iter().map(|st| vec![0i64; st.blk.m * d]).collect();
        for pt in &parts {
            for (t, &x) in totals[pt.block].iter_mut().zip(&pt.acc) {
                *t += x;
            }
        }
        let work: Vec<_> = states.into_iter().zip(totals).collect();
        let group = self.shape.group();
        par.for_each(work, |(st, acc)| {
            let unit = &units[st.blk.u];
            let mut outs: Vec<&mut [f32]> = st.outs.into_iter().map(|o| o.zeroed()).collect();
            let mut bad = false;
            for r in 0..st.blk.m {
                let (b, _, i) = self.row_at(st.blk.u, st.blk.r0 + r);
                let divisor = match &self.rows.soft {
                    _ if self.vis.valid(b, i) == 0 => 0,
                    Soft::Index {
                        variant: SoftmaxVariant::Deferred,
                        ..
                    } => st.sums[r] as u32,
                    _ => 255,
                };
                let orow = &mut outs[r % group][(r / group) * d..(r / group + 1) * d];
                output_row_channels(
                    &acc[r * d..(r + 1) * d],
                    divisor,
                    unit.s_v,
                    unit.v_mean,
                    orow,
                );
                bad |= !all_finite(orow);
            }
            if bad {
                self.bad_out.store(true, Ordering::Relaxed);
            }
        });
        Ok(())
    }

    /// A split part's P x V: its chunks' products summed into `pt.acc` (i64).
    fn split_pv(&self, ws: &Workspace, st: &SplitBlock<'_>, units: &[UnitRef<'_>], pt: &mut Part) {
        let d = self.shape.head_dim;
        let chunks = &units[st.blk.u].chunks[pt.chunks.clone()];
        let c0 = chunks[0].start;
        let m = st.blk.m;
        let mut scr = ws.take_scratch();
        pt.acc.clear();
        pt.acc.resize(m * d, 0);
        for c in chunks {
            let shifted = ChunkRef {
                start: HEAD_P + c.start - c0,
                ..*c
            };
            pv_chunk(
                self.kernel,
                &pt.p[..m * pt.ps],
                pt.ps,
                m,
                d,
                &shifted,
                &mut scr.o32,
                &mut scr.digits,
                &mut pt.acc,
            );
        }
        ws.give_scratch(scr);
    }

    /// Row `r` of a split part: table values of its visible keys against the block's common
    /// row maximum, into the part's P row; returns their sum.
    fn split_row_exponents(
        &self,
        st: &SplitBlock<'_>,
        pt: &mut Part,
        chunks: &[ChunkRef<'_>],
        lut: &Lut,
        r: usize,
    ) -> u64 {
        let (c0, width) = span(chunks);
        let (b, _, i) = self.row_at(st.blk.u, st.blk.r0 + r);
        let here = self.vis.valid(b, i).saturating_sub(c0).min(width);
        let srow = &mut pt.scores[r * pt.ss..r * pt.ss + HEAD + width];
        let prow = &mut pt.p[r * pt.ps + HEAD_P - 1..r * pt.ps + HEAD_P + width];
        if here == 0 {
            prow.fill(0);
            return 0;
        }
        // The header's last entry holds the common maximum, so the kernel's own row maximum
        // is it; with exponents every entry is first made relative to it (then the maximum
        // is 0).
        let m = st.max[r];
        if chunks.iter().any(|c| c.k_exp.is_some()) {
            relative_to(&mut srow[HEAD..], c0, here, chunks, m);
            srow[HEAD - 1] = 0;
        } else {
            srow[HEAD - 1] = m as i32;
        }
        let e = self.kernel.index_softmax_row(
            &srow[HEAD - 1..],
            1 + here,
            lut,
            st.params[r].threshold,
            prow,
        );
        // The header's own table value is LUT[0] = 255.
        (e - 255) as u64
    }

    /// Paper-simulation or float softmax of a split block: each row gathered whole from the
    /// parts, through [`Engine::softmax_row`], and scattered back.
    fn split_full_rows(&self, st: &SplitBlock<'_>, unit: &UnitRef<'_>, parts: &mut [Part]) {
        let last = parts[parts.len() - 1].chunks.end;
        let chunks = &unit.chunks[..last];
        let (_, ncols) = span(chunks);
        let mut srow = vec![0i32; ncols];
        let mut prow = vec![0u8; ncols];
        let mut frow = Vec::new();
        let exps = chunks.iter().any(|c| c.k_exp.is_some());
        for r in 0..st.blk.m {
            for pt in parts.iter() {
                let (c0, width) = span(&unit.chunks[pt.chunks.clone()]);
                srow[c0..c0 + width]
                    .copy_from_slice(&pt.scores[r * pt.ss + HEAD..r * pt.ss + HEAD + width]);
            }
            let (b, _, i) = self.row_at(st.blk.u, st.blk.r0 + r);
            let valid = self.vis.valid(b, i);
            // As in `block`: IndexSoftmax reads rows with key exponents made relative to
            // their maximum; the float softmax applies the exponents itself.
            if exps {
                if let Soft::Index { .. } = self.rows.soft {
                    relative_wide_row(&mut srow, valid, chunks);
                }
            }
            let exp2 = |j| key_exp(chunks, j);
            let (_, ok) = self.rows.row(
                self.kernel,
                &srow,
                valid,
                &mut prow,
                st.params[r],
                exp2,
                &mut frow,
            );
            if !ok {
                self.overflow.store(true, Ordering::Relaxed);
            }
            for pt in parts.iter_mut() {
                let (c0, width) = span(&unit.chunks[pt.chunks.clone()]);
                pt.p[r * pt.ps + HEAD_P..r * pt.ps + HEAD_P + width]
                    .copy_from_slice(&prow[c0..c0 + width]);
            }
        }
    }
}

/// A block whose keys are split over tasks: its queries and what the splits combine.
struct SplitBlock<'o> {
    blk: Block,
    outs: Vec<Fresh<'o, f32>>,
    q8: Vec<i8>,
    params: Vec<RowParam>,
    /// Row maxima (i64: scores with exponents can pass i32).
    max: Vec<i64>,
    /// Row sums of table values.
    sums: Vec<u64>,
}

/// One split of one block: its own score and P rows (a header, then the split's keys) and its
/// partial P x V.
struct Part {
    block: usize,
    chunks: std::ops::Range<usize>,
    scores: crate::memory::AlignedVec<i32>,
    p: crate::memory::AlignedVec<u8>,
    ss: usize,
    ps: usize,
    max: Vec<i64>,
    sums: Vec<u64>,
    acc: Vec<i64>,
}

impl Part {
    fn new(block: usize, chunks: std::ops::Range<usize>) -> Part {
        Part {
            block,
            chunks,
            scores: Default::default(),
            p: Default::default(),
            ss: 0,
            ps: 0,
            max: Vec::new(),
            sums: Vec::new(),
            acc: Vec::new(),
        }
    }
}

/// First key and width (through the last chunk's capacity) of consecutive chunks.
fn span(chunks: &[ChunkRef<'_>]) -> (usize, usize) {
    let c0 = chunks[0].start;
    let last = chunks[chunks.len() - 1];
    (c0, last.start + last.cap - c0)
}

/// Entries of the score row header in split parts (64 bytes); the last holds the row maximum.
const HEAD: usize = 16;
/// Bytes of the probability row header in split parts (64, so that P stays on lines); the
/// last is the table value of the maximum.
const HEAD_P: usize = 64;

/// The plan of a call: the configured row override, or the rule; rows a multiple of the GQA
/// group.
fn make_plan(attn: &Attention, p: PlanInput, shape: &AttnShape) -> BlockPlan {
    let caches = CacheSizes::get();
    let mut plan = match attn.block_rows() {
        Some(rows) => BlockPlan::with_rows(rows.min(p.unit_rows), p, caches),
        None => BlockPlan::new(p, caches),
    };
    let group = shape.group();
    plan.rows = plan
        .rows
        .next_multiple_of(group)
        .min(p.unit_rows.max(group));
    plan
}

fn chunk_ref(c: &Chunk) -> ChunkRef<'_> {
    ChunkRef {
        start: c.start,
        len: c.len,
        cap: c.len,
        k: &c.k,
        v: &c.v,
        k_exp: None,
        v_exp: None,
    }
}

/// The key exponent of key `j` (0 where its chunk carries none).
fn key_exp(chunks: &[ChunkRef<'_>], j: usize) -> u8 {
    chunks
        .iter()
        .find(|c| j >= c.start && j < c.start + c.cap)
        .and_then(|c| c.k_exp.map(|e| e[j - c.start]))
        .unwrap_or(0)
}

/// The largest score, with its exponent applied (`S << e`), among the first `valid` keys of a
/// row whose entry 0 is key `c0`; `i64::MIN` when none is visible here.
fn wide_max(row: &[i32], c0: usize, valid: usize, chunks: &[ChunkRef<'_>]) -> i64 {
    let mut m = i64::MIN;
    for c in chunks {
        let n = valid.saturating_sub(c.start).min(c.len);
        let at = c.start - c0;
        match c.k_exp {
            None => {
                if let Some(&x) = row[at..at + n].iter().max() {
                    m = m.max(x as i64);
                }
            }
            Some(e) => {
                for (&x, &e) in row[at..at + n].iter().zip(e) {
                    m = m.max((x as i64) << e);
                }
            }
        }
    }
    m
}

/// Rewrites a score row with per-key exponents so that the kernel's IndexSoftmax computes the
/// contract's `D = min(M - (S << e), T)` (docs/numerics.md, section 7): each visible entry
/// becomes `max((S << e) - M, -(2^30 + 1))` (the row maximum becomes 0, and a difference past
/// `2^30 >= T` clamps to `T` either way). `M` is the row's maximum of `S << e`.
fn relative_wide_row(row: &mut [i32], valid: usize, chunks: &[ChunkRef<'_>]) {
    let m = wide_max(row, 0, valid, chunks);
    if m != i64::MIN {
        relative_to(row, 0, valid, chunks, m);
    }
}

/// The rewrite of [`relative_wide_row`] against a given maximum `m`, for the first `valid`
/// entries of `row` (entry 0 is key `c0`).
fn relative_to(row: &mut [i32], c0: usize, valid: usize, chunks: &[ChunkRef<'_>], m: i64) {
    const FLOOR: i64 = -(1 << 30) - 1;
    for c in chunks {
        let at = c.start - c0;
        let n = valid.saturating_sub(c.start - c0).min(c.len);
        let exps = c.k_exp;
        for (j, x) in row[at..at + n].iter_mut().enumerate() {
            let e = exps.map_or(0, |e| e[j]);
            *x = (((*x as i64) << e) - m).max(FLOOR) as i32;
        }
    }
}

/// Adds `P[:, chunk] x V_chunk` to `acc` (i64, `m x d`): one exact i32 product, or with
/// per-key value exponents `f` one product per byte of `P << f` (docs/numerics.md, section 7).
/// `p` holds the block's P rows `ps` apart; the chunk's columns start at `c.start`.
#[allow(clippy::too_many_arguments)]
fn pv_chunk(
    kernel: &dyn KernelImpl,
    p: &[u8],
    ps: usize,
    m: usize,
    d: usize,
    c: &ChunkRef<'_>,
    o32: &mut crate::memory::AlignedVec<i32>,
    digits: &mut crate::memory::AlignedVec<u8>,
    acc: &mut [i64],
) {
    debug_assert!(c.cap <= MAX_K_U8S8);
    o32.grow(m * d);
    let o = &mut o32[..m * d];
    let max_exp = c
        .v_exp
        .map_or(0, |e| e[..c.len].iter().copied().max().unwrap_or(0));
    if max_exp == 0 {
        kernel.gemm_u8s8_packed_strided(&p[c.start..], ps, m, c.v, o);
        for (a, &x) in acc.iter_mut().zip(o.iter()) {
            *a += x as i64;
        }
        return;
    }
    let exps = c.v_exp.expect("max_exp > 0 implies exponents");
    let cap = c.cap;
    digits.grow(m * cap);
    // P << f has at most 8 + max_exp bits: one u8 x s8 product per byte.
    let bytes = (8 + max_exp as usize).div_ceil(8);
    for byte in 0..bytes {
        for r in 0..m {
            let prow = &p[r * ps + c.start..r * ps + c.start + cap];
            let drow = &mut digits[r * cap..(r + 1) * cap];
            for ((dst, &pv), &e) in drow.iter_mut().zip(prow).zip(exps) {
                *dst = (((pv as u32) << e) >> (8 * byte)) as u8;
            }
        }
        kernel.gemm_u8s8_packed_strided(&digits[..m * cap], cap, m, c.v, o);
        for (a, &x) in acc.iter_mut().zip(o.iter()) {
            *a += (x as i64) << (8 * byte);
        }
    }
}

/// The scales of queries attending to a cache (K and V scales come from the cache).
fn cache_q_scales(
    par: Par,
    attn: &Attention,
    shape: &AttnShape,
    q: &TensorView<'_, f32>,
) -> Result<Scales> {
    use super::Granularity;
    let quant = attn.quantization();
    let maxima = par.map((0..shape.batch * shape.heads).collect(), |bh| {
        (0..shape.q_len)
            .map(|i| max_abs_bits(q.row(bh / shape.heads, bh % shape.heads, i)))
            .max()
            .unwrap_or(0)
    });
    if maxima.iter().any(|&m| m >= f32::INFINITY.to_bits()) {
        return Err(prep::non_finite_in(q, "Q").unwrap_or(Error::NonFinite {
            tensor: "Q",
            index: 0,
            value: f32::NAN,
        }));
    }
    use crate::ops::quant::scale_of_max_bits;
    let qs = match quant.q {
        Granularity::PerRow => QScale::Row,
        Granularity::PerHead => {
            QScale::Head(maxima.iter().map(|&m| scale_of_max_bits(m)).collect())
        }
        _ => QScale::Tensor(scale_of_max_bits(maxima.iter().copied().max().unwrap_or(0))),
    };
    Ok(Scales {
        q: qs,
        k: Vec::new(),
        v: Vec::new(),
        v_width: 1,
        k_mean: Vec::new(),
        v_mean: Vec::new(),
    })
}
