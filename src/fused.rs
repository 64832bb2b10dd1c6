//! The fused row-block schedule of the integer pipelines (INT8 and IntAttention).
//!
//! K and V of every key/value head are packed once into the kernel's own layout (in parallel
//! over key/value heads, and shared by all query heads of a GQA group). Then each block of
//! query rows runs scores -> softmax -> P x V while its score block is still in cache, so no
//! `Lq x Lk` buffer ever exists: a worker's working set is one row block. Work is spread over
//! (batch, head, row block), so a single long head still uses every core.
//!
//! Every step is the unfused pipeline's integer arithmetic (the per-row softmax and the output
//! conversion are the very functions [`crate::attention`] calls), so the f32 outputs are
//! bit-identical to [`Schedule::Unfused`](crate::Schedule::Unfused). Work is skipped only where
//! its result is known to be zero: keys past a batch row's key length are never packed, and a
//! causal block stops at the key chunk holding its last row's last visible key.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::aligned::{AlignedVec, Fresh};
use crate::attention::{kv_head_index, output_row, Attention, AttnShape, IntSoftmax};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, PackedB, MAX_K_U8S8};
use crate::quant::QTensor;
use crate::softmax::{Lut, MAX_ROW_LEN};
use crate::threads;

/// Row blocks are multiples of this: SIMD GEMM micro-kernels work on 8 or 16 rows at a time,
/// AMX on tiles of 16 (a 40-row block ran as 48 there, with the last 8 rows copied).
pub const ROW_TILE: usize = 16;
/// Smallest row block (unless the head has fewer query rows).
pub const MIN_BLOCK_ROWS: usize = 16;
/// Largest row block: past this the score block no longer gains reuse of the K/V panels.
pub const MAX_BLOCK_ROWS: usize = 256;
/// Largest causal row block: every row of a block computes scores up to the block's last row,
/// so the masked triangle inside a block (on average half a block per row) is wasted work.
pub const CAUSAL_MAX_BLOCK_ROWS: usize = 64;
/// Longest key chunk of P x V: `255 * 128 * 65,536` fits i32, so a chunk's O32 is exact
/// (`MAX_K_U8S8` is the real limit; a power of two keeps chunks aligned).
const PV_SPLIT: usize = 65_536;
const _: () = assert!(PV_SPLIT <= MAX_K_U8S8);
/// A packed K/V pays off only when enough query rows reuse it: packing touches every K and V
/// byte once, about what a few rows of GEMM cost (decode, `Lq = 1`, is better off unpacked).
const PACK_MIN_ROWS: usize = 16;

/// Data cache sizes that set the row block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level 1 data cache, bytes.
    pub l1d: usize,
    /// Level 2 cache, bytes.
    pub l2: usize,
}

impl CacheSizes {
    /// Used where the OS does not say (non-Linux, or sysfs unreadable).
    pub const DEFAULT: CacheSizes = CacheSizes {
        l1d: 32 << 10,
        l2: 1 << 20,
    };

    /// This machine's sizes, read once per process: on Linux from
    /// `/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}`, else [`Self::DEFAULT`]
    /// (per level, so a missing L2 entry keeps the default L2 only).
    pub fn get() -> CacheSizes {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| {
            if cfg!(target_os = "linux") {
                Self::from_sysfs("/sys/devices/system/cpu/cpu0/cache")
            } else {
                Self::DEFAULT
            }
        })
    }

    /// Reads a sysfs cache directory laid out like Linux's (one `index*` folder per cache).
    pub fn from_sysfs(dir: impl AsRef<std::path::Path>) -> CacheSizes {
        let mut sizes = Self::DEFAULT;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return sizes;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("index") {
                continue;
            }
            let read = |f: &str| {
                std::fs::read_to_string(entry.path().join(f))
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(bytes) = parse_cache_size(&size) else {
                continue;
            };
            if kind != "Data" && kind != "Unified" {
                continue;
            }
            match level.as_str() {
                "1" => sizes.l1d = bytes,
                "2" => sizes.l2 = bytes,
                _ => {}
            }
        }
        sizes
    }
}

