//! How the engine cuts a call into tasks: query rows per block, keys per chunk, and how many
//! key splits a block gets when there are too few blocks for the workers. The rule is a
//! function of the shape, the worker count and the cache sizes only, never of the data.

use std::sync::OnceLock;

use super::AttnShape;

/// Row blocks are multiples of this: SIMD GEMM micro-kernels work on 8 or 16 rows at a time,
/// AMX on tiles of 16 (a 40-row block ran as 48 there, with the last 8 rows copied).
pub(crate) const ROW_TILE: usize = 16;
/// Smallest row block (unless the head has fewer query rows).
pub(crate) const MIN_BLOCK_ROWS: usize = 16;
/// Largest row block: past this the score block no longer gains reuse of the K/V panels.
pub(crate) const MAX_BLOCK_ROWS: usize = 256;
/// Largest causal row block: every row of a block computes scores up to the block's last row,
/// so the masked triangle inside a block (on average half a block per row) is wasted work.
pub(crate) const CAUSAL_MAX_BLOCK_ROWS: usize = 64;
/// Longest key chunk of P x V: `255 * 128 * 65,536` fits i32, so a chunk's O32 is exact
/// (`MAX_K_U8S8` is the real limit; a power of two keeps chunks aligned).
pub(crate) const PV_SPLIT: usize = 65_536;
const _: () = assert!(PV_SPLIT <= crate::kernels::MAX_K_U8S8);
/// Data cache sizes that set the row block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheSizes {
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
pub(crate) fn parse_cache_size(s: &str) -> Option<usize> {
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

/// The sizes the plan is made from. A *unit* is one key/value head of one batch row together
/// with the query rows that read it: `group * q_len` rows (every query head of a GQA group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanInput {
    /// Units (`batch * kv_heads`).
    pub units: usize,
    /// Query rows per unit.
    pub unit_rows: usize,
    /// Keys per unit (the longest).
    pub keys: usize,
    /// Head dimension.
    pub d: usize,
    pub causal: bool,
    pub workers: usize,
}

impl PlanInput {
    /// The plan input of a per-call shape.
    pub fn of(shape: &AttnShape, causal: bool, workers: usize) -> PlanInput {
        PlanInput {
            units: shape.batch * shape.kv_heads,
            unit_rows: shape.group() * shape.q_len,
            keys: shape.kv_len,
            d: shape.head_dim,
            causal,
            workers: workers.max(1),
        }
    }
}

/// How a unit is cut: query rows per block and keys per K/V chunk.
///
/// The rule (in [`BlockPlan::new`]; docs/performance.md has the measurements behind it):
/// - `rows`: the largest multiple of [`ROW_TILE`] whose working set, `rows * (5 Lk + 12 d)`
///   bytes (i32 scores and u8 P per key, an i64 accumulator and an i32 partial per output
///   column), fits what L2 has for it. Where packed K and V (`2 Lk d` bytes) fit three quarters
///   of L2 together with a block of `MIN_BLOCK_ROWS`, the block gets the rest of those three
///   quarters, so that K and V stay in L2 from one block to the next (the last quarter is for
///   Q, the output rows and a hyperthread sibling). Otherwise K and V stream from L3 for every
///   block anyway, and the block takes half of L2 to stream them fewer times. Clamped to
///   `[MIN_BLOCK_ROWS, MAX_BLOCK_ROWS]` (`CAUSAL_MAX_BLOCK_ROWS` when causal) and to the
///   unit's rows. With several workers, a smaller multiple of [`ROW_TILE`] (never below
///   `MIN_BLOCK_ROWS`) is taken where it cuts the rows of the busiest worker by more than 3 %.
/// - `key_chunk`: with a causal mask, the multiple of 64 whose `rows x key_chunk` i32 + u8
///   tile fits L1, clamped to `[64, 1024]`: a block then computes only the chunks up to its
///   last visible key. Without one, all keys at once (one GEMM per block), split past 65,536
///   keys so that every P x V chunk is exact in i32, and into smaller chunks (at least
///   [`MIN_PREP_CHUNK`]) where there are fewer units than workers, so that quantizing and
///   packing the keys, one task per chunk, keeps every worker busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockPlan {
    pub rows: usize,
    pub key_chunk: usize,
}

/// Smallest key chunk made only to spread the packing over workers.
pub(crate) const MIN_PREP_CHUNK: usize = 512;

