//! What an integer call does before its row blocks (docs/numerics.md, sections 1 and 6): the
//! scales of Q, K and V at the configured granularity, the mean key of each head when K is
//! smoothed, and the keys and values of every unit quantized and packed in chunks, one task per
//! chunk (quantizing straight into the rows the packer reads, so each chunk's f32 keys are read
//! once and its int8 copy stays in the worker's cache).

use super::mask::Visibility;
use super::workspace::{Scratch, Workspace};
use super::{AttnShape, Granularity, Quantization};
use crate::error::{Error, Result};
use crate::exec::Par;
use crate::kernels::{KernelImpl, LayoutId, PackedB};
use crate::ops::quant::{
    check_finite, divisors_of, max_abs_bits, quantize_centered, quantize_with_divisors,
    quantize_with_scale, scale_of_max_bits, QTensor,
};
use crate::tensor::TensorView;

/// Rows of one task of the statistics pass (and the order in which key sums are added).
pub(crate) const SUM_ROWS: usize = 256;

/// How each query row's scale is found.
#[derive(Clone, Debug)]
pub(crate) enum QScale {
    /// One scale for every row.
    Tensor(f32),
    /// One scale per query head of each batch row, `b * heads + h`.
    Head(Vec<f32>),
    /// Each row's own `max |x| / 127`, computed with the row.
    Row,
    /// One scale per query head, computed by the head's unit (the one-pass schedule).
    Unit,
}

impl QScale {
    /// The scale of a row of head `bh` (head `hl` of its unit's group, whose own scales are
    /// `unit`) whose largest magnitude (as bits) is `row_max` (only read for [`QScale::Row`]).
    pub fn of(&self, bh: usize, unit: &[f32], hl: usize, row_max: impl FnOnce() -> u32) -> f32 {
        match self {
            QScale::Tensor(s) => *s,
            QScale::Head(s) => s[bh],
            QScale::Row => scale_of_max_bits(row_max()),
            QScale::Unit => unit[hl],
        }
    }
}

/// The scales of one call.
#[derive(Clone, Debug)]
pub(crate) struct Scales {
    pub q: QScale,
    /// Per unit (`b * kv_heads + g`).
    pub k: Vec<f32>,
    /// Per unit, `v_width` values each: one scale, or one per channel (per-channel V).
    pub v: Vec<f32>,
    pub v_width: usize,
    /// Per unit, `d` values each: the mean key subtracted before quantizing K (empty when K is
    /// not smoothed).
    pub k_mean: Vec<f32>,
    /// Per unit, `d` values each: the mean value subtracted before quantizing V and added back
    /// to the output (empty when V is not smoothed).
    pub v_mean: Vec<f32>,
}

/// The scales of int8 inputs given by the caller (one per tensor).
pub(crate) fn given_scales(q: &QTensor, k: &QTensor, v: &QTensor, units: usize) -> Scales {
    Scales {
        q: QScale::Tensor(q.scale()),
        k: vec![k.scale(); units],
        v: vec![v.scale(); units],
        v_width: 1,
        k_mean: Vec::new(),
        v_mean: Vec::new(),
    }
}

/// One task of the statistics pass: rows `i0..i1` of head `h` of batch row `b` of a tensor.
#[derive(Clone, Copy)]
struct StatTask {
    tensor: usize,
    b: usize,
    h: usize,
    i0: usize,
    i1: usize,
}