/// Parses sysfs cache sizes such as `48K`, `2048K`, `1M` or `512`; `None` for anything else
/// (and for 0, which would give empty blocks).
pub fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1usize << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = digits.parse().ok()?;
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// How a head is cut: query rows per block and keys per K/V chunk.
///
/// The rule (in [`BlockPlan::new`]):
/// - `rows`: the largest multiple of [`ROW_TILE`] whose working set, `rows * (5 Lk + 12 d)`
///   bytes (i32 scores and u8 P per key, an i64 accumulator and an i32 partial per output
///   column), fits what L2 has for it. Where packed K and V (`2 Lk d` bytes) fit three quarters
///   of L2 together with a block of `MIN_BLOCK_ROWS`, the block gets the rest of those three
///   quarters, so that K and V stay in L2 from one block to the next (the last quarter is for
///   Q, the output rows and a hyperthread sibling). Otherwise K and V stream from L3 for every
///   block anyway, and the block takes half of L2 to stream them fewer times. Clamped to
///   `[MIN_BLOCK_ROWS, MAX_BLOCK_ROWS]` (`CAUSAL_MAX_BLOCK_ROWS` when causal) and to `Lq`.
///   Measured on the Xeon (2 MiB L2), L = 4096, d = 128, rows 16 / 32 / 48 in rotated
///   orders: 16 was the fastest on 1, 4 and 16 threads (16 threads: 1.24-1.33 ms against
///   1.46-1.57 ms for 32); half of L2 alone had chosen 32. With several workers, a smaller multiple of [`ROW_TILE`] (never below
///   `MIN_BLOCK_ROWS`) is taken where it cuts the rows of the busiest worker by more than 3 %.
/// - `key_chunk`: without a causal mask, all keys at once (one GEMM per block), split only past
///   65,536 keys so that every P x V chunk is exact in i32. With a causal mask, the multiple of
///   64 whose `rows x key_chunk` i32 + u8 tile fits L1, clamped to `[64, 1024]`: a block then
///   computes only the chunks up to its last visible key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    pub rows: usize,
    pub key_chunk: usize,
}

impl BlockPlan {
    pub fn new(shape: &AttnShape, causal: bool, workers: usize, caches: CacheSizes) -> BlockPlan {
        let (lq, lk, d) = (shape.q_len.max(1), shape.kv_len, shape.head_dim);
        let per_row = 5 * lk + 12 * d;
        let max_rows = if causal {
            CAUSAL_MAX_BLOCK_ROWS
        } else {
            MAX_BLOCK_ROWS
        };
        let kv = 2 * lk * d;
        let resident = caches.l2 / 4 * 3;
        let room = if kv + MIN_BLOCK_ROWS * per_row <= resident {
            resident - kv
        } else {
            caches.l2 / 2
        };
        let fit = room / per_row.max(1);
        let mut rows = (fit / ROW_TILE * ROW_TILE).clamp(MIN_BLOCK_ROWS, max_rows);
        let heads = shape.batch * shape.heads;
        if workers > 1 && rows < lq {
            // The busiest worker runs ceil(blocks / workers) blocks of `r` rows. Smaller blocks
            // can even that out (at L = 4096 on 16 workers: 103 blocks of 40 rows leave the
            // busiest worker 7 blocks, 280 rows, where 128 blocks of 32 give every worker 256),
            // but each block streams all of K and V once, so a smaller block must cut the
            // busiest worker's rows by more than 3 % to be taken.
            // Below 4 blocks per worker a smaller block is also taken at equal load: workers
            // that run at different speeds (big and little cores, a busy hyperthread sibling)
            // then even out by taking more or fewer blocks.
            let per_worker = |r: usize| (heads * lq.div_ceil(r)).div_ceil(workers);
            let load = |r: usize| per_worker(r) * r;
            let mut best = (load(rows), rows);
            let mut r = rows;
            while r > MIN_BLOCK_ROWS {
                r -= ROW_TILE;
                if (load(r) as f64) < 0.97 * best.0 as f64
                    || (per_worker(best.1) < 4 && load(r) <= best.0)
                {
                    best = (load(r), r);
                }
            }
            rows = best.1;
        } else if workers > 1 && heads < workers && lq > MIN_BLOCK_ROWS {
            // One block per head would leave workers idle: split each head.
            let blocks = workers.div_ceil(heads);
            rows = lq.div_ceil(blocks).div_ceil(ROW_TILE) * ROW_TILE;
            rows = rows.max(MIN_BLOCK_ROWS);
        }
        Self::with_rows(rows.min(lq), causal, caches)
    }

