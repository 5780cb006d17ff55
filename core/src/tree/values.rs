//! Typed values: the chain of value nodes, its jump pointers, and lookup (invariant 12).
//!
//! A value node's `values` is the nearest value node above it, so a lookup could step
//! through every value node between the context and the wanted one: O(n) dependent loads
//! through n values of other types (Go's chain of `valueCtx` is the same). Each value node
//! also carries a *jump*: a pointer further up the chain, and a small Bloom filter (`span`)
//! of the types of the nodes it jumps over (itself included, the jump's target excluded).
//! A lookup that finds its type's bit clear in the filter skips the whole span at once.
//!
//! The jumps follow the skew-binary pattern of Myers' random-access lists: a node jumps one
//! step, or, if its parent's jump and that jump's jump span equally many nodes, over both
//! of them and its parent at once, so spans are `2^k - 1` nodes long and any ancestor is
//! reached in O(log n) jumps. The filter fills up on long spans of distinct types (then the
//! lookup steps one node and tries the next, shorter span), so a chain of 1000 distinct
//! types takes about 160 steps instead of 1000 to reach its root value.
//!
//! All of it is written before the node is published and never changes: no atomics.

use super::*;

/// The filter's bits: the high bits of `span` (56 on 64-bit targets, 24 on 32-bit ones; a
/// pointer-sized word keeps value nodes small there); the low 8 hold the jump's level.
const LEVEL_BITS: u32 = 8;
const LEVEL_MASK: usize = (1 << LEVEL_BITS) - 1;

/// The filter bit of a type: one of the high bits of a word, from the type id's hash.
#[inline]
pub(super) fn type_bit(t: TypeId) -> usize {
    /// Keeps the last 64 bits `TypeId`'s `Hash` writes (its own hash of the type).
    struct Last(u64);
    impl core::hash::Hasher for Last {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
        fn write_u64(&mut self, v: u64) {
            self.0 ^= v;
        }
    }
    let mut h = Last(0);
    core::hash::Hash::hash(&t, &mut h);
    // Fibonacci hashing: the high bits of the product are well mixed.
    let pos = ((h.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
        % u64::from(usize::BITS - LEVEL_BITS)) as u32
        + LEVEL_BITS;
    1 << pos
}

fn level(span: usize) -> usize {
    span & LEVEL_MASK
}

impl ValueHead {
    /// The head of a value node of type `t` with `header`: its jump and filter computed
    /// from the chain above (`header.values`, alive by invariant 2).
    pub(super) fn new(header: Header, type_id: TypeId, drop: unsafe fn(NonNull<Header>)) -> Self {
        let bit = type_bit(type_id);
        // (jump, span): one step to the parent value node; or, when the parent's jump and
        // its jump's jump are of the same level, over the parent and both spans.
        let (jump, span) = match header.values {
            None => (None, bit | 1),
            Some(p) => {
                // SAFETY: `values` chains only point at value nodes, alive by invariant 2
                // (the new node's parent keeps its ancestors alive).
                let ph = unsafe { p.cast::<ValueHead>().as_ref() };
                // SAFETY: as above, for every node of the chain.
                let pj = ph.jump.map(|j| unsafe { j.cast::<ValueHead>().as_ref() });
                match pj {
                    Some(pj) if level(pj.span) == level(ph.span) && level(ph.span) < LEVEL_MASK => {
                        (
                            pj.jump,
                            (ph.span | pj.span | bit) & !LEVEL_MASK | (level(ph.span) + 1),
                        )
                    }
                    _ => (Some(p), bit | 1),
                }
            }
        };
        ValueHead {
            header,
            jump,
            span,
            type_id,
            drop,
        }
    }
}

/// The value of type `T` nearest to `node` (itself included), walking value nodes only.
///
/// Takes the node's raw pointer: a value node's payload lies past its `Header`, which a
/// pointer re-derived from a `&Header` may not read (Stacked Borrows).
///
/// # Safety
/// `node` is alive for `'a` (a handle or a borrow of its storage).
#[inline]
pub(crate) unsafe fn value<'a, T: 'static>(node: NonNull<Header>) -> Option<&'a T> {
    let want = TypeId::of::<T>();
    // SAFETY: the caller keeps `node` alive.
    let h = unsafe { node.as_ref() };
    let mut v = match h.link.kind {
        Kind::Value => Some(node),
        _ => h.values,
    };
    // The first `PLAIN` value nodes are checked one by one, as a plain chain: a short
    // chain costs no filter test, and its loop branch is predictable (a filter bit is not:
    // on a few nodes a mispredicted jump costs more than the steps it saves).
    let mut left = PLAIN;
    while let Some(p) = v {
        if left == 0 {
            // SAFETY: `p` is a value node of the chain, alive as the caller's node.
            return unsafe { value_far::<T>(p) };
        }
        left -= 1;
        // SAFETY: `values` chains only point at value nodes (all `ValueHead`-prefixed),
        // kept alive by invariant 2.
        let head = unsafe { &*p.cast::<ValueHead>().as_ptr() };
        if head.type_id == want {
            // SAFETY: the type id says this is a `ValueNode<T>`.
            return Some(unsafe { &(*p.cast::<ValueNode<T>>().as_ptr()).value });
        }
        v = head.header.values;
    }
    None
}