impl BlockPlan {
    pub fn new(p: PlanInput, caches: CacheSizes) -> BlockPlan {
        let (lq, lk, d) = (p.unit_rows.max(1), p.keys, p.d);
        let per_row = 5 * lk + 12 * d;
        let max_rows = if p.causal {
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
        let (units, workers) = (p.units, p.workers);
        if workers > 1 && rows < lq {
            // The busiest worker runs ceil(blocks / workers) blocks of `r` rows. Smaller blocks
            // can even that out, but each block streams all of K and V once, so a smaller block
            // must cut the busiest worker's rows by more than 3 % to be taken. Below 4 blocks
            // per worker a smaller block is also taken at equal load: workers that run at
            // different speeds (big and little cores, a busy hyperthread sibling) then even out
            // by taking more or fewer blocks.
            let per_worker = |r: usize| (units * lq.div_ceil(r)).div_ceil(workers);
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
        } else if workers > 1 && units < workers && lq > MIN_BLOCK_ROWS {
            // One block per unit would leave workers idle: split each unit.
            let blocks = workers.div_ceil(units);
            rows = lq.div_ceil(blocks).div_ceil(ROW_TILE) * ROW_TILE;
            rows = rows.max(MIN_BLOCK_ROWS);
        }
        Self::with_rows(rows.min(lq), p, caches)
    }

    /// The plan for blocks of `rows` query rows (at least 1), key chunks as [`BlockPlan::new`]
    /// chooses them.
    pub fn with_rows(rows: usize, p: PlanInput, caches: CacheSizes) -> BlockPlan {
        let rows = rows.max(1);
        let key_chunk = if p.causal {
            let fit = caches.l1d / (5 * rows);
            (fit / 64 * 64).clamp(64, 1024)
        } else if p.workers <= 1 || p.units >= 2 * p.workers || p.keys <= MIN_PREP_CHUNK {
            PV_SPLIT
        } else {
            // Enough chunks for two per worker, in multiples of 256 keys.
            let per_unit = (2 * p.workers).div_ceil(p.units.max(1));
            p.keys
                .div_ceil(per_unit)
                .next_multiple_of(256)
                .clamp(MIN_PREP_CHUNK, PV_SPLIT)
        };
        BlockPlan { rows, key_chunk }
    }
}

/// Key splits per block: 1 while the blocks alone give every worker two tasks, else enough
/// for that (at most one per chunk).
pub(crate) fn key_splits(blocks: usize, chunks: usize, workers: usize) -> usize {
    if workers <= 1 || blocks >= 2 * workers || chunks <= 1 {
        1
    } else {
        (2 * workers).div_ceil(blocks.max(1)).min(chunks)
    }
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
        assert_eq!(
            BlockPlan::new(PlanInput::of(&one, false, 1), caches).rows,
            192
        );
        // Two workers, one head: 8 blocks of 128 rows (6 of 192 would leave one worker 3).
        assert_eq!(
            BlockPlan::new(PlanInput::of(&one, false, 2), caches).rows,
            128
        );
        // 16 workers: 16 blocks of 64 would be as short as it gets, but one block each;
        // 64 of 16 give every worker 4 at the same load.
        assert_eq!(
            BlockPlan::new(PlanInput::of(&one, false, 16), caches).rows,
            16
        );
        // 4 workers: 8 of 128 (2 each), then 16 of 64 (4 each) at the same load.
        assert_eq!(
            BlockPlan::new(PlanInput::of(&one, false, 4), caches).rows,
            64
        );
        // L = 4096: K and V (1 MiB) still stay: 0.5 MiB / 22,016 = 23 rows -> 16.
        let l4k = AttnShape::new(1, 1, 4096, 128);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l4k, false, 1), caches).rows,
            16
        );
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l4k, false, 16), caches).rows,
            16
        );
        let h16 = AttnShape::new(1, 16, 4096, 128);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&h16, false, 16), caches).rows,
            16
        );
        // d = 64 halves K and V: (1.5 MiB - 512 KiB) / 21,248 = 49 rows -> 48; on 12 workers
        // 86 blocks of 48 leave the busiest 8 (384 rows), 128 of 32 leave 11 (352).
        let d64 = AttnShape::new(1, 1, 4096, 64);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&d64, false, 1), caches).rows,
            48
        );
        assert_eq!(
            BlockPlan::new(PlanInput::of(&d64, false, 12), caches).rows,
            32
        );
        // L = 8192: K and V (2 MiB) cannot stay, blocks take half of L2: 1 MiB / 42,496 = 24
        // rows -> 16.
        let l8k = AttnShape::new(1, 1, 8192, 128);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l8k, false, 1), caches).rows,
            16
        );
        // L = 6144 streams too (1.5 MiB of K and V): 1 MiB / 32,256 = 32 rows.
        let l6k = AttnShape::new(1, 1, 6144, 128);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l6k, false, 1), caches).rows,
            32
        );
        // Long keys: at least 16 rows; decode: 1 row.
        let long = AttnShape::new(1, 1, 16384, 128);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&long, false, 1), caches).rows,
            16
        );
        let decode = AttnShape::new(1, 8, 4096, 64).with_q_len(1);
        assert_eq!(
            BlockPlan::new(PlanInput::of(&decode, false, 2), caches).rows,
            1
        );
        // Causal: at most 64 rows, key chunks of 48K / (5 * 64) = 153 -> 128.
        let c = BlockPlan::new(PlanInput::of(&one, true, 1), caches);
        assert_eq!((c.rows, c.key_chunk), (64, 128));
        // Without a causal mask one chunk covers up to 65,536 keys, unless there are fewer
        // units than workers: then chunks of at least 512 keys, two per worker.
        assert_eq!(
            BlockPlan::new(PlanInput::of(&one, false, 1), caches).key_chunk,
            PV_SPLIT
        );
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l4k, false, 16), caches).key_chunk,
            512
        );
        assert_eq!(
            BlockPlan::new(PlanInput::of(&l4k, false, 2), caches).key_chunk,
            1024
        );
        assert_eq!(
            BlockPlan::new(PlanInput::of(&h16, false, 4), caches).key_chunk,
            PV_SPLIT
        );
        // GQA: a unit holds the rows of every query head of its group.
        let gqa = AttnShape::new(1, 32, 1, 128)
            .with_kv_heads(8)
            .with_kv_len(8192);
        let p = PlanInput::of(&gqa, false, 16);
        assert_eq!((p.units, p.unit_rows), (8, 4));
        assert_eq!(BlockPlan::new(p, caches).rows, 4);
        assert_eq!(key_splits(8, 16, 16), 4);
        assert_eq!(key_splits(64, 16, 16), 1);
        assert_eq!(key_splits(8, 2, 16), 2);
        // Every plan stays a multiple of the row tile when below Lq.
        for lq in [9, 63, 300, 1000, 5000] {
            for workers in 1..=4 {
                let s = AttnShape::new(1, 1, lq, 64);
                let p = BlockPlan::new(PlanInput::of(&s, false, workers), caches);
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