    /// The plan for blocks of `rows` query rows (at least 1), key chunks as [`BlockPlan::new`]
    /// chooses them.
    pub fn with_rows(rows: usize, causal: bool, caches: CacheSizes) -> BlockPlan {
        let rows = rows.max(1);
        let key_chunk = if causal {
            let fit = caches.l1d / (5 * rows);
            (fit / 64 * 64).clamp(64, 1024)
        } else {
            PV_SPLIT
        };
        BlockPlan { rows, key_chunk }
    }
}

/// A K or V chunk as the kernel takes it: packed, or the caller's rows as they are.
enum Operand<'a> {
    Packed(PackedB),
    Plain(&'a [i8]),
}

/// Keys `start..start + len` of one key/value head.
struct Chunk<'a> {
    start: usize,
    len: usize,
    k: Operand<'a>,
    v: Operand<'a>,
}

impl Chunk<'_> {
    /// `c[m x d] = p[m x len] * V_chunk`.
    fn pv(&self, kernel: &dyn Kernel, p: &[u8], m: usize, d: usize, c: &mut [i32]) {
        match &self.v {
            Operand::Packed(b) => kernel.gemm_u8s8_packed(p, m, b, c),
            Operand::Plain(b) => kernel.gemm_u8s8(p, b, m, d, self.len, c),
        }
    }

    /// `c = a[m x d] * K_chunk^T` with score rows `ldc` apart: `len` (dense) or
    /// [`Self::s_stride`].
    fn scores(&self, kernel: &dyn Kernel, a: &[i8], m: usize, d: usize, c: &mut [i32], ldc: usize) {
        match &self.k {
            Operand::Packed(b) => kernel.gemm_s8s8_packed_strided(a, m, b, c, ldc),
            Operand::Plain(b) => kernel.gemm_s8s8_nt(a, b, m, self.len, d, c),
        }
    }

    /// Row stride of the score block of this chunk when it is the only one.
    fn s_stride(&self, kernel: &dyn Kernel) -> usize {
        match &self.k {
            Operand::Packed(_) => kernel.s_row_stride(self.len),
            Operand::Plain(_) => self.len,
        }
    }

    /// Row stride of the P block of this chunk when it is the only one (see [`Self::pv_in`]).
    fn p_stride(&self, kernel: &dyn Kernel) -> usize {
        match &self.v {
            Operand::Packed(_) => kernel.p_row_stride(self.len),
            Operand::Plain(_) => self.len,
        }
    }

    /// [`Self::pv`] with P rows `ps` bytes apart, `ps` from [`Self::p_stride`].
    fn pv_in(&self, kernel: &dyn Kernel, p: &[u8], ps: usize, m: usize, d: usize, c: &mut [i32]) {
        match &self.v {
            Operand::Packed(b) => kernel.gemm_u8s8_packed_strided(p, ps, m, b, c),
            Operand::Plain(b) => kernel.gemm_u8s8(p, b, m, d, self.len, c),
        }
    }
}

/// One key/value head, ready for every row block of the query heads that read it.
struct KvHead<'a> {
    /// Keys that any query row may see (the batch row's key length).
    keys: usize,
    chunk: usize,
    chunks: Vec<Chunk<'a>>,
}

impl<'a> KvHead<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kernel: &dyn Kernel,
        attn: &Attention,
        shape: &AttnShape,
        plan: BlockPlan,
        kv: usize,
        k: &'a [i8],
        v: &'a [i8],
        pack: bool,
    ) -> Self {
        let d = shape.head_dim;
        let batch = kv / shape.kv_heads;
        let keys = attn
            .key_lens
            .as_ref()
            .map_or(shape.kv_len, |l| l[batch].min(shape.kv_len));
        let base = kv * shape.kv_len * d;
        let chunk = plan.key_chunk.min(keys).max(1);
        let chunks = (0..keys)
            .step_by(chunk)
            .map(|start| {
                let len = chunk.min(keys - start);
                let kc = &k[base + start * d..base + (start + len) * d];
                let vc = &v[base + start * d..base + (start + len) * d];
                let (k, v) = if pack {
                    // K and V side by side: with fewer key/value heads than workers (one head,
                    // long L) packing would otherwise be a serial step before the row blocks.
                    let (k, v) =
                        rayon::join(|| kernel.pack_k(kc, len, d), || kernel.pack_v(vc, len, d));
                    (Operand::Packed(k), Operand::Packed(v))
                } else {
                    (Operand::Plain(kc), Operand::Plain(vc))
                };
                Chunk { start, len, k, v }
            })
            .collect();
        KvHead {
            keys,
            chunk,
            chunks,
        }
    }
}

