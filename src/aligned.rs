//! A growable-by-replacement buffer whose first element starts a 64-byte cache line.
//!
//! Why not `Vec<T>`: the allocator only promises `align_of::<T>()`, and glibc places large
//! blocks (every packed K or V past 128 KiB) 16 bytes past a page boundary. AMX tile loads
//! and stores move whole 64-byte rows, and a row that straddles two cache lines costs two
//! accesses: on a Sapphire Rapids core, Q K^T at L = 4096 on AMX tiles ran at 135 GMAC/s with
//! K 16 bytes off a line and at 280 GMAC/s with K, the scores and P on line boundaries
//! (`examples`-style phase timing on the device machine, same process, alternated).
//!
//! The storage is a `Vec` of 64-byte aligned lines, so allocation and freeing stay with the
//! standard library; only the typed view over it is ours. Large storage is kept for the next
//! call when its vector is dropped ([`Recycler`]).

use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

/// Plain numbers: every bit pattern (in particular all zeros) is a valid value, there is no
/// padding, and the alignment divides 64. Sealed: implemented for the element types the
/// kernels use and nothing else.
pub trait Pod: Copy + Send + Sync + private::Sealed {}

mod private {
    pub trait Sealed {}
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl private::Sealed for $t {}
        impl Pod for $t {}
    )*};
}
pod!(i8, u8, i32, u32, i64, f32);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `n` zeroed lines: kept storage ([`Recycler`]) zeroed here, or else from the allocator's
/// zeroing path (calloc: fresh pages arrive zeroed and are touched later by whoever writes
/// them), where `vec![Line([0; 64]); n]` would write every byte on this thread (the standard
/// library only knows that primitive zeros are all-zero bytes). Reused heap memory is still
/// zeroed by calloc on this thread: buffers that workers fill in parallel come from
/// [`AlignedVec::par_build`] instead.
fn zeroed_lines(n: usize) -> Vec<Line> {
    if n == 0 {
        return Vec::new();
    }
    let mut kept = LINES.take(n);
    if kept.capacity() >= n {
        // One memset (`resize` would copy a zero line at a time).
        // SAFETY: the capacity holds at least n lines, which the write covers exactly; after
        // it they are initialised (all-zero bytes are a valid `Line`), so the length may be n.
        unsafe {
            std::ptr::write_bytes(kept.as_mut_ptr(), 0, n);
            kept.set_len(n);
        }
        return kept;
    }
    let layout = std::alloc::Layout::array::<Line>(n).expect("AlignedVec: size overflows");
    // SAFETY: `layout` has non-zero size (n > 0, 64-byte lines).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Line;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[Line; n]`
    // (size and alignment as `Vec<Line>` with capacity n uses), and all n elements are
    // initialised: all-zero bytes are a valid `Line`.
    unsafe { Vec::from_raw_parts(ptr, n, n) }
}

/// `len` values of `T` at the start of a 64-byte aligned allocation.
pub struct AlignedVec<T: Pod> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> AlignedVec<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("AlignedVec: length overflows usize");
        AlignedVec {
            lines: zeroed_lines(bytes.div_ceil(64)),
            len,
            _t: PhantomData,
        }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> Self {
        let mut v = Self::zeroed(values.len());
        v.copy_from_slice(values);
        v
    }

    /// The same bytes viewed as another plain type of the same size (`u8` as `i8`, say).
    pub fn cast<U: Pod>(self) -> AlignedVec<U> {
        assert_eq!(size_of::<U>(), size_of::<T>(), "cast between sizes");
        let mut this = self;
        AlignedVec {
            lines: std::mem::take(&mut this.lines),
            len: this.len,
            _t: PhantomData,
        }
    }

    /// Shortens the buffer to `len` values (no effect when it is not longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes the buffer at least `len` values long; new values are zero, existing ones are
    /// kept only when no reallocation is needed (callers use it as scratch).
    pub fn grow(&mut self, len: usize) {
        if self.len < len {
            let fits = len * size_of::<T>() <= self.lines.len() * 64;
            if fits {
                let old = self.len;
                self.len = len;
                self[old..].fill_zero();
            } else {
                *self = Self::zeroed(len);
            }
        }
    }
}