/// The scales of f32 inputs. Reads Q (unless its scales are per row), K and V once each (K
/// twice when smoothed: its mean first, then the largest magnitude of the smoothed keys).
///
/// # Errors
/// [`Error::NonFinite`] naming the first NaN or infinity of Q, then K, then V in their
/// logical (contiguous) order.
pub(crate) fn float_scales(
    par: Par,
    shape: &AttnShape,
    vis: &Visibility,
    quant: Quantization,
    q: &TensorView<'_, f32>,
    k: &TensorView<'_, f32>,
    v: &TensorView<'_, f32>,
) -> Result<Scales> {
    let (b_n, h_n, g_n, d) = (shape.batch, shape.heads, shape.kv_heads, shape.head_dim);
    let units = b_n * g_n;
    let views = [q, k, v];
    // Tasks of about 16 Ki values (whole rows), over every head of every tensor that needs a
    // maximum: Q unless per row, V always, K unless smoothed (then it is the second pass).
    let rows_per_task = (16384 / d.max(1)).max(1);
    let mut tasks = Vec::new();
    for (t, heads, len) in [
        (0, h_n, shape.q_len),
        (1, g_n, shape.kv_len),
        (2, g_n, shape.kv_len),
    ] {
        let wanted = match t {
            0 => quant.q != Granularity::PerRow,
            1 => !quant.smooth_k,
            _ => !fine_v(quant),
        };
        if !wanted {
            continue;
        }
        for b in 0..b_n {
            for h in 0..heads {
                for i0 in (0..len).step_by(rows_per_task) {
                    tasks.push(StatTask {
                        tensor: t,
                        b,
                        h,
                        i0,
                        i1: (i0 + rows_per_task).min(len),
                    });
                }
            }
        }
    }
    let maxima = par.map(tasks.clone(), |t| {
        (t.i0..t.i1)
            .map(|i| max_abs_bits(views[t.tensor].row(t.b, t.h, i)))
            .max()
            .unwrap_or(0)
    });
    let mut head_max = [vec![0u32; b_n * h_n], vec![0u32; units], vec![0u32; units]];
    let heads_of = [h_n, g_n, g_n];
    for (t, m) in tasks.iter().zip(&maxima) {
        let at = t.b * heads_of[t.tensor] + t.h;
        head_max[t.tensor][at] = head_max[t.tensor][at].max(*m);
    }
    if head_max
        .iter()
        .flatten()
        .any(|&m| m >= f32::INFINITY.to_bits())
    {
        return Err(input_error(&views));
    }

    let per = |maxima: &[u32], per_tensor: bool| -> Vec<f32> {
        if per_tensor {
            let m = maxima.iter().copied().max().unwrap_or(0);
            vec![scale_of_max_bits(m); maxima.len()]
        } else {
            maxima.iter().map(|&m| scale_of_max_bits(m)).collect()
        }
    };
    // Per-channel statistics, one pass over each tensor that needs them (smoothed K; V with
    // per-channel scales or smoothing): block sums for the mean and each channel's extent.
    let col_tensors: Vec<(usize, bool)> = [(1, quant.smooth_k), (2, fine_v(quant))]
        .into_iter()
        .filter(|&(_, on)| on)
        .map(|(t, _)| (t, if t == 1 { true } else { quant.smooth_v }))
        .collect();
    let mut col = [Vec::new(), Vec::new(), Vec::new()];
    let mut means = [Vec::new(), Vec::new(), Vec::new()];
    if !col_tensors.is_empty() {
        let tasks: Vec<(usize, usize, usize)> = col_tensors
            .iter()
            .flat_map(|&(t, _)| {
                (0..units).flat_map(move |u| {
                    (0..shape.kv_len)
                        .step_by(SUM_ROWS)
                        .map(move |i0| (t, u, i0))
                })
            })
            .collect();
        let stats = par.map(tasks.clone(), |(t, u, i0)| {
            let i1 = (i0 + SUM_ROWS).min(shape.kv_len);
            ColStats::of_block(views[t], u / g_n, u % g_n, i0..i1, vis.keys[u / g_n], d)
        });
        // Blocks come back in task order: each unit's blocks in key order, as the mean's
        // definition adds them.
        let mut it = stats.into_iter();
        for &(t, smooth) in &col_tensors {
            for u in 0..units {
                let mut total = ColStats::new(d);
                for _ in (0..shape.kv_len).step_by(SUM_ROWS) {
                    total.merge(&it.next().expect("one result per task"));
                }
                let (mean, extent) = total.finish(vis.keys[u / g_n], smooth);
                means[t].extend(mean);
                col[t].extend(extent);
            }
        }
        if col.iter().flatten().any(|&m| m >= f32::INFINITY.to_bits()) {
            return Err(input_error(&views));
        }
    }
    let k_mean = std::mem::take(&mut means[1]);
    if quant.smooth_k {
        for (u, m) in col[1].chunks_exact(d.max(1)).enumerate() {
            head_max[1][u] = m.iter().copied().max().unwrap_or(0);
        }
    }

    // V at a finer grain: per-channel maxima of every unit (of the smoothed values when V is
    // smoothed), then its scales.
    let kv_tensor = quant.kv == Granularity::PerTensor;
    let (v_scales, v_width, v_mean) = if fine_v(quant) {
        let mut unit_col = std::mem::take(&mut col[2]);
        if kv_tensor {
            // One slice: every unit's channel c shares the tensor's channel maximum.
            let mut all = vec![0u32; d];
            for m in unit_col.chunks_exact(d.max(1)) {
                for (a, &x) in all.iter_mut().zip(m) {
                    *a = (*a).max(x);
                }
            }
            for m in unit_col.chunks_exact_mut(d.max(1)) {
                m.copy_from_slice(&all);
            }
        }
        let mut scales = Vec::with_capacity(units * d);
        for m in unit_col.chunks_exact(d.max(1)).take(units) {
            v_slice_scales(m, quant.v_per_channel, &mut scales);
        }
        let width = if quant.v_per_channel { d } else { 1 };
        (scales, width, std::mem::take(&mut means[2]))
    } else {
        (per(&head_max[2], kv_tensor), 1, Vec::new())
    };

    let q_scale = match quant.q {
        Granularity::PerRow => QScale::Row,
        Granularity::PerHead => QScale::Head(per(&head_max[0], false)),
        Granularity::PerTensor => QScale::Tensor(per(&head_max[0], true)[0]),
    };
    Ok(Scales {
        q: q_scale,
        k: per(&head_max[1], kv_tensor),
        v: v_scales,
        v_width,
        k_mean,
        v_mean,
    })
}

