//! The slot table: chunks, the tagged free list, claiming and taking slots (invariant 3).

use super::*;

/// Slots in the first chunk of a heap node's table (user storage picks its own).
#[cfg(not(loom))]
pub(super) const BASE: usize = 4;
#[cfg(not(loom))]
pub(super) const NCHUNKS: usize = 26;
#[cfg(loom)]
pub(super) const BASE: usize = 2;
#[cfg(loom)]
pub(super) const NCHUNKS: usize = 3;

// The free list's head word: half index, half ABA tag. 64 bits wherever the target has
// 64-bit atomics (32-bit tags: a stale head would need 2^32 pushes and pops while one
// claimer sits between two instructions). Chips without them (thumbv6m, thumbv7em) use
// the pointer-sized word: 16-bit tags and at most 65,534 live registrations per context,
// far beyond their RAM. The bound that follows, stated exactly: a registrant there can be
// fooled by a stale head only if, between its load of the head and its CAS (two
// instructions), code that preempts it (an interrupt handler or a higher-priority task)
// pops and pushes the same context's free list a multiple of 65,536 times and leaves the
// same index on top. At a few microseconds per registration that is tens of milliseconds
// of registering and unregistering children of one context inside one preemption; a design
// that does this must not run on these chips. (The loom model
// `free_list_pop_stalled_across_pop_pop_push` shows the tag is what stops it.)
#[cfg(any(loom, target_has_atomic = "64"))]
pub(super) type Word = u64;
#[cfg(any(loom, target_has_atomic = "64"))]
use crate::sync::AtomicU64 as AtomicWord;
#[cfg(not(any(loom, target_has_atomic = "64")))]
pub(super) type Word = usize;
#[cfg(not(any(loom, target_has_atomic = "64")))]
use crate::sync::AtomicUsize as AtomicWord;

#[cfg(target_pointer_width = "16")]
compile_error!("kontext needs pointers of at least 32 bits");

pub(super) const IDX_BITS: u32 = Word::BITS / 2;
pub(super) const IDX_MASK: Word = (1 << IDX_BITS) - 1;
pub(super) const TAG_ONE: Word = 1 << IDX_BITS;

/// The most slots a user table may have inline (the free list must be able to name them).
pub(crate) const MAX_INLINE: usize = 1 << 15;

pub(crate) struct Slot {
    pub(super) ptr: AtomicPtr<Link>,
    /// Next free index + 1 (0: end), meaningful only while on the free list.
    next_free: AtomicUsize,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Slot {
            ptr: AtomicPtr::new(ptr::null_mut()),
            next_free: AtomicUsize::new(0),
        }
    }
}

/// A cancel node's table of registered children and callbacks, and its wait list.
/// Allocated lazily by a heap node's first child, callback or waiter; part of the storage
/// of a user node, installed before the node is published.
pub(crate) struct Side {
    /// Tagged head: `tag << IDX_BITS | (index + 1)`; the tag changes on every push and pop,
    /// so a stale head never wins a CAS (no ABA).
    free: AtomicWord,
    /// Indexes ever handed out by bumping.
    len: AtomicUsize,
    /// Chunk 0: `1 << shift` slots beside this table (in `HeapSide`, or in the user's
    /// storage), living exactly as long as it.
    first: *const Slot,
    /// log2 of the first chunk's length; chunk `k` has `1 << (shift + k)` slots.
    shift: u8,
    /// Set (never cleared) under the stripe lock when a waiter is linked, before the
    /// waiter's fence (invariant 6), so a cancel walker that reads it unset after its own
    /// fence skips the lock.
    pub(super) has_waiters: AtomicBool,
    /// Chunks 1.., allocated with the directory when chunk 0 is full (`alloc` only; keeps
    /// `Side` small: every node with a child pays for one).
    dir: AtomicPtr<Dir>,
    /// Guarded by the node's stripe lock (invariant 9).
    pub(super) waiters: UnsafeCell<WaitList>,
}

/// A heap node's table with its first chunk, in one allocation.
#[cfg(feature = "alloc")]
#[repr(C)]
pub(super) struct HeapSide {
    side: Side,
    slots: [Slot; BASE],
}

pub(super) struct Dir {
    chunks: [AtomicPtr<Slot>; NCHUNKS],
}