impl<T: Pod> AlignedVec<T> {
    /// `len` values made on the current rayon pool: the buffer is cut into pieces of `piece`
    /// values (the last may be shorter), and each piece is zeroed and then handed to
    /// `fill(index, piece)` on some worker. See [`par_vecs`] for why.
    pub fn par_build(len: usize, piece: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Self {
        let piece = piece.max(1);
        Self::built_by(len, |all| {
            all.chunks(piece)
                .into_par_iter()
                .enumerate()
                .for_each(|(i, p)| fill(i, p.zeroed()))
        })
        .0
    }

    /// [`vec_built_by`] for an aligned buffer: `len` values built by `build` from one
    /// [`Fresh`] part covering all of them (every value zero until `build` writes it), and
    /// what `build` returned. Parts that `build` leaves alone are zeroed afterwards.
    pub fn built_by<R>(len: usize, build: impl FnOnce(Fresh<'_, T>) -> R) -> (Self, R) {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("AlignedVec: length overflows usize");
        let n = bytes.div_ceil(64);
        let mut lines: Vec<Line> = LINES.take(n);
        lines.reserve_exact(n);
        // Exact: `Pod` sizes divide 64, so `room` values are the n lines' bytes.
        let room = n * 64 / size_of::<T>();
        let spare = lines.spare_capacity_mut();
        // SAFETY: the spare capacity holds n lines = `room * size_of::<T>()` bytes (at most),
        // aligned for `T` (64-byte start, `Pod` alignments divide 64); `MaybeUninit<T>` has
        // no validity requirement, and the slice borrows `lines` exclusively.
        let values = unsafe {
            std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut MaybeUninit<T>, room)
        };
        let (head, tail) = values.split_at_mut(len);
        let zeroed = AtomicUsize::new(0);
        let r = build(Fresh {
            part: &mut *head,
            zeroed: &zeroed,
        });
        // As in `vec_built_by`: a count of `len` means every part was zeroed (each once).
        if zeroed.into_inner() != len {
            zero_uninit(head);
        }
        // The bytes of the last line past `len`.
        zero_uninit(tail);
        // SAFETY: every byte of the n lines is initialised (`head` by the parts or the zeroing
        // above, `tail` just now, and `room` values are exactly the lines' bytes); any bytes
        // make a valid `Line`. No part outlives `build`. If `build` panicked we never get here
        // and `lines` stays empty.
        unsafe { lines.set_len(n) };
        (
            AlignedVec {
                lines,
                len,
                _t: PhantomData,
            },
            r,
        )
    }
}

/// `Vec`s of the given lengths made on the current rayon pool: each is cut into pieces of
/// `piece` values (the last may be shorter), and each piece is zeroed and then handed to
/// `fill(vec, index, piece)` on some worker, all pieces of all vectors in one parallel pass.
///
/// Why: `vec![0; n]` of a large `n` zeroes the whole buffer on the calling thread whenever the
/// allocator hands back reused memory (glibc's calloc from a heap: a memset that page-faults
/// on every page the heap had given back). With 16 workers that serial step, for Q, K, V and
/// the packed operands of one attention head, was longer than the workers' share of the
/// quantization itself. Here every worker zeroes (and faults in) only its own pieces.
pub fn par_vecs<T: Pod, const N: usize>(
    lens: [usize; N],
    piece: usize,
    fill: impl Fn(usize, usize, &mut [T]) + Sync,
) -> [Vec<T>; N] {
    let piece = piece.max(1);
    let (vecs, ()) = vecs_built_by(std::array::from_fn(|_| Vec::new()), lens, |parts| {
        let jobs: Vec<(usize, usize, Fresh<'_, T>)> = parts
            .into_iter()
            .enumerate()
            .flat_map(|(t, p)| {
                p.chunks(piece)
                    .into_iter()
                    .enumerate()
                    .map(move |(i, c)| (t, i, c))
            })
            .collect();
        jobs.into_par_iter()
            .for_each(|(t, i, c)| fill(t, i, c.zeroed()));
    });
    vecs
}

/// A part of a vector under construction ([`vec_built_by`]) that nobody has touched yet. Its
/// values can only be reached through [`Fresh::zeroed`], which zeroes them first, so the code
/// that builds the vector never sees uninitialised memory; parts can be split to hand them to
/// different workers.
pub struct Fresh<'a, T> {
    part: &'a mut [MaybeUninit<T>],
    zeroed: &'a AtomicUsize,
}

impl<'a, T: Pod> Fresh<'a, T> {
    pub fn len(&self) -> usize {
        self.part.len()
    }

    pub fn is_empty(&self) -> bool {
        self.part.is_empty()
    }

