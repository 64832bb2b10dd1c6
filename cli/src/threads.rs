//! The command's thread pools: one per thread count, built on first use and kept for the
//! process (building a pool spawns threads, which would otherwise be timed by every benchmark
//! run). The library itself keeps no pools: the command hands it one as an executor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use intattention::Executor;

use crate::error::{Error, Result};

/// The worker count `threads` stands for (`0` means one per available core).
pub fn resolved(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
}

/// The pool of `threads` workers (`0`: one per core).
pub fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let n = resolved(threads);
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("intattention-{i}"))
            .build()
            .map_err(|e| Error::Param(format!("cannot start {n} threads: {e}")))?,
    );
    pools.insert(n, p.clone());
    Ok(p)
}

/// The executor of `threads` workers: the calling thread alone for 1, else a pool.
pub fn executor(threads: usize) -> Result<Executor> {
    if resolved(threads) == 1 {
        Ok(Executor::CallingThread)
    } else {
        Ok(Executor::Pool(pool(threads)?))
    }
}

/// Runs `f` on the pool of `threads` workers.
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    Ok(pool(threads)?.install(f))
}