/// Whether V needs more than one maximum per head (per-channel scales or smoothing).
fn fine_v(quant: Quantization) -> bool {
    quant.v_per_channel || quant.smooth_v
}

/// Raises `max[c]` to the largest `|x[c] - mean[c]|` (as bits) of the rows (`|x[c]|` without a
/// mean). A NaN, an infinity or an overflowing difference shows as infinity's bits or more.
pub(crate) fn column_maxima<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    mean: Option<&[f32]>,
    max: &mut [u32],
) {
    for row in rows {
        match mean {
            Some(mean) => {
                for ((m, &x), &mu) in max.iter_mut().zip(row).zip(mean) {
                    *m = (*m).max((x - mu).to_bits() & 0x7fff_ffff);
                }
            }
            None => {
                for (m, &x) in max.iter_mut().zip(row) {
                    *m = (*m).max(x.to_bits() & 0x7fff_ffff);
                }
            }
        }
    }
}

/// A channel's scale never goes below the largest channel's maximum over this (a power of
/// two, so the floor is exact): per-channel scales stop where the narrowest channels would
/// only gain precision nobody needs, and a KV cache's later tokens, whose channels can grow
/// past the first append's, need at most 6 more exponent steps for a channel that was near 0.
pub(crate) const CHANNEL_FLOOR: f32 = 1.0 / 64.0;

/// Appends the V scales of one slice from its per-channel maxima (bits): one per channel
/// `max(m_c, max(M * CHANNEL_FLOOR, f32::MIN_POSITIVE)) / 127` (`M` the largest `m_c`; all 0
/// when `M` is 0 or subnormal), or the single scale `M / 127` (docs/numerics.md section 6).
pub(crate) fn v_slice_scales(col_max: &[u32], per_channel: bool, out: &mut Vec<f32>) {
    let big = col_max.iter().copied().max().unwrap_or(0);
    if !per_channel {
        out.push(scale_of_max_bits(big));
        return;
    }
    if f32::from_bits(big) < f32::MIN_POSITIVE {
        out.extend(col_max.iter().map(|_| 0.0));
        return;
    }
    let floor = (f32::from_bits(big) * CHANNEL_FLOOR)
        .max(f32::MIN_POSITIVE)
        .to_bits();
    out.extend(col_max.iter().map(|&m| scale_of_max_bits(m.max(floor))));
}