/// Chunk and offset of index `idx` in a table whose first chunk has `1 << shift` slots.
pub(super) fn chunk_of(shift: u32, idx: usize) -> (usize, usize) {
    let k = ((idx >> shift) + 1).ilog2() as usize;
    (k, idx + (1 << shift) - ((1 << shift) << k))
}

pub(super) fn chunk_len(shift: u32, k: usize) -> usize {
    (1 << shift) << k
}

/// Indexes a table can hand out: what its chunks can hold (with `alloc`, the directory's;
/// without, the first chunk's), and what the free list can name.
#[allow(clippy::unnecessary_cast)] // `Word` is `u64` on some targets only
pub(super) fn capacity(shift: u32) -> usize {
    #[cfg(feature = "alloc")]
    let cap = (1u64 << shift).saturating_mul((1u64 << (NCHUNKS + 1)) - 1);
    #[cfg(not(feature = "alloc"))]
    let cap = 1u64 << shift;
    cap.min(IDX_MASK as u64 - 1) as usize
}

impl Side {
    /// A table whose first chunk is the `1 << shift` slots at `first`.
    pub(super) fn with_first(first: *const Slot, shift: u8) -> Self {
        Side {
            free: AtomicWord::new(0),
            len: AtomicUsize::new(0),
            first,
            shift,
            has_waiters: AtomicBool::new(false),
            dir: AtomicPtr::new(ptr::null_mut()),
            waiters: UnsafeCell::new(WaitList::new()),
        }
    }

    /// Writes a table and its first chunk of `n` slots (a power of two) into user storage.
    ///
    /// # Safety
    /// `side` and `slots` are valid for writes (`slots` for `n` slots) and stay in place,
    /// unmoved, until the table is dropped in place.
    pub(crate) unsafe fn init_in_place(side: *mut Side, slots: *mut Slot, n: usize) {
        assert!(
            n.is_power_of_two() && n <= MAX_INLINE,
            "kontext: a table's inline slots must be a power of two of at most {MAX_INLINE}"
        );
        for i in 0..n {
            // SAFETY: the caller guarantees `n` writable slots.
            unsafe { slots.add(i).write(Slot::new()) };
        }
        // SAFETY: the caller guarantees `side` is writable.
        unsafe { side.write(Side::with_first(slots, n.trailing_zeros() as u8)) };
    }

    /// A heap table with `BASE` inline slots; the returned pointer owns the allocation.
    #[cfg(feature = "alloc")]
    pub(super) fn new_heap() -> *mut Side {
        let raw = Box::into_raw(Box::new(HeapSide {
            side: Side::with_first(ptr::null(), BASE.trailing_zeros() as u8),
            slots: core::array::from_fn(|_| Slot::new()),
        }));
        track(1);
        // SAFETY: fresh and unshared; the slots live in the same allocation as the table.
        unsafe { (*raw).side.first = ptr::addr_of!((*raw).slots).cast() };
        raw.cast()
    }

    /// Frees a table made by `new_heap`.
    ///
    /// # Safety
    /// `side` came from `new_heap`, and nobody else can reach it any more.
    #[cfg(feature = "alloc")]
    pub(super) unsafe fn free_heap(side: *mut Side) {
        // SAFETY: `HeapSide` is `repr(C)` with the table first; the pointer is the
        // allocation's own.
        drop(unsafe { Box::from_raw(side.cast::<HeapSide>()) });
        track(-1);
    }

    pub(super) fn shift(&self) -> u32 {
        u32::from(self.shift)
    }

    pub(super) fn slot(&self, idx: usize) -> Option<&Slot> {
        let (k, off) = chunk_of(self.shift(), idx);
        if k == 0 {
            // SAFETY: `first` points at `1 << shift` slots living as long as `self`, and
            // `off < 1 << shift` by construction of `chunk_of`.
            return Some(unsafe { &*self.first.add(off) });
        }
        let dir = self.dir()?;
        // Acquire: pairs with the AcqRel CAS in `ensure_chunk`, so the chunk's slots are
        // initialised before we touch them.
        let p = dir.chunks.get(k - 1)?.load(Acquire);
        // SAFETY: a non-null chunk pointer points at `chunk_len(k)` slots that live as long
        // as `self` (invariant 3), and `off < chunk_len(k)` by construction of `chunk_of`.
        (!p.is_null()).then(|| unsafe { &*p.add(off) })
    }