    /// The first `mid` values and the rest (panics if `mid > len`, like `slice::split_at`).
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        let (a, b) = self.part.split_at_mut(mid);
        (
            Fresh {
                part: a,
                zeroed: self.zeroed,
            },
            Fresh {
                part: b,
                zeroed: self.zeroed,
            },
        )
    }

    /// Consecutive parts of `size` values (the last may be shorter).
    pub fn chunks(self, size: usize) -> Vec<Self> {
        assert!(size > 0, "Fresh::chunks: size 0");
        let mut parts = Vec::with_capacity(self.len().div_ceil(size));
        let mut rest = self;
        while !rest.is_empty() {
            let n = size.min(rest.len());
            let (head, tail) = rest.split_at(n);
            parts.push(head);
            rest = tail;
        }
        parts
    }

    /// The part's values, zeroed.
    pub fn zeroed(self) -> &'a mut [T] {
        self.zeroed.fetch_add(self.part.len(), Ordering::Relaxed);
        zero_uninit(self.part)
    }
}

/// A vector of `len` values built by `build` from one [`Fresh`] part covering all of it
/// (in `storage`, which is cleared and reallocated only if too small), and what `build`
/// returned. Every value is zero until `build` writes it. This lets workers zero only the
/// rows they are about to write, inside the same tasks, instead of a separate parallel pass
/// over the whole output before them.
///
/// If `build` did not zero every part (it returned early, or leaked a part), the whole
/// vector is zeroed afterwards, so the result is always initialised.
pub fn vec_built_by<T: Pod, R>(
    storage: Vec<T>,
    len: usize,
    build: impl FnOnce(Fresh<'_, T>) -> R,
) -> (Vec<T>, R) {
    let ([v], r) = vecs_built_by([storage], [len], |[part]| build(part));
    (v, r)
}

/// [`vec_built_by`] over values the caller already has: `build` gets one [`Fresh`] part
/// covering `out`, whose current values it never sees (each part is zeroed before it can be
/// read or written). If `build` did not zero every part, all of `out` is zeroed afterwards,
/// so no old value survives either way.
pub fn built_in<T: Pod, R>(out: &mut [T], build: impl FnOnce(Fresh<'_, T>) -> R) -> R {
    let len = out.len();
    let zeroed = AtomicUsize::new(0);
    let r = {
        // SAFETY: `MaybeUninit<T>` has `T`'s layout. The view lives only inside this block,
        // and the only write a `Fresh` makes through it is all-zero bytes (`zero_uninit`),
        // a valid `T` (`Pod`), before it hands the values out as `&mut [T]`; so every value
        // of `out` is initialised whenever `out` is used again.
        let part = unsafe { &mut *(out as *mut [T] as *mut [MaybeUninit<T>]) };
        build(Fresh {
            part,
            zeroed: &zeroed,
        })
    };
    if zeroed.into_inner() != len {
        out.fill_zero();
    }
    r
}

/// [`vec_built_by`] for several vectors at once: `build` gets one [`Fresh`] part per vector.
pub fn vecs_built_by<T: Pod, R, const N: usize>(
    storage: [Vec<T>; N],
    lens: [usize; N],
    build: impl FnOnce([Fresh<'_, T>; N]) -> R,
) -> ([Vec<T>; N], R) {
    let mut vecs = storage;
    for (v, &len) in vecs.iter_mut().zip(&lens) {
        v.clear();
        v.reserve_exact(len);
    }
    let zeroed: [AtomicUsize; N] = std::array::from_fn(|_| AtomicUsize::new(0));
    let r = {
        let mut parts = vecs
            .iter_mut()
            .zip(&lens)
            .zip(&zeroed)
            .map(|((v, &len), z)| Fresh {
                part: &mut v.spare_capacity_mut()[..len],
                zeroed: z,
            });
        build(std::array::from_fn(|_| {
            parts.next().expect("one part per vector")
        }))
    };
    for ((v, &len), z) in vecs.iter_mut().zip(&lens).zip(zeroed) {
        // Parts are disjoint and each is counted once, when it is zeroed (consuming it), so a
        // count of `len` means that every value was.
        if z.into_inner() != len {
            zero_uninit(&mut v.spare_capacity_mut()[..len]);
        }
        // SAFETY: the first `len` values of the spare capacity are initialised: every part
        // was zeroed (and then possibly written) by `build`, or all were zeroed just above.
        // No part outlives `build` (its lifetime is local to this call).
        unsafe { v.set_len(len) };
    }
    (vecs, r)
}

/// Zeroes `s` and returns it as initialised values.
fn zero_uninit<T: Pod>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the write covers exactly the slice's bytes (`MaybeUninit<T>` has `T`'s layout),
    // after it every value is all-zero bytes, a valid `T` (`Pod`), so the slice may be viewed
    // as `[T]` for as long as the exclusive borrow lasts.
    unsafe {
        std::ptr::write_bytes(s.as_mut_ptr(), 0, s.len());
        &mut *(s as *mut [MaybeUninit<T>] as *mut [T])
    }
}

/// Zero filling for slices of plain numbers.
trait FillZero {
    fn fill_zero(&mut self);
}

impl<T: Pod> FillZero for [T] {
    fn fill_zero(&mut self) {
        // SAFETY: `T: Pod`, so all-zero bytes are a valid `T`; the write covers exactly the
        // slice's own bytes.
        unsafe { std::ptr::write_bytes(self.as_mut_ptr(), 0, self.len()) }
    }
}

impl<T: Pod> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        LINES.give(std::mem::take(&mut self.lines));
    }
}