/// The error for input statistics that reached infinity: the first NaN or infinity of Q, then
/// K, then V; or, when every input is finite, the smoothed key or value whose difference from
/// its mean overflowed f32.
pub(crate) fn input_error(views: &[&TensorView<'_, f32>; 3]) -> Error {
    for (view, name) in views.iter().zip(["Q", "K", "V"]) {
        if let Some(e) = non_finite_in(view, name) {
            return e;
        }
    }
    Error::Overflow {
        what: "a smoothed key or value (minus its head's mean)",
        arithmetic: "f32",
        hint: "turn K or V smoothing off or scale the inputs down",
    }
}

/// Per-channel statistics of rows of one head (docs/numerics.md section 6), from one pass:
/// the f64 sum of each channel over the rows that are valid keys (added in row order), and
/// each channel's smallest and largest value over all rows, NaN noted apart. Rounding is
/// monotone, so over `x` in `[min, max]` the largest `|fl(x - mu)|` is at `min` or `max`: the
/// smoothed tensor's per-channel maximum needs no second pass.
pub(crate) struct ColStats {
    sums: Vec<f64>,
    min: Vec<f32>,
    max: Vec<f32>,
    nan: bool,
}

impl ColStats {
    fn new(d: usize) -> Self {
        ColStats {
            sums: vec![0.0; d],
            min: vec![f32::INFINITY; d],
            max: vec![f32::NEG_INFINITY; d],
            nan: false,
        }
    }

    /// Rows `rows` of head `h` of batch row `b`; rows from `valid` on only count for the
    /// extent (key padding takes no part in the mean).
    pub(crate) fn of_block(
        x: &TensorView<'_, f32>,
        b: usize,
        h: usize,
        rows: std::ops::Range<usize>,
        valid: usize,
        d: usize,
    ) -> Self {
        let mut s = ColStats::new(d);
        let mut nan = false;
        for i in rows {
            let row = x.row(b, h, i);
            if i < valid {
                for (a, &v) in s.sums.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
            for ((lo, hi), &v) in s.min.iter_mut().zip(s.max.iter_mut()).zip(row) {
                *lo = if v < *lo { v } else { *lo };
                *hi = if v > *hi { v } else { *hi };
                nan |= v.is_nan();
            }
        }
        s.nan = nan;
        s
    }

    /// Adds a later block (the sums in the order blocks are merged).
    fn merge(&mut self, o: &ColStats) {
        for (a, &x) in self.sums.iter_mut().zip(&o.sums) {
            *a += x;
        }
        for (a, &x) in self.min.iter_mut().zip(&o.min) {
            *a = a.min(x);
        }
        for (a, &x) in self.max.iter_mut().zip(&o.max) {
            *a = a.max(x);
        }
        self.nan |= o.nan;
    }

    /// The mean over `n` valid rows (`fl32(sum / n)`, 0 without rows; empty unless `smooth`)
    /// and each channel's largest `|x - mean|` (`|x|` unless `smooth`) as bits: infinity's
    /// bits or more for a NaN, an infinity or a difference that overflows.
    fn finish(&self, n: usize, smooth: bool) -> (Vec<f32>, Vec<u32>) {
        let mean: Vec<f32> = if smooth {
            self.sums
                .iter()
                .map(|&s| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
                .collect()
        } else {
            Vec::new()
        };
        let bits = |x: f32| x.to_bits() & 0x7fff_ffff;
        let extent = (0..self.sums.len())
            .map(|c| {
                if self.nan {
                    return u32::MAX;
                }
                let (lo, hi) = match mean.get(c) {
                    Some(&mu) => (self.min[c] - mu, self.max[c] - mu),
                    None => (self.min[c], self.max[c]),
                };
                bits(lo).max(bits(hi))
            })
            .collect();
        (mean, extent)
    }
}

/// The first NaN or infinity of one view, by logical index.
pub(crate) fn non_finite_in(view: &TensorView<'_, f32>, name: &'static str) -> Option<Error> {
    let [b_n, h_n, l, _] = view.dims();
    for b in 0..b_n {
        for h in 0..h_n {
            for i in 0..l {
                if let Err(Error::NonFinite { index, value, .. }) =
                    check_finite(name, view.row(b, h, i))
                {
                    return Some(Error::NonFinite {
                        tensor: name,
                        index: view.flat_index(b, h, i, index),
                        value,
                    });
                }
            }
        }
    }
    None
}

/// Keys `start..start + len` of one unit, quantized and packed for the kernel.
pub(crate) struct Chunk {
    pub start: usize,
    pub len: usize,
    pub k: PackedB,
    pub v: PackedB,
}

/// Where a call's keys and values come from.
#[derive(Clone, Copy)]
pub(crate) enum KvRows<'a> {
    /// f32 views, quantized with the scales (and smoothed with the means) of [`Scales`].
    Float {
        k: TensorView<'a, f32>,
        v: TensorView<'a, f32>,
    },
    /// Contiguous int8 tensors `[batch, kv_heads, kv_len, d]`.
    Int { k: &'a [i8], v: &'a [i8] },
}

/// Quantizes and packs the keys and values of every unit, `key_chunk` keys per chunk (only
/// the keys each batch row has), one task per chunk. Storage comes from the workspace.
///
/// # Errors
/// [`Error::Allocation`] if the packed chunks cannot be allocated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_chunks(
    par: Par,
    ws: &Workspace,
    kernel: &dyn KernelImpl,
    shape: &AttnShape,
    vis: &Visibility,
    scales: &Scales,
    rows: KvRows<'_>,
    key_chunk: usize,
) -> Result<Vec<Vec<Chunk>>> {
    let g_n = shape.kv_heads;
    let units = shape.batch * g_n;
    let chunk = key_chunk.max(1);
    let tasks: Vec<(usize, usize, usize)> = (0..units)
        .flat_map(|u| {
            let keys = vis.keys[u / g_n];
            (0..keys)
                .step_by(chunk)
                .map(move |start| (u, start, chunk.min(keys - start)))
        })
        .collect();
    let storage: Vec<(crate::memory::AlignedVec<i8>, crate::memory::AlignedVec<i8>)> = tasks
        .iter()
        .map(|&(_, _, len)| {
            let layout = kernel.layout();
            let d = shape.head_dim;
            (
                ws.take_packed(layout.k_len(len, d)),
                ws.take_packed(layout.v_len(len, d)),
            )
        })
        .collect();
    let work: Vec<_> = tasks.into_iter().zip(storage).collect();
    let made = par.map(work, |((u, start, len), (ks, vs))| {
        prepare_chunk(
            ws,
            kernel,
            shape,
            scales.unit(u, shape.head_dim),
            rows,
            u,
            start,
            len,
            ks,
            vs,
        )
        .map(|c| (u, c))
    });
    let mut per_unit: Vec<Vec<Chunk>> = (0..units).map(|_| Vec::new()).collect();
    let mut err = None;
    for r in made {
        match r {
            Ok((u, c)) => per_unit[u].push(c),
            Err(e) => err = err.or(Some(e)),
        }
    }
    if let Some(e) = err {
        give_back(ws, per_unit);
        return Err(e);
    }
    Ok(per_unit)
}

/// The scales one unit's keys and values are quantized with.
#[derive(Clone, Copy)]
pub(crate) struct UnitScales<'a> {
    pub k: f32,
    /// One scale, or one per channel.
    pub v: &'a [f32],
    /// The mean key subtracted before quantizing (smoothing), `d` values.
    pub k_mean: Option<&'a [f32]>,
    /// The mean value subtracted before quantizing (smoothing), `d` values.
    pub v_mean: Option<&'a [f32]>,
}