/// `value` past the first `PLAIN` value nodes: the filter first, so a clear bit skips
/// the span without reading the type (invariant 12).
///
/// # Safety
/// `v` is a value node alive for `'a`.
#[inline(never)]
unsafe fn value_far<'a, T: 'static>(v: NonNull<Header>) -> Option<&'a T> {
    let want = TypeId::of::<T>();
    let bit = type_bit(want);
    let mut v = Some(v);
    while let Some(p) = v {
        // SAFETY: jumps and `values` only point at value nodes of the chain, alive by
        // invariant 2.
        let head = unsafe { &*p.cast::<ValueHead>().as_ptr() };
        if head.span & bit == 0 {
            // No node from here up to the jump has type `T` (invariant 12).
            v = head.jump;
            continue;
        }
        if head.type_id == want {
            // SAFETY: the type id says this is a `ValueNode<T>`.
            return Some(unsafe { &(*p.cast::<ValueNode<T>>().as_ptr()).value });
        }
        v = head.header.values;
    }
    None
}

/// Value nodes a lookup checks one by one before it uses the jumps.
const PLAIN: usize = 16;

#[cfg(all(test, feature = "alloc", not(loom)))]
mod tests {
    use crate::Context;

    struct L<const N: usize>(usize);

    macro_rules! push_all {
        ($ctx:expr, $i:expr, $($n:literal)*) => {{
            let mut c = $ctx;
            $( c = c.with_value(L::<$n>($i * 100 + $n)); )*
            c
        }};
    }

    /// Every type found, the nearest one winning, through chains with repeated types.
    #[test]
    fn jumps_never_skip_the_nearest_value() {
        let mut ctx = Context::background();
        let mut chains = alloc::vec::Vec::new();
        for i in 0..40usize {
            ctx = push_all!(ctx, i, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19);
            if i % 3 == 0 {
                ctx = ctx.with_value(i);
            }
            chains.push(ctx.clone());
        }
        for (i, c) in chains.iter().enumerate() {
            assert_eq!(c.value::<L<0>>().map(|l| l.0), Some(i * 100));
            assert_eq!(c.value::<L<7>>().map(|l| l.0), Some(i * 100 + 7));
            assert_eq!(c.value::<L<19>>().map(|l| l.0), Some(i * 100 + 19));
            assert_eq!(c.value::<usize>().copied(), Some(i / 3 * 3));
            assert_eq!(c.value::<u8>(), None);
        }
        let (cancel_only, _h) = ctx.child();
        assert_eq!(cancel_only.value::<L<3>>().map(|l| l.0), Some(3903));
    }

    #[test]
    fn the_filter_bit_is_never_a_level_bit() {
        use core::any::TypeId;
        for t in [
            TypeId::of::<u8>(),
            TypeId::of::<u64>(),
            TypeId::of::<L<1>>(),
            TypeId::of::<L<2>>(),
            TypeId::of::<alloc::string::String>(),
        ] {
            let b = super::type_bit(t);
            assert_eq!(b.count_ones(), 1);
            assert_eq!(b & super::LEVEL_MASK, 0);
        }
    }
}