    #[cfg(feature = "alloc")]
    pub(super) fn ensure_chunk(&self, idx: usize) {
        let (k, _) = chunk_of(self.shift(), idx);
        if k == 0 {
            return;
        }
        let cell = &self.ensure_dir().chunks[k - 1];
        // Acquire: as in `slot`.
        if !cell.load(Acquire).is_null() {
            return;
        }
        let len = chunk_len(self.shift(), k);
        let chunk: Box<[Slot]> = (0..len).map(|_| Slot::new()).collect();
        let raw = Box::into_raw(chunk) as *mut Slot;
        track(1);
        // AcqRel: Release publishes the initialised chunk to `slot`'s Acquire; Acquire on
        // failure makes the winner's chunk visible to us.
        if cell
            .compare_exchange(ptr::null_mut(), raw, AcqRel, Acquire)
            .is_err()
        {
            // SAFETY: `raw` came from `Box::into_raw` of a slice of this length just above
            // and was never shared.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(raw, len)) });
            track(-1);
        }
    }

    pub(super) fn dir(&self) -> Option<&Dir> {
        // Acquire: pairs with the AcqRel CAS in `ensure_dir` (the directory is initialised).
        let d = self.dir.load(Acquire);
        // SAFETY: a published directory lives as long as `self`.
        (!d.is_null()).then(|| unsafe { &*d })
    }

    #[cfg(feature = "alloc")]
    pub(super) fn ensure_dir(&self) -> &Dir {
        if let Some(d) = self.dir() {
            return d;
        }
        let new = Box::into_raw(Box::new(Dir {
            chunks: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }));
        track(1);
        // AcqRel: Release publishes the initialised directory; Acquire (also on failure)
        // sees the winner's.
        match self
            .dir
            .compare_exchange(ptr::null_mut(), new, AcqRel, Acquire)
        {
            // SAFETY: just published; lives as long as `self`.
            Ok(_) => unsafe { &*new },
            Err(winner) => {
                // SAFETY: `new` was never shared.
                drop(unsafe { Box::from_raw(new) });
                track(-1);
                // SAFETY: published by the winner; lives as long as `self`.
                unsafe { &*winner }
            }
        }
    }

    /// A slot index for a new registration; `None` when the table is full (the caller
    /// undoes what it did and panics).
    pub(super) fn claim(&self) -> Option<usize> {
        if let Some(idx) = self.pop_free() {
            return Some(idx);
        }
        // Relaxed: uniqueness comes from the RMW; the walker sees the new length through
        // the fences of invariant 5 (this is sequenced before the registrant's fence).
        let idx = self.len.fetch_add(1, Relaxed);
        if idx >= capacity(self.shift()) {
            // Walkers skip indexes past the last chunk (`slot` returns `None`).
            self.len.fetch_sub(1, Relaxed);
            return None;
        }
        #[cfg(feature = "alloc")]
        self.ensure_chunk(idx);
        Some(idx)
    }

    pub(super) fn pop_free(&self) -> Option<usize> {
        // Acquire: pairs with the Release CAS in `push_free`, making `next_free` visible.
        let mut head = self.free.load(Acquire);
        loop {
            let top = (head & IDX_MASK) as usize;
            if top == 0 {
                return None;
            }
            let slot = self.slot(top - 1).expect("free slots are allocated");
            // Relaxed: published by the Acquire above; if the slot was popped and pushed
            // again meanwhile, the tag makes the CAS below fail.
            let next = slot.next_free.load(Relaxed) as Word;
            let new = (head & !IDX_MASK).wrapping_add(TAG_ONE) | next;
            // Acquire on both outcomes: as for the initial load.
            match self.free.compare_exchange_weak(head, new, Acquire, Acquire) {
                Ok(_) => return Some(top - 1),
                Err(h) => head = h,
            }
        }
    }