impl Scales {
    /// The scales of unit `u` (whose head dimension is `d`).
    pub fn unit(&self, u: usize, d: usize) -> UnitScales<'_> {
        let w = self.v_width;
        fn mean(m: &[f32], u: usize, d: usize) -> Option<&[f32]> {
            (!m.is_empty()).then(|| &m[u * d..(u + 1) * d])
        }
        UnitScales {
            k: self.k[u],
            v: &self.v[u * w..(u + 1) * w],
            k_mean: mean(&self.k_mean, u, d),
            v_mean: mean(&self.v_mean, u, d),
        }
    }
}

/// Keys `start..start + len` of unit `u`, quantized with `scales` and packed into the storage
/// `ks` and `vs` (resized; any earlier contents are overwritten).
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_chunk(
    ws: &Workspace,
    kernel: &dyn KernelImpl,
    shape: &AttnShape,
    scales: UnitScales<'_>,
    rows: KvRows<'_>,
    u: usize,
    start: usize,
    len: usize,
    mut ks: crate::memory::AlignedVec<i8>,
    mut vs: crate::memory::AlignedVec<i8>,
) -> Result<Chunk> {
    let d = shape.head_dim;
    let layout = kernel.layout();
    ks.try_resize_zeroed(layout.k_len(len, d), "packed keys")?;
    vs.try_resize_zeroed(layout.v_len(len, d), "packed values")?;
    pack_into(
        ws, kernel, shape, scales, rows, u, start, len, &mut ks, &mut vs,
    );
    Ok(Chunk {
        start,
        len,
        k: PackedB::from_parts(ks, len, d, layout),
        v: PackedB::from_parts(vs, d, len, layout),
    })
}

