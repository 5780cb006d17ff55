//! The only source of atomics, `UnsafeCell` and locks in the crate.
//!
//! Three worlds, one import path (`crate::sync`):
//! - `core::sync::atomic` on targets with pointer-sized compare-and-swap;
//! - `portable-atomic` on chips without it (thumbv6m): the final binary picks the
//!   `critical-section` implementation, this library never does;
//! - `loom` under `--cfg loom`, so the models in `tests/loom.rs` explore every interleaving.

// Without `alloc` there are no nodes, so most of the shim is unused.
#![cfg_attr(not(feature = "alloc"), allow(unused_imports, dead_code))]

/// 64-bit atomics exist natively only on some targets; the manual clock needs them.
#[cfg(all(not(loom), target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;
#[cfg(all(not(loom), target_has_atomic = "ptr"))]
pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(all(not(loom), not(target_has_atomic = "ptr")))]
pub(crate) use portable_atomic::{fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// The one-time attach state of user-provided node storage: a plain atomic even under
/// loom (`const`-constructible, so storage can be a `static`). It only guards against a
/// second attach; the tree's own protocol does not depend on it.
#[cfg(target_has_atomic = "ptr")]
pub(crate) use core::sync::atomic::AtomicU8 as InitState;
#[cfg(not(target_has_atomic = "ptr"))]
pub(crate) use portable_atomic::AtomicU8 as InitState;

// ---------------------------------------------------------------------------------------
// "Read-modify-write, then `fence(SeqCst)`" (the tree's store-buffering pairs).
//
// Always a real fence. (On x86 a locked RMW is already a full barrier, and an earlier
// version let it stand in for the fence, about 3 ns per use; neither loom nor miri can
// check that form, since the language's memory model gives the store-buffering guarantee
// to fences only, and no test caught it turned into a plain store. What no tool checks
// is not worth 3 ns.)

mod rmw_fence {
    use super::{fence, AtomicPtr, Ordering::*};

    #[inline]
    pub(crate) fn cas_then_fence<T>(a: &AtomicPtr<T>, cur: *mut T, new: *mut T) -> bool {
        // AcqRel: Release publishes what the new value owns; Acquire orders what follows
        // after earlier publications. Relaxed on failure: callers read nothing then.
        let ok = a.compare_exchange(cur, new, AcqRel, Relaxed).is_ok();
        if ok {
            fence(SeqCst);
        }
        ok
    }

    #[inline]
    pub(crate) fn store_then_fence<T>(a: &AtomicPtr<T>, v: *mut T) {
        // Release: publishes the initialised pointee; the fence does the ordering.
        a.store(v, Release);
        fence(SeqCst);
    }
}

/// `compare_exchange(cur, new)` with AcqRel's effects; on success, also a `fence(SeqCst)`'s.
#[allow(unused_imports)]
pub(crate) use rmw_fence::cas_then_fence;
/// `store(v, Release)` followed by the effect of `fence(SeqCst)`.
#[allow(unused_imports)]
pub(crate) use rmw_fence::store_then_fence;

/// `UnsafeCell` with loom's checked access API on every build.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
#[allow(dead_code)]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
}
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// Plain memory that a protocol hands from one thread to another with an atomic ordering
/// (a user node's storage, released by the walker and reused by its owner; a waiter's
/// fields, written by the walker and then by the waiter). Zero-sized and free, except
/// under loom, where it is a cell: `read`/`write` at each side's last and first accesses
/// let loom check the Release/Acquire pair that orders them, which it cannot see for the
/// plain memory itself (not loom-tracked).
#[derive(Debug, Default)]
pub(crate) struct Handover {
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<()>,
}

impl Handover {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Handover {}
    }
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Handover {
            cell: loom::cell::UnsafeCell::new(()),
        }
    }
    /// This thread reads the handed-over memory here.
    #[inline]
    pub(crate) fn read(&self) {
        #[cfg(loom)]
        self.cell.with(|_| ());
    }
    /// This thread writes (or frees) the handed-over memory here.
    #[inline]
    pub(crate) fn write(&self) {
        #[cfg(loom)]
        self.cell.with_mut(|_| ());
    }
}

/// Tells the processor (or loom's scheduler) that this thread is spinning.
#[inline]
#[allow(dead_code)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(all(not(loom), feature = "std"))]
    std::thread::yield_now();
    #[cfg(all(not(loom), not(feature = "std")))]
    core::hint::spin_loop();
}