/// Storage of dropped [`AlignedVec`]s (packed K and V, score blocks), kept for the next one.
static LINES: Recycler<Line> = Recycler::new();

/// Buffers of at least this many bytes are kept by a [`Recycler`]; smaller ones go back to
/// the allocator, which reuses them without page faults anyway.
pub const RECYCLE_MIN_BYTES: usize = 64 << 10;

/// The most bytes one [`Recycler`] keeps; past it the oldest kept buffers are freed.
pub const RECYCLE_MAX_BYTES: usize = 64 << 20;

/// Large buffers kept between calls, so that the next call of the same shape writes into
/// memory that is already mapped.
///
/// Why: a freed large block goes back to the operating system (glibc unmaps it, or trims the
/// heap it came from), and the next call's workers page-fault it in again, one 4 KiB page at a
/// time, with every unmap also a TLB shoot-down on every core that touched it. On the device
/// Xeon (16 threads, L = 4096, d = 128) quantizing Q, K and V into fresh vectors took 0.32 ms
/// against 0.09 ms into reused ones, and the packing 0.11 ms inside a call against 0.04 ms
/// alone (`examples`-style timing, same process).
///
/// A buffer is handed out only for a request of at least half its capacity, so a small
/// request never pins a huge block. [`release_kept_buffers`] frees everything kept.
pub struct Recycler<T> {
    kept: Mutex<Kept<T>>,
}

struct Kept<T> {
    /// Oldest first, each empty (length 0) with its capacity intact.
    bufs: Vec<Vec<T>>,
    bytes: usize,
}