/// Keys `start..start + len` of unit `u`, quantized with `scales` and packed into `ks` and `vs`
/// (zeroed, exactly `k_len` and `v_len` of `len` keys long).
#[allow(clippy::too_many_arguments)]
fn pack_into(
    ws: &Workspace,
    kernel: &dyn KernelImpl,
    shape: &AttnShape,
    scales: UnitScales<'_>,
    rows: KvRows<'_>,
    u: usize,
    start: usize,
    len: usize,
    ks: &mut [i8],
    vs: &mut [i8],
) {
    let (g_n, d, lk) = (shape.kv_heads, shape.head_dim, shape.kv_len);
    let (b, g) = (u / g_n, u % g_n);
    let mut scr = ws.take_scratch();
    match rows {
        KvRows::Float { k, v } => {
            quantize_rows(
                &mut scr,
                len,
                d,
                |i| k.row(b, g, start + i),
                scales.k_mean,
                &[scales.k],
            );
            kernel.pack_k_into(&scr.rows8, len, d, ks);
            quantize_rows(
                &mut scr,
                len,
                d,
                |i| v.row(b, g, start + i),
                scales.v_mean,
                scales.v,
            );
            kernel.pack_v_into(&scr.rows8, len, d, vs);
        }
        KvRows::Int { k, v } => {
            let at = (u * lk + start) * d;
            kernel.pack_k_into(&k[at..at + len * d], len, d, ks);
            kernel.pack_v_into(&v[at..at + len * d], len, d, vs);
        }
    }
    ws.give_scratch(scr);
}

/// Chunks are aligned to this many keys when they are packed into one unit-wide operand: a
/// multiple of every layout's column panel (K) and depth step (V), so that a chunk's packed
/// bytes are whole runs of the unit's.
pub(crate) const MERGE_ALIGN: usize = 256;