    pub(super) fn push_free(&self, idx: usize) {
        let slot = self.slot(idx).expect("registered slots are allocated");
        // Relaxed: the CAS below publishes `next_free`; the head value itself is re-checked.
        let mut head = self.free.load(Relaxed);
        loop {
            slot.next_free.store((head & IDX_MASK) as usize, Relaxed);
            let new = (head & !IDX_MASK).wrapping_add(TAG_ONE) | (idx + 1) as Word;
            // Release: publishes `next_free` to the Acquire in `pop_free`.
            match self.free.compare_exchange_weak(head, new, Release, Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Whether any index was ever claimed (children or callbacks may be registered).
    pub(super) fn has_entries(&self) -> bool {
        // Acquire: as in `take_from`; where it matters a SeqCst fence precedes this load
        // (invariant 5).
        self.len.load(Acquire) != 0
    }

    /// The next registered link at or after `*idx`, taken out of its slot (invariant 3).
    pub(super) fn take_from(&self, idx: &mut usize) -> Option<NonNull<Link>> {
        // Acquire: after the walker's fence (invariant 5), this sees every index claimed
        // before a registrant's fence.
        let len = self.len.load(Acquire);
        while *idx < len {
            let i = *idx;
            *idx += 1;
            if let Some(slot) = self.slot(i) {
                // Relaxed: a cheap look before the swap, which decides.
                if !slot.ptr.load(Relaxed).is_null() {
                    // AcqRel: Acquire pairs with the registrant's Release store (the node is
                    // initialised); the RMW makes us or the unregistering CAS the one owner.
                    if let Some(p) = NonNull::new(slot.ptr.swap(ptr::null_mut(), AcqRel)) {
                        return Some(p);
                    }
                }
            }
        }
        None
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        let d = self.dir.load(Relaxed); // Relaxed: &mut self, no concurrency left.
        if d.is_null() {
            return;
        }
        #[cfg(not(feature = "alloc"))]
        unreachable!("no directory without alloc");
        #[cfg(feature = "alloc")]
        self.free_dir(d);
    }
}

impl Side {
    #[cfg(feature = "alloc")]
    pub(super) fn free_dir(&mut self, d: *mut Dir) {
        // SAFETY: allocated by `ensure_dir`; we are its last user.
        let dir = unsafe { Box::from_raw(d) };
        track(-1);
        for (j, cell) in dir.chunks.iter().enumerate() {
            let p = cell.load(Relaxed); // Relaxed: as above.
            if !p.is_null() {
                let len = chunk_len(self.shift(), j + 1);
                // SAFETY: allocated by `ensure_chunk` with this length; the owner is being
                // freed, so nobody else can reach the chunk (invariant 3).
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(p, len)) });
                track(-1);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cancel_node_fits_a_cache_line() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(core::mem::size_of::<CancelNode>(), 64);
    }

    #[test]
    fn side_table_stays_small() {
        #[cfg(target_pointer_width = "64")]
        assert!(
            core::mem::size_of::<Side>() <= 128,
            "{}",
            core::mem::size_of::<Side>()
        );
    }

    #[test]
    fn chunk_math() {
        for shift in [0u32, 1, 2, 5] {
            let base = 1usize << shift;
            assert_eq!(chunk_of(shift, 0), (0, 0));
            assert_eq!(chunk_of(shift, base - 1), (0, base - 1));
            assert_eq!(chunk_of(shift, base), (1, 0));
            assert_eq!(chunk_of(shift, 3 * base - 1), (1, 2 * base - 1));
            assert_eq!(chunk_of(shift, 3 * base), (2, 0));
            assert_eq!(chunk_len(shift, 2), 4 * base);
        }
    }

    #[test]
    fn capacity_never_overflows_and_fits_the_free_list() {
        for shift in 0..=15 {
            let cap = capacity(shift);
            assert!(cap >= 1 << shift);
            #[allow(clippy::unnecessary_cast)] // `Word` is `u64` on some targets only
            let mask = IDX_MASK as u64;
            assert!((cap as u64) < mask);
        }
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn free_list_reuses_indexes() {
        let raw = Side::new_heap();
        // SAFETY: just made; freed at the end of the test.
        let side = unsafe { &*raw };
        let a = side.claim().unwrap();
        let b = side.claim().unwrap();
        assert_ne!(a, b);
        side.push_free(a);
        assert_eq!(side.claim(), Some(a));
        let many: alloc::vec::Vec<_> = (0..100).map(|_| side.claim().unwrap()).collect();
        for &i in &many {
            assert!(side.slot(i).is_some());
        }
        for &i in &many {
            side.push_free(i);
        }
        assert_eq!(side.len.load(Relaxed), 102);
        for _ in 0..100 {
            assert!(side.claim().unwrap() < 102);
        }
        // SAFETY: from `new_heap`, no longer used.
        unsafe { Side::free_heap(raw) };
    }
}
