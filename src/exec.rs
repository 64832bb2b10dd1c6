//! Where an attention call's work runs: the caller's choice ([`Executor`]), never a private
//! thread pool of this crate. The engine sees the choice as [`Par`], which runs a list of tasks
//! either on the rayon pool the call was installed on or one after another on the calling
//! thread.

use std::sync::Arc;

use rayon::prelude::*;

/// Where an attention call runs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Executor {
    /// The rayon pool the call is made from; outside any pool, rayon's global pool. A caller
    /// that is itself running on a rayon pool shares that pool's workers instead of
    /// oversubscribing the machine.
    #[default]
    CurrentPool,
    /// A pool the caller owns (for example one of `n` threads pinned by the caller).
    Pool(Arc<rayon::ThreadPool>),
    /// The calling thread alone: no other thread is touched, nothing is spawned.
    CallingThread,
}

impl Executor {
    /// An executor on a new pool of `threads` workers, which the returned value owns.
    ///
    /// # Errors
    /// [`crate::Error::InvalidParameter`] if the pool cannot be started (the operating system
    /// refused the threads) or `threads` is 0.
    pub fn with_threads(threads: usize) -> crate::Result<Executor> {
        if threads == 0 {
            return crate::error::invalid("threads", threads, "at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("intattention-{i}"))
            .build()
            .map(|p| Executor::Pool(Arc::new(p)))
            .or_else(|e| {
                crate::error::invalid(
                    "threads",
                    format!("{threads} ({e})"),
                    "a pool the OS can start",
                )
            })
    }

    /// How many workers a call on this executor uses.
    pub fn workers(&self) -> usize {
        match self {
            Executor::CurrentPool => rayon::current_num_threads(),
            Executor::Pool(p) => p.current_num_threads(),
            Executor::CallingThread => 1,
        }
    }

    /// Runs `f` where this executor says, handing it the matching [`Par`].
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce(Par) -> R + Send) -> R {
        match self {
            Executor::CurrentPool => f(Par::Rayon),
            Executor::Pool(p) => p.install(|| f(Par::Rayon)),
            Executor::CallingThread => f(Par::Serial),
        }
    }
}

/// How the engine runs a list of independent tasks inside a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Par {
    /// One after another on the calling thread.
    Serial,
    /// On the rayon pool the call runs on.
    Rayon,
}

impl Par {
    /// Workers available to a list of tasks.
    pub fn workers(self) -> usize {
        match self {
            Par::Serial => 1,
            Par::Rayon => rayon::current_num_threads(),
        }
    }

    /// `f(item)` for every item, in any order and on any worker.
    pub fn for_each<T: Send>(self, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
        match self {
            Par::Serial => items.into_iter().for_each(f),
            Par::Rayon => items.into_par_iter().for_each(f),
        }
    }

    /// `f(item)` for every item, results in the items' order.
    pub fn map<T: Send, R: Send>(self, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
        match self {
            Par::Serial => items.into_iter().map(f).collect(),
            Par::Rayon => items.into_par_iter().map(f).collect(),
        }
    }
}