/// As [`prepare_chunks`], one task per chunk of `key_chunk` keys (a multiple of
/// [`MERGE_ALIGN`]), but every unit's chunks are packed into one K and one V operand over all
/// its keys: the row blocks then multiply all keys in one product each, as a unit packed by
/// one task would, while the packing still runs on every worker. K's chunks are contiguous
/// runs of the unit's packed K; V's are one run in each column panel, so each task packs its
/// values into scratch and copies the runs.
///
/// # Errors
/// [`Error::Allocation`] if the packed operands cannot be allocated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_merged(
    par: Par,
    ws: &Workspace,
    kernel: &dyn KernelImpl,
    shape: &AttnShape,
    vis: &Visibility,
    scales: &Scales,
    rows: KvRows<'_>,
    key_chunk: usize,
) -> Result<Vec<Vec<Chunk>>> {
    debug_assert!(key_chunk > 0 && key_chunk.is_multiple_of(MERGE_ALIGN));
    let (g_n, d) = (shape.kv_heads, shape.head_dim);
    let units = shape.batch * g_n;
    let layout = kernel.layout();
    // One K and one V buffer per unit with keys; their bytes are all written by the tasks.
    let mut bufs = Vec::with_capacity(units);
    for u in 0..units {
        let keys = vis.keys[u / g_n];
        if keys == 0 {
            bufs.push(None);
            continue;
        }
        let mut ks = ws.take_packed(layout.k_len(keys, d));
        let mut vs = ws.take_packed(layout.v_len(keys, d));
        let grown = ks
            .try_set_len(layout.k_len(keys, d), "packed keys")
            .and_then(|()| vs.try_set_len(layout.v_len(keys, d), "packed values"));
        if let Err(e) = grown {
            ws.give_packed(ks);
            ws.give_packed(vs);
            for (k, v) in bufs.into_iter().flatten() {
                ws.give_packed(k);
                ws.give_packed(v);
            }
            return Err(e);
        }
        bufs.push(Some((ks, vs)));
    }
    // The tasks: each chunk with its run of K and its run in every panel of V.
    let mut tasks = Vec::new();
    for (u, buf) in bufs.iter_mut().enumerate() {
        let Some((ks, vs)) = buf else { continue };
        let keys = vis.keys[u / g_n];
        let starts: Vec<usize> = (0..keys).step_by(key_chunk).collect();
        let mut k_rest: &mut [i8] = ks;
        let mut v_runs: Vec<Vec<&mut [i8]>> = starts.iter().map(|_| Vec::new()).collect();
        for panel in vs.chunks_mut(v_run_len(layout, keys, d)) {
            let mut rest = panel;
            for (c, &start) in starts.iter().enumerate() {
                let len = key_chunk.min(keys - start);
                let (run, after) = rest.split_at_mut(v_run_len(layout, len, d));
                v_runs[c].push(run);
                rest = after;
            }
        }
        for (c, runs) in v_runs.into_iter().enumerate() {
            let start = starts[c];
            let len = key_chunk.min(keys - start);
            let (k_run, after) = k_rest.split_at_mut(layout.k_len(len, d));
            k_rest = after;
            tasks.push((u, start, len, k_run, runs));
        }
    }
    let failed = par.map(tasks, |(u, start, len, k_run, v_runs)| {
        let mut vbuf = ws.take_packed(layout.v_len(len, d));
        if let Err(e) = vbuf.try_resize_zeroed(layout.v_len(len, d), "packed values") {
            ws.give_packed(vbuf);
            return Some(e);
        }
        k_run.fill(0);
        let scales = scales.unit(u, d);
        pack_into(
            ws, kernel, shape, scales, rows, u, start, len, k_run, &mut vbuf,
        );
        // The chunk's panels, in order, are its runs of the unit's V.
        let mut src: &[i8] = &vbuf;
        for run in v_runs {
            let (part, rest) = src.split_at(run.len());
            run.copy_from_slice(part);
            src = rest;
        }
        ws.give_packed(vbuf);
        None
    });
    let chunks: Vec<Vec<Chunk>> = bufs
        .into_iter()
        .enumerate()
        .map(|(u, buf)| match buf {
            None => Vec::new(),
            Some((ks, vs)) => {
                let keys = vis.keys[u / g_n];
                vec![Chunk {
                    start: 0,
                    len: keys,
                    k: PackedB::from_parts(ks, keys, d, layout),
                    v: PackedB::from_parts(vs, d, keys, layout),
                }]
            }
        })
        .collect();
    if let Some(e) = failed.into_iter().flatten().next() {
        give_back(ws, chunks);
        return Err(e);
    }
    Ok(chunks)
}

/// The bytes `len` keys (a multiple of the depth step unless they end the operand) take in
/// each column panel of packed V with `d` columns; for `len` = all keys, a panel's size. The
/// plain layout is one panel.
fn v_run_len(layout: LayoutId, len: usize, d: usize) -> usize {
    match layout.geoms() {
        Some((_, gv)) => gv.nr * gv.padded(len) * gv.bytes,
        None => len * d,
    }
}

/// The scales one unit computed from its own rows (see [`own_unit_scales`]).
#[derive(Default)]
pub(crate) struct OwnScales {
    pub k: f32,
    pub v: Vec<f32>,
    /// The scale of each query head of the unit's group (per-head Q scales only).
    pub q: Vec<f32>,
    pub k_mean: Vec<f32>,
    pub v_mean: Vec<f32>,
}

impl OwnScales {
    /// The scales the unit's keys and values are quantized with.
    pub fn unit(&self) -> UnitScales<'_> {
        UnitScales {
            k: self.k,
            v: &self.v,
            k_mean: (!self.k_mean.is_empty()).then_some(&self.k_mean[..]),
            v_mean: (!self.v_mean.is_empty()).then_some(&self.v_mean[..]),
        }
    }
}