/// Per-worker buffers, grown on demand and kept for the next block (and the next call: the
/// pools of [`crate::threads`] live for the process), so blocks do not allocate.
#[derive(Default)]
struct Scratch {
    scores: AlignedVec<i32>,
    p: AlignedVec<u8>,
    frow: Vec<f32>,
    chunk_scores: Vec<i32>,
    chunk_p: Vec<u8>,
    o32: AlignedVec<i32>,
    acc: Vec<i64>,
    divisor: Vec<u32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Everything a row block needs besides its own rows.
struct Ctx<'a> {
    attn: &'a Attention,
    shape: &'a AttnShape,
    kernel: &'a dyn Kernel,
    softmax: &'a IntSoftmax,
    lut: &'a Lut,
    q: &'a [i8],
    v_scale: f32,
}

impl Ctx<'_> {
    /// Query rows `r0..r0 + out.len() / d` of flat head `bh`, written to `out`.
    fn block(&self, kv: &KvHead, bh: usize, r0: usize, out: &mut [f32], scr: &mut Scratch) {
        let (kernel, d) = (self.kernel, self.shape.head_dim);
        let m = out.len() / d;
        let batch = bh / self.shape.heads;
        // Visible keys only grow with the row, so the last row bounds the block.
        let last_valid = self.attn.valid_keys(self.shape, batch, r0 + m - 1);
        if last_valid == 0 {
            // Every row fully masked: O32 = 0, which both finishes turn into +0.0.
            out.fill(0.0);
            return;
        }
        let nch = last_valid.div_ceil(kv.chunk);
        let ncols = (nch * kv.chunk).min(kv.keys);
        let q0 = (bh * self.shape.q_len + r0) * d;
        let qb = &self.q[q0..q0 + m * d];

        // P rows as the kernel's P x V wants them when one chunk covers the block (AMX reads
        // them in place at a stride that spreads tile rows over cache sets), else dense.
        // The same for the score rows (AMX stores its C tiles at a stride that does the same).
        let (ss, ps) = if nch == 1 {
            (kv.chunks[0].s_stride(kernel), kv.chunks[0].p_stride(kernel))
        } else {
            (ncols, ncols)
        };
        scr.scores.grow(m * ss);
        scr.p.grow(m * ps);
        scr.o32.grow(m * d);
        grow(&mut scr.acc, m * d);
        grow(&mut scr.divisor, m);
        if matches!(self.softmax, IntSoftmax::Float { .. }) {
            grow(&mut scr.frow, ncols);
        }
        if nch > 1 {
            grow(&mut scr.chunk_scores, m * kv.chunk);
            grow(&mut scr.chunk_p, m * kv.chunk);
        }
        let s = &mut scr.scores[..m * ss];
        let p = &mut scr.p[..m * ps];

        // Scores, written straight into the block when one chunk covers it.
        if nch == 1 {
            kv.chunks[0].scores(kernel, qb, m, d, s, ss);
        } else {
            for c in &kv.chunks[..nch] {
                let t = &mut scr.chunk_scores[..m * c.len];
                c.scores(kernel, qb, m, d, t, c.len);
                for (i, trow) in t.chunks_exact(c.len).enumerate() {
                    s[i * ncols + c.start..i * ncols + c.start + c.len].copy_from_slice(trow);
                }
            }
        }

        // Softmax, row by row: entries past a row's valid keys are ignored and become P = 0.
        for i in 0..m {
            let valid = self.attn.valid_keys(self.shape, batch, r0 + i);
            scr.divisor[i] = self.softmax.row(
                kernel,
                self.lut,
                &s[i * ss..i * ss + ncols],
                valid,
                &mut p[i * ps..i * ps + ncols],
                &mut scr.frow,
            );
        }

        // P x V, chunk by chunk, each chunk exact in i32 and summed in i64 as pv_product does.
        let acc = &mut scr.acc[..m * d];
        let o32 = &mut scr.o32[..m * d];
        if nch == 1 {
            // One chunk is exact in i32 already: convert straight from it.
            kv.chunks[0].pv_in(kernel, p, ps, m, d, o32);
            for (i, orow) in out.chunks_exact_mut(d).enumerate() {
                output_row(&o32[i * d..(i + 1) * d], scr.divisor[i], self.v_scale, orow);
            }
            return;
        } else {
            acc.fill(0);
            for c in &kv.chunks[..nch] {
                let pc = &mut scr.chunk_p[..m * c.len];
                for (i, prow) in pc.chunks_exact_mut(c.len).enumerate() {
                    prow.copy_from_slice(&p[i * ps + c.start..i * ps + c.start + c.len]);
                }
                c.pv(kernel, pc, m, d, o32);
                for (a, &x) in acc.iter_mut().zip(o32.iter()) {
                    *a += x as i64;
                }
            }
        }

        for (i, orow) in out.chunks_exact_mut(d).enumerate() {
            output_row(&acc[i * d..(i + 1) * d], scr.divisor[i], self.v_scale, orow);
        }
    }
}

