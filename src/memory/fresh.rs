//! [`Fresh`] parts: pieces of an output that nobody has touched yet, handed to parallel
//! workers. A part's values can only be reached through [`Fresh::zeroed`], which zeroes them
//! first, so the code that builds an output never sees uninitialised memory or stale values,
//! and each worker zeroes (and page-faults) only the rows it is about to write, inside its own
//! task, instead of a serial pass over the whole output before the work starts.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Pod;

/// A part of a vector under construction that nobody has touched yet (see the module docs).
pub(crate) struct Fresh<'a, T> {
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

/// A vector of `len` values built by `build` from one [`Fresh`] part covering all of it (in
/// `storage`, which is cleared and reallocated only if too small), and what `build` returned.
/// Every value is zero until `build` writes it; if `build` did not zero every part (it returned
/// early, or dropped a part), the whole vector is zeroed afterwards, so the result is always
/// initialised.
pub(crate) fn vec_built_by<T: Pod, R>(
    storage: Vec<T>,
    len: usize,
    build: impl FnOnce(Fresh<'_, T>) -> R,
) -> (Vec<T>, R) {
    let mut v = storage;
    v.clear();
    v.reserve_exact(len);
    let zeroed = AtomicUsize::new(0);
    let r = build(Fresh {
        part: &mut v.spare_capacity_mut()[..len],
        zeroed: &zeroed,
    });
    // Parts are disjoint and each is counted once, when it is zeroed (consuming it), so a
    // count of `len` means that every value was.
    if zeroed.into_inner() != len {
        zero_uninit(&mut v.spare_capacity_mut()[..len]);
    }
    // SAFETY: the first `len` values of the spare capacity are initialised: every part was
    // zeroed (and then possibly written) by `build`, or all were zeroed just above. No part
    // outlives `build` (its lifetime is local to this call).
    unsafe { v.set_len(len) };
    (v, r)
}

/// [`vec_built_by`] over values the caller already has: `build` gets one [`Fresh`] part
/// covering `out`, whose current values it never sees (each part is zeroed before it can be
/// read or written). If `build` did not zero every part, all of `out` is zeroed afterwards,
/// so no old value survives either way.
pub(crate) fn built_in<T: Pod, R>(out: &mut [T], build: impl FnOnce(Fresh<'_, T>) -> R) -> R {
    let len = out.len();
    let zeroed = AtomicUsize::new(0);
    let r = {
        // SAFETY: `MaybeUninit<T>` has `T`'s layout. The view lives only inside this block,
        // and the only write a `Fresh` makes through it is all-zero bytes (`zero_uninit`), a
        // valid `T` (`Pod`), before it hands the values out as `&mut [T]`; so every value of
        // `out` is initialised whenever `out` is used again.
        let part = unsafe { &mut *(out as *mut [T] as *mut [MaybeUninit<T>]) };
        build(Fresh {
            part,
            zeroed: &zeroed,
        })
    };
    if zeroed.into_inner() != len {
        bytemuck::fill_zeroes(out);
    }
    r
}

/// Zeroes `s` and returns it as initialised values.
fn zero_uninit<T: Pod>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the write covers exactly the slice's bytes (`MaybeUninit<T>` has `T`'s layout);
    // after it every value is all-zero bytes, a valid `T` (`Pod`), so the slice may be viewed
    // as `[T]` for as long as the exclusive borrow lasts.
    unsafe {
        std::ptr::write_bytes(s.as_mut_ptr(), 0, s.len());
        &mut *(s as *mut [MaybeUninit<T>] as *mut [T])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_left_alone_are_zeroed_and_written_parts_kept() {
        let (v, ()) = vec_built_by(vec![9u32; 3], 10, |all| {
            let mut parts = all.chunks(4);
            let last = parts.pop().unwrap();
            last.zeroed().fill(5);
            drop(parts);
        });
        // Two parts were never zeroed: the whole vector is zeroed afterwards, the written part
        // included (no value of a half-built vector survives).
        assert_eq!(v, vec![0; 10]);
        let mut out = vec![7i32; 6];
        built_in(&mut out, |all| {
            let (a, _b) = all.split_at(2);
            a.zeroed()[0] = 3;
        });
        assert_eq!(out, vec![0; 6]);
        let mut out = vec![7i32; 6];
        built_in(&mut out, |all| {
            for p in all.chunks(4) {
                p.zeroed()[0] = 1;
            }
        });
        assert_eq!(out, vec![1, 0, 0, 0, 1, 0]);
    }
}