/// The scales of unit `u` computed from its own rows, for a call whose K/V scales are per
/// head (Q's per head too when so configured): K's (after the mean key, when smoothing), V's
/// (per channel and after the mean value, when so configured) and the scale of each query
/// head of its group. The same values as [`float_scales`] computes for the unit, by the same
/// definitions. `None` if a statistic is not finite (the caller reports it with
/// [`input_error`]).
pub(crate) fn own_unit_scales(
    shape: &AttnShape,
    vis: &Visibility,
    quant: Quantization,
    q: &TensorView<'_, f32>,
    k: &TensorView<'_, f32>,
    v: &TensorView<'_, f32>,
    u: usize,
) -> Option<OwnScales> {
    let (g_n, d) = (shape.kv_heads, shape.head_dim);
    let (b, g) = (u / g_n, u % g_n);
    let lk = shape.kv_len;
    let keys = vis.keys[b];
    let max_rows = |view: &TensorView<'_, f32>, h: usize, n: usize| {
        (0..n)
            .map(|i| max_abs_bits(view.row(b, h, i)))
            .max()
            .unwrap_or(0)
    };
    let inf = f32::INFINITY.to_bits();
    let mut own = OwnScales::default();
    // The unit's per-channel statistics, block by block in key order (as `float_scales`).
    let stats = |x: &TensorView<'_, f32>| {
        let mut total = ColStats::new(d);
        for i0 in (0..lk).step_by(SUM_ROWS) {
            total.merge(&ColStats::of_block(
                x,
                b,
                g,
                i0..(i0 + SUM_ROWS).min(lk),
                keys,
                d,
            ));
        }
        total
    };
    let k_max = if quant.smooth_k {
        let (mean, extent) = stats(k).finish(keys, true);
        own.k_mean = mean;
        extent.into_iter().max().unwrap_or(0)
    } else {
        max_rows(k, g, lk)
    };
    let mut bad = k_max >= inf;
    own.k = scale_of_max_bits(k_max);
    if fine_v(quant) {
        let (mean, extent) = stats(v).finish(keys, quant.smooth_v);
        own.v_mean = mean;
        bad |= extent.iter().any(|&x| x >= inf);
        v_slice_scales(&extent, quant.v_per_channel, &mut own.v);
    } else {
        let m = max_rows(v, g, lk);
        bad |= m >= inf;
        own.v.push(scale_of_max_bits(m));
    }
    let group = shape.group();
    if quant.q == Granularity::PerHead {
        for h in g * group..(g + 1) * group {
            let m = max_rows(q, h, shape.q_len);
            bad |= m >= inf;
            own.q.push(scale_of_max_bits(m));
        }
    }
    (!bad).then_some(own)
}

/// The mean of rows `0..n` by [`head_means`]'s definition (blocks of [`SUM_ROWS`] added in
/// order).
pub(crate) fn unit_mean<'a>(row: impl Fn(usize) -> &'a [f32], n: usize, d: usize) -> Vec<f32> {
    let mut total = vec![0f64; d];
    for i0 in (0..n).step_by(SUM_ROWS) {
        let mut s = vec![0f64; d];
        for i in i0..(i0 + SUM_ROWS).min(n) {
            for (acc, &x) in s.iter_mut().zip(row(i)) {
                *acc += x as f64;
            }
        }
        for (t, x) in total.iter_mut().zip(s) {
            *t += x;
        }
    }
    total
        .iter()
        .map(|&s| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
        .collect()
}

/// Returns the storage of a call's chunks to the workspace.
pub(crate) fn give_back(ws: &Workspace, chunks: Vec<Vec<Chunk>>) {
    for c in chunks.into_iter().flatten() {
        ws.give_packed(c.k.into_storage());
        ws.give_packed(c.v.into_storage());
    }
}

/// `len` rows of `d` values from `row(i)`, minus `mean` when given, quantized with `scales`
/// (one, or one per channel) into `scr.rows8` (row-major).
fn quantize_rows<'a>(
    scr: &mut Scratch,
    len: usize,
    d: usize,
    row: impl Fn(usize) -> &'a [f32],
    mean: Option<&[f32]>,
    scales: &[f32],
) {
    scr.rows8.resize(len * d, 0);
    let mut div = Vec::new();
    if scales.len() > 1 || mean.is_some() {
        divisors_of(scales, d, &mut div);
    }
    for (i, dst) in scr.rows8.chunks_exact_mut(d.max(1)).take(len).enumerate() {
        match mean {
            Some(mean) => quantize_centered(row(i), mean, &div, dst),
            None if div.is_empty() => quantize_with_scale(row(i), scales[0], dst),
            None => quantize_with_divisors(row(i), &div, dst),
        }
    }
}