impl<T> Recycler<T> {
    pub const fn new() -> Self {
        Recycler {
            kept: Mutex::new(Kept {
                bufs: Vec::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<T>> {
        // The lists stay consistent even if a holder panicked (every update is one push or
        // one remove with its byte count), so a poisoned lock is still usable.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty vector: a kept one with room for `len` values (and at most twice that), the
    /// smallest such, or a new one without any capacity.
    pub fn take(&self, len: usize) -> Vec<T> {
        if len.saturating_mul(size_of::<T>()) < RECYCLE_MIN_BYTES {
            return Vec::new();
        }
        let mut kept = self.lock();
        let best = kept
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let b = kept.bufs.remove(i);
                kept.bytes -= b.capacity() * size_of::<T>();
                b
            }
            None => Vec::new(),
        }
    }

    /// Keeps `v`'s storage for a later [`Recycler::take`] when it is large enough, freeing the
    /// oldest kept buffers if the total would pass [`RECYCLE_MAX_BYTES`].
    pub fn give(&self, mut v: Vec<T>) {
        let bytes = v.capacity().saturating_mul(size_of::<T>());
        if !(RECYCLE_MIN_BYTES..=RECYCLE_MAX_BYTES).contains(&bytes) {
            return;
        }
        v.clear();
        let mut evicted = Vec::new();
        {
            let mut kept = self.lock();
            while kept.bytes + bytes > RECYCLE_MAX_BYTES {
                let old = kept.bufs.remove(0);
                kept.bytes -= old.capacity() * size_of::<T>();
                evicted.push(old);
            }
            kept.bufs.push(v);
            kept.bytes += bytes;
        }
        // Freed outside the lock (unmapping can take a while).
        drop(evicted);
    }

    /// Frees every kept buffer.
    pub fn clear(&self) {
        let bufs = {
            let mut kept = self.lock();
            kept.bytes = 0;
            std::mem::take(&mut kept.bufs)
        };
        drop(bufs);
    }

    /// Bytes kept now.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl<T> Default for Recycler<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Storage of the int8 copies of Q, K and V that [`crate::Attention::run`] makes.
pub(crate) static I8_BUFFERS: Recycler<i8> = Recycler::new();

/// Frees the large buffers kept for later calls (see [`Recycler`]): up to
/// [`RECYCLE_MAX_BYTES`] each for aligned storage and for int8 tensors. Only memory use
/// changes; the next call allocates again.
pub fn release_kept_buffers() {
    LINES.clear();
    I8_BUFFERS.clear();
}

/// Bytes kept for later calls by all recyclers together.
pub fn kept_buffer_bytes() -> usize {
    LINES.kept_bytes() + I8_BUFFERS.kept_bytes()
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len * size_of::<T>()` initialised bytes (`zeroed`
        // sized it, `truncate` and `grow` keep `len` within it), its start is 64-byte aligned
        // so aligned for `T` (`Pod` alignments divide 64), and every byte pattern is a valid
        // `T`. The borrow of `self` keeps the storage alive and unaliased by writers.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Pod> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Pod> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Pod + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod> From<Vec<T>> for AlignedVec<T> {
    fn from(v: Vec<T>) -> Self {
        Self::from_slice(&v)
    }
}

impl<T: Pod> From<&[T]> for AlignedVec<T> {
    fn from(v: &[T]) -> Self {
        Self::from_slice(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_reads_back() {
        for n in [0usize, 1, 15, 64, 65, 1000] {
            let src: Vec<i32> = (0..n as i32).map(|i| i * 7 - 3).collect();
            let v = AlignedVec::from_slice(&src);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert_eq!(&*v, &src[..]);
            assert_eq!(v.clone(), v);
        }
    }

    #[test]
    fn parallel_builds_cover_every_value() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for (len, piece) in [
                (0usize, 4usize),
                (1, 4),
                (7, 3),
                (64, 16),
                (1000, 7),
                (5, 0),
            ] {
                // Each piece sees zeros, then gets its index and offset written in.
                let seen_zero = std::sync::atomic::AtomicBool::new(true);
                let v = AlignedVec::<u32>::par_build(len, piece, |i, p| {
                    if p.iter().any(|&x| x != 0) {
                        seen_zero.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    for (j, x) in p.iter_mut().enumerate() {
                        *x = (i * piece.max(1) + j) as u32 * 3 + 1;
                    }
                });
                assert!(seen_zero.into_inner());
                assert_eq!(v.len(), len);
                assert_eq!(v.as_ptr() as usize % 64, 0);
                assert!(v.iter().enumerate().all(|(j, &x)| x == j as u32 * 3 + 1));

                let [a, b] = par_vecs::<i8, 2>([len, len / 2], piece, |t, i, p| {
                    for (j, x) in p.iter_mut().enumerate() {
                        *x = ((i * piece.max(1) + j) % 100) as i8 - t as i8 * 50;
                    }
                });
                assert_eq!((a.len(), b.len()), (len, len / 2));
                assert!(a.iter().enumerate().all(|(j, &x)| x == (j % 100) as i8));
                assert!(b
                    .iter()
                    .enumerate()
                    .all(|(j, &x)| x == (j % 100) as i8 - 50));
            }
        });
    }

    #[test]
    fn built_vectors_are_always_initialised() {
        // Every part zeroed and written: the writes stay.
        let (v, r) = vec_built_by(Vec::new(), 10, |f: Fresh<'_, u32>| {
            let parts = f.chunks(3);
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [3, 3, 3, 1]
            );
            for (i, p) in parts.into_iter().enumerate() {
                let p = p.zeroed();
                assert!(p.iter().all(|&x| x == 0));
                p.fill(i as u32 + 1);
            }
            7
        });
        assert_eq!(r, 7);
        assert_eq!(v, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        // A part left untouched: the whole vector comes back zeroed, reusing the storage.
        let cap = v.capacity();
        let (w, ()) = vec_built_by(v, 6, |f| {
            let (a, _b) = f.split_at(2);
            a.zeroed().fill(9);
        });
        assert_eq!(w, [0; 6]);
        assert_eq!(w.capacity(), cap);
        let (e, ()) = vec_built_by(Vec::<f32>::new(), 0, |f| assert!(f.is_empty()));
        assert!(e.is_empty());
    }

    #[test]
    fn truncate_and_grow() {
        let mut v = AlignedVec::<u8>::from_slice(&[1, 2, 3, 4, 5]);
        v.truncate(2);
        assert_eq!(&*v, &[1, 2]);
        v.truncate(9);
        assert_eq!(v.len(), 2);
        // Growing within the allocation zeroes the new part.
        v.grow(6);
        assert_eq!(&*v, &[1, 2, 0, 0, 0, 0]);
        // Growing past it reallocates, still aligned and zeroed.
        v.grow(1000);
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 0));
        assert_eq!(v.as_ptr() as usize % 64, 0);
        v.grow(10);
        assert_eq!(v.len(), 1000);
    }

    #[test]
    fn recycler_hands_back_fitting_buffers_only() {
        let r = Recycler::<u8>::new();
        let mib = 1 << 20;
        // Small buffers are not kept.
        r.give(Vec::with_capacity(RECYCLE_MIN_BYTES - 1));
        assert_eq!(r.kept_bytes(), 0);
        assert_eq!(r.take(RECYCLE_MIN_BYTES - 1).capacity(), 0);
        let mut a = Vec::with_capacity(mib);
        a.extend_from_slice(&[7u8; 100]);
        let a_ptr = a.as_ptr();
        r.give(a);
        r.give(Vec::with_capacity(4 * mib));
        assert_eq!(r.kept_bytes(), 5 * mib);
        // More than twice the request: not handed out.
        assert_eq!(r.take(mib / 2 - 1).capacity(), 0);
        // The smallest that fits, empty, with its memory.
        let got = r.take(mib / 2);
        assert_eq!((got.len(), got.capacity(), got.as_ptr()), (0, mib, a_ptr));
        assert_eq!(r.kept_bytes(), 4 * mib);
        // Nothing fits: a new, empty vector.
        assert_eq!(r.take(5 * mib).capacity(), 0);
        assert_eq!(r.take(3 * mib).capacity(), 4 * mib);
        assert_eq!(r.kept_bytes(), 0);
    }

    #[test]
    fn recycler_frees_the_oldest_past_its_limit() {
        let r = Recycler::<u8>::new();
        let quarter = RECYCLE_MAX_BYTES / 4;
        let first = Vec::<u8>::with_capacity(quarter);
        let first_ptr = first.as_ptr();
        r.give(first);
        for _ in 0..3 {
            r.give(Vec::with_capacity(quarter));
        }
        assert_eq!(r.kept_bytes(), RECYCLE_MAX_BYTES);
        // Half more: the two oldest go.
        r.give(Vec::with_capacity(quarter + 1));
        assert_eq!(r.kept_bytes(), 3 * quarter + 1);
        let left: Vec<Vec<u8>> = (0..3).map(|_| r.take(quarter)).collect();
        assert!(left
            .iter()
            .all(|b| b.capacity() >= quarter && b.as_ptr() != first_ptr));
        // Larger than the limit itself: never kept.
        r.give(Vec::with_capacity(RECYCLE_MAX_BYTES + 1));
        assert!(r.kept_bytes() <= quarter + 1);
        r.clear();
        assert_eq!(r.kept_bytes(), 0);
    }

    #[test]
    fn reused_storage_starts_zeroed() {
        // Whatever another test does with the shared recycler meanwhile, a new vector never
        // shows a dropped one's values.
        let n = 4 * RECYCLE_MIN_BYTES;
        for _ in 0..4 {
            let mut dirty = AlignedVec::<u8>::zeroed(n);
            dirty.fill(0xAB);
            drop(dirty);
            let z = AlignedVec::<u32>::zeroed(n / 4);
            assert!(z.iter().all(|&x| x == 0));
            assert_eq!(z.as_ptr() as usize % 64, 0);
            drop(z);
            let mut dirty = AlignedVec::<u8>::zeroed(n);
            dirty.fill(0xCD);
            drop(dirty);
            // Pieces that `fill` leaves alone stay zero.
            let b = AlignedVec::<u8>::par_build(n - 3, 1000, |i, p| {
                if i % 2 == 0 {
                    p.fill(1)
                }
            });
            for (i, piece) in b.chunks(1000).enumerate() {
                assert!(piece.iter().all(|&x| x == (i % 2 == 0) as u8));
            }
            assert_eq!(b.as_ptr() as usize % 64, 0);
        }
        release_kept_buffers();
    }
}