/// Runs the fused schedule of an integer pipeline into `out` (shaped like Q). The caller has
/// checked shapes, scales and parameters as for the unfused schedule.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    attn: &Attention,
    kernel: &dyn Kernel,
    shape: &AttnShape,
    softmax: &IntSoftmax,
    lut: &Lut,
    q: &QTensor,
    k: &QTensor,
    v: &QTensor,
    out: Fresh<'_, f32>,
) -> Result<()> {
    if shape.kv_len >= MAX_ROW_LEN {
        return Err(Error::Unsupported(format!(
            "{} keys: IndexSoftmax rows are exact only below 2^24 keys",
            shape.kv_len
        )));
    }
    threads::install(attn.threads, || {
        let caches = CacheSizes::get();
        let plan = match attn.block_rows {
            Some(rows) => BlockPlan::with_rows(rows.min(shape.q_len), attn.causal, caches),
            None => BlockPlan::new(shape, attn.causal, rayon::current_num_threads(), caches),
        };
        let pack = shape.q_len * (shape.heads / shape.kv_heads) >= PACK_MIN_ROWS;
        let kv_heads: Vec<KvHead> = (0..shape.batch * shape.kv_heads)
            .into_par_iter()
            .map(|kv| KvHead::new(kernel, attn, shape, plan, kv, &k.data, &v.data, pack))
            .collect();

        let d = shape.head_dim;
        let mut tasks =
            Vec::with_capacity(shape.batch * shape.heads * shape.q_len.div_ceil(plan.rows));
        // Output rows are zeroed by the task that writes them (not in a pass of their own).
        for (bh, head_out) in out.chunks(shape.q_len * d).into_iter().enumerate() {
            for (ib, block_out) in head_out.chunks(plan.rows * d).into_iter().enumerate() {
                tasks.push((bh, ib * plan.rows, block_out));
            }
        }
        let ctx = Ctx {
            attn,
            shape,
            kernel,
            softmax,
            lut,
            q: &q.data,
            v_scale: v.scale,
        };
        tasks.into_par_iter().for_each(|(bh, r0, block_out)| {
            let block_out = block_out.zeroed();
            let kv = &kv_heads[kv_head_index(shape, bh)];
            SCRATCH.with(|cell| match cell.try_borrow_mut() {
                Ok(mut scr) => ctx.block(kv, bh, r0, block_out, &mut scr),
                // Only if a kernel ran rayon work inside a block and this thread stole another
                // block meanwhile: use fresh buffers rather than share.
                Err(_) => ctx.block(kv, bh, r0, block_out, &mut Scratch::default()),
            })
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_size_strings() {
        assert_eq!(parse_cache_size("48K"), Some(48 << 10));
        assert_eq!(parse_cache_size("2048K\n"), Some(2 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("0K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn sysfs_layout_is_read_per_level() {
        let dir = std::env::temp_dir().join(format!("intattention-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (idx, level, kind, size) in [
            ("index0", "1", "Data", "48K"),
            ("index1", "1", "Instruction", "32K"),
            ("index2", "2", "Unified", "2048K"),
            ("index3", "3", "Unified", "307200K"),
        ] {
            let d = dir.join(idx);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
        }
        let c = CacheSizes::from_sysfs(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            c,
            CacheSizes {
                l1d: 48 << 10,
                l2: 2 << 20
            }
        );
        assert_eq!(
            CacheSizes::from_sysfs("/nonexistent/intattention"),
            CacheSizes::DEFAULT
        );
    }

    #[test]
    fn block_rule() {
        let caches = CacheSizes {
            l1d: 48 << 10,
            l2: 2 << 20,
        };
        // K and V (256 KiB) stay in L2: (1.5 MiB - 256 KiB) / (5 * 1024 + 12 * 128) = 196
        // rows -> 192.
        let one = AttnShape::new(1, 1, 1024, 128);
        assert_eq!(BlockPlan::new(&one, false, 1, caches).rows, 192);
        // Two workers, one head: 8 blocks of 128 rows (6 of 192 would leave one worker 3).
        assert_eq!(BlockPlan::new(&one, false, 2, caches).rows, 128);
        // 16 workers: 16 blocks of 64 would be as short as it gets, but one block each;
        // 64 of 16 give every worker 4 at the same load.
        assert_eq!(BlockPlan::new(&one, false, 16, caches).rows, 16);
        // 4 workers: 8 of 128 (2 each), then 16 of 64 (4 each) at the same load.
        assert_eq!(BlockPlan::new(&one, false, 4, caches).rows, 64);
        // L = 4096: K and V (1 MiB) still stay: 0.5 MiB / 22,016 = 23 rows -> 16.
        let l4k = AttnShape::new(1, 1, 4096, 128);
        assert_eq!(BlockPlan::new(&l4k, false, 1, caches).rows, 16);
        assert_eq!(BlockPlan::new(&l4k, false, 16, caches).rows, 16);
        let h16 = AttnShape::new(1, 16, 4096, 128);
        assert_eq!(BlockPlan::new(&h16, false, 16, caches).rows, 16);
        // d = 64 halves K and V: (1.5 MiB - 512 KiB) / 21,248 = 49 rows -> 48; on 12 workers
        // 86 blocks of 48 leave the busiest 8 (384 rows), 128 of 32 leave 11 (352).
        let d64 = AttnShape::new(1, 1, 4096, 64);
        assert_eq!(BlockPlan::new(&d64, false, 1, caches).rows, 48);
        assert_eq!(BlockPlan::new(&d64, false, 12, caches).rows, 32);
        // L = 8192: K and V (2 MiB) cannot stay, blocks take half of L2: 1 MiB / 42,496 = 24
        // rows -> 16.
        let l8k = AttnShape::new(1, 1, 8192, 128);
        assert_eq!(BlockPlan::new(&l8k, false, 1, caches).rows, 16);
        // L = 6144 streams too (1.5 MiB of K and V): 1 MiB / 32,256 = 32 rows.
        let l6k = AttnShape::new(1, 1, 6144, 128);
        assert_eq!(BlockPlan::new(&l6k, false, 1, caches).rows, 32);
        // Long keys: at least 16 rows; decode: 1 row.
        let long = AttnShape::new(1, 1, 16384, 128);
        assert_eq!(BlockPlan::new(&long, false, 1, caches).rows, 16);
        let mut decode = AttnShape::new(1, 8, 4096, 64);
        decode.q_len = 1;
        assert_eq!(BlockPlan::new(&decode, false, 2, caches).rows, 1);
        // Causal: at most 64 rows, key chunks of 48K / (5 * 64) = 153 -> 128.
        let c = BlockPlan::new(&one, true, 1, caches);
        assert_eq!((c.rows, c.key_chunk), (64, 128));
        // Without a causal mask one chunk covers up to 65,536 keys.
        assert_eq!(BlockPlan::new(&one, false, 1, caches).key_chunk, PV_SPLIT);
        // Every plan stays a multiple of the row tile when below Lq.
        for lq in [9, 63, 300, 1000, 5000] {
            for workers in 1..=4 {
                let s = AttnShape::new(1, 1, lq, 64);
                let p = BlockPlan::new(&s, false, workers, caches);
                assert!(
                    p.rows == lq || (p.rows.is_multiple_of(ROW_TILE) && p.rows >= MIN_BLOCK_ROWS)
                );
                assert!(
                    p.rows <= MAX_BLOCK_ROWS && p.rows <= lq,
                    "{lq} {workers} {p:?}"
                );
            }
        }
    }
}