/// A mutual-exclusion lock used only as the wait lists' stripe locks (never on the cancel,
/// create, drop, check or lookup paths of a context nobody waits on): std's `Mutex` with
/// `std`, loom's under loom, a critical section with feature `critical-section`, otherwise
/// a small test-and-test-and-set spin lock.
///
/// The spin lock is not interrupt-safe: on a single core, an interrupt handler that polls a
/// waiting future or cancels a context while the interrupted code holds the same list's
/// lock spins forever. Without `std`, either enable `critical-section` (the lock then masks
/// interrupts, or takes the multi-core lock the firmware's implementation provides, for the
/// few instructions it is held), or wait on contexts and cancel them only from tasks
/// (thread mode). Checking (`is_cancelled`) is lock-free and fine anywhere.
pub(crate) use self::mutex::Mutex;

#[cfg(loom)]
mod mutex {
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

#[cfg(all(feature = "std", not(loom)))]
mod mutex {
    extern crate std;
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            // A panic while holding the lock cannot leave the list inconsistent (every
            // critical section is panic-free), so poisoning is ignored.
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

#[cfg(all(not(feature = "std"), feature = "critical-section", not(loom)))]
mod mutex {
    use core::cell::UnsafeCell;
    use core::marker::PhantomData;
    use core::ops::{Deref, DerefMut};

    #[derive(Debug)]
    pub(crate) struct Mutex<T> {
        value: UnsafeCell<T>,
    }

    // SAFETY: `value` is only reached through a `Guard`, which exists only inside a
    // critical section, and critical sections exclude each other (on every core).
    unsafe impl<T: Send> Sync for Mutex<T> {}
    // SAFETY: as above; moving the lock moves the value.
    unsafe impl<T: Send> Send for Mutex<T> {}

    /// Holds the critical section; `!Send`, so it is released on the thread (or interrupt
    /// level) that acquired it, as `critical_section::release` requires.
    pub(crate) struct Guard<'a, T> {
        mutex: &'a Mutex<T>,
        restore: critical_section::RestoreState,
        _not_send: PhantomData<*const ()>,
    }

    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Self {
                value: UnsafeCell::new(v),
            }
        }
        pub(crate) fn lock(&self) -> Guard<'_, T> {
            // SAFETY: released exactly once, by `Guard::drop`, with this restore state.
            // Guards are properly nested: the crate never holds two wait-list guards at
            // once, and a guard lives in one scope.
            let restore = unsafe { critical_section::acquire() };
            Guard {
                mutex: self,
                restore,
                _not_send: PhantomData,
            }
        }
    }
    impl<T> Deref for Guard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: we are inside the critical section.
            unsafe { &*self.mutex.value.get() }
        }
    }
    impl<T> DerefMut for Guard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: inside the critical section, and `&mut self` makes it unique.
            unsafe { &mut *self.mutex.value.get() }
        }
    }
    impl<T> Drop for Guard<'_, T> {
        fn drop(&mut self) {
            // SAFETY: the state `lock` acquired, released once (see `lock`).
            unsafe { critical_section::release(self.restore) };
        }
    }
}

#[cfg(all(not(feature = "std"), not(feature = "critical-section"), not(loom)))]
mod mutex {
    use super::Ordering;
    use core::cell::UnsafeCell;
    use core::ops::{Deref, DerefMut};

    #[cfg(target_has_atomic = "ptr")]
    use core::sync::atomic::AtomicBool;
    #[cfg(not(target_has_atomic = "ptr"))]
    use portable_atomic::AtomicBool;

    #[derive(Debug)]
    pub(crate) struct Mutex<T> {
        locked: AtomicBool,
        value: UnsafeCell<T>,
    }

    // SAFETY: access to `value` is serialised by `locked` (acquire on lock, release on
    // unlock), exactly like `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for Mutex<T> {}
    // SAFETY: as above; moving the lock moves the value.
    unsafe impl<T: Send> Send for Mutex<T> {}

    pub(crate) struct Guard<'a, T>(&'a Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(v: T) -> Self {
            Self {
                locked: AtomicBool::new(false),
                value: UnsafeCell::new(v),
            }
        }
        pub(crate) fn lock(&self) -> Guard<'_, T> {
            loop {
                // Acquire: pairs with the Release store in `Guard::drop`, so the previous
                // holder's writes to `value` are visible.
                if self
                    .locked
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Guard(self);
                }
                // Relaxed: only a hint to retry; the CAS above does the synchronising.
                while self.locked.load(Ordering::Relaxed) {
                    core::hint::spin_loop();
                }
            }
        }
    }
    impl<T> Deref for Guard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: the guard proves we hold the lock.
            unsafe { &*self.0.value.get() }
        }
    }
    impl<T> DerefMut for Guard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: the guard proves we hold the lock, and `&mut self` makes it unique.
            unsafe { &mut *self.0.value.get() }
        }
    }
    impl<T> Drop for Guard<'_, T> {
        fn drop(&mut self) {
            // Release: publishes our writes to `value` to the next Acquire in `lock`.
            self.0.locked.store(false, Ordering::Release);
        }
    }
}
