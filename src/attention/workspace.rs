//! [`Workspace`]: the scratch memory of attention calls, owned by the caller. A call takes the
//! buffers it needs from it (per-task scratch, packed key chunks) and gives them back when it
//! returns, so a loop of calls with one workspace allocates nothing once it has grown, and the
//! memory is freed when the caller drops the workspace: the crate keeps nothing of its own.

use std::sync::Mutex;
use std::thread::ThreadId;

use crate::memory::AlignedVec;

/// Reusable scratch memory for attention calls. One call at a time uses a workspace (calls
/// take it by `&mut`); threads that call concurrently each hold their own.
///
/// Every buffer remembers the thread that gave it back, and a task takes one of its own
/// thread's first: a buffer's lines are then still in that core's cache, where one last used
/// on another core would move every line across (measured on the 16-core Xeon, where scratch
/// handed out in any order cost batches of short sequences about a fifth of their time;
/// docs/performance.md).
#[derive(Default)]
pub struct Workspace {
    /// Per-task buffers, handed to tasks one at a time and returned.
    scratch: Mutex<Vec<(ThreadId, Scratch)>>,
    /// Storage of packed K and V chunks of earlier calls.
    packed: Mutex<Vec<(ThreadId, AlignedVec<i8>)>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Workspace {
    /// An empty workspace; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of memory the workspace holds.
    pub fn bytes(&self) -> usize {
        let scratch: usize = lock(&self.scratch).iter().map(|(_, s)| s.bytes()).sum();
        let packed: usize = lock(&self.packed)
            .iter()
            .map(|(_, v)| v.capacity_bytes())
            .sum();
        scratch + packed
    }

    /// Frees every buffer (the next call allocates again).
    pub fn release(&mut self) {
        lock(&self.scratch).clear();
        lock(&self.packed).clear();
    }

    /// A task's scratch: one this thread gave back, else one kept from any thread, else new.
    pub(crate) fn take_scratch(&self) -> Scratch {
        let me = std::thread::current().id();
        let mut kept = lock(&self.scratch);
        let i = kept.iter().rposition(|(t, _)| *t == me);
        match i.or_else(|| kept.len().checked_sub(1)) {
            Some(i) => kept.swap_remove(i).1,
            None => Scratch::default(),
        }
    }

    /// Returns a task's scratch for the next task.
    pub(crate) fn give_scratch(&self, s: Scratch) {
        lock(&self.scratch).push((std::thread::current().id(), s));
    }

    /// Storage for one packed chunk of `len` bytes: the smallest kept buffer that holds it
    /// (this thread's first), else the largest kept (it is resized), else a new one. Choosing
    /// by size matters: K and V chunks differ in padding, and taking them back in the wrong
    /// order would reallocate one of them for every chunk.
    pub(crate) fn take_packed(&self, len: usize) -> AlignedVec<i8> {
        let me = std::thread::current().id();
        let mut kept = lock(&self.packed);
        let smallest_fit = |mine: bool| {
            kept.iter()
                .enumerate()
                .filter(|(_, (t, v))| v.capacity_bytes() >= len && (!mine || *t == me))
                .min_by_key(|(_, (_, v))| v.capacity_bytes())
                .map(|(i, _)| i)
        };
        let largest = || {
            kept.iter()
                .enumerate()
                .max_by_key(|(_, (_, v))| v.capacity_bytes())
                .map(|(i, _)| i)
        };
        let i = smallest_fit(true)
            .or_else(|| smallest_fit(false))
            .or_else(largest);
        match i {
            Some(i) => kept.swap_remove(i).1,
            None => AlignedVec::default(),
        }
    }

    /// Returns packed chunk storage.
    pub(crate) fn give_packed(&self, v: AlignedVec<i8>) {
        lock(&self.packed).push((std::thread::current().id(), v));
    }
}

/// The lists stay consistent even if a holder panicked (every update is one push or pop), so a
/// poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Buffers of one engine task (a row block, a key split or a chunk's preparation). Grown on
/// demand and kept for the next task.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The block's queries, int8, `rows x d`.
    pub q8: AlignedVec<i8>,
    /// Score rows.
    pub scores: AlignedVec<i32>,
    /// Probability rows.
    pub p: AlignedVec<u8>,
    /// One P x V product, i32.
    pub o32: AlignedVec<i32>,
    /// Sums of P x V products over chunks, i64.
    pub acc: Vec<i64>,
    /// Per-row f32 scratch of the float softmax.
    pub frow: Vec<f32>,
    /// Per-row i64 scores of a row with per-key exponents.
    pub wide: Vec<i64>,
    /// Byte digits of P for values with per-key exponents.
    pub digits: AlignedVec<u8>,
    /// Quantized key or value rows of a chunk being prepared.
    pub rows8: Vec<i8>,
}

impl Scratch {
    fn bytes(&self) -> usize {
        self.q8.capacity_bytes()
            + self.scores.capacity_bytes()
            + self.p.capacity_bytes()
            + self.o32.capacity_bytes()
            + self.digits.capacity_bytes()
            + self.acc.capacity() * 8
            + self.frow.capacity() * 4
            + self.wide.capacity() * 8
            + self.rows8.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_storage_is_handed_out_by_size() {
        let ws = Workspace::new();
        let mut small = AlignedVec::<i8>::default();
        small.try_resize_zeroed(100, "t").unwrap();
        let mut big = AlignedVec::<i8>::default();
        big.try_resize_zeroed(1000, "t").unwrap();
        // Given back small first, big last: a stack would hand out big for a small request.
        ws.give_packed(small);
        ws.give_packed(big);
        assert_eq!(ws.take_packed(64).capacity_bytes(), 128);
        ws.give_packed(AlignedVec::default());
        assert_eq!(ws.take_packed(500).capacity_bytes(), 1024);
        // Nothing large enough: the largest kept (0 bytes here) rather than nothing.
        assert_eq!(ws.take_packed(5000).capacity_bytes(), 0);
        assert_eq!(ws.take_packed(1).capacity_bytes(), 0);
    }

    #[test]
    fn a_thread_takes_back_its_own_buffers_first() {
        let ws = Workspace::new();
        let with_rows = |n: usize| Scratch {
            rows8: vec![0; n],
            ..Scratch::default()
        };
        let sized = |n: usize| {
            let mut v = AlignedVec::<i8>::default();
            v.try_resize_zeroed(n, "t").unwrap();
            v
        };
        ws.give_scratch(with_rows(7));
        ws.give_packed(sized(1000));
        // Given back last, by another thread: a plain stack would hand these out first.
        std::thread::scope(|s| {
            s.spawn(|| {
                ws.give_scratch(with_rows(13));
                ws.give_packed(sized(100));
            });
        });
        assert_eq!(ws.take_scratch().rows8.len(), 7);
        assert_eq!(ws.take_packed(64).capacity_bytes(), 1024);
        // None of this thread's left: the other thread's, then new ones.
        assert_eq!(ws.take_scratch().rows8.len(), 13);
        assert_eq!(ws.take_packed(64).capacity_bytes(), 128);
        assert_eq!(ws.take_scratch().rows8.len(), 0);
    }
}
