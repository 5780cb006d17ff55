//! Leak diagnostics (feature `diagnostics`): where every live context was created, which
//! tasks are bound to it, whether it is done and since when; a dump of the live tree, leak
//! suspects, a goleak-style check, and a check that a cancel reached a whole subtree.
//!
//! With the feature, every constructor ([`Context::child`](crate::Context::child), the
//! deadline and timeout constructors, [`with_value`](crate::Context::with_value),
//! [`detached`](crate::Context::detached), [`detached_under`](crate::Context::detached_under),
//! [`with_clock`](crate::Context::with_clock), the [`node`](crate::node) types' `attach`)
//! and every context-bound spawn (`rt::spawn`, the adapters' `spawn`, `Group::spawn`)
//! records its caller's file and line (`#[track_caller]`) in a side table keyed by the
//! node's address. The nodes themselves are the same as without the feature (same layout,
//! same size); without it none of this is compiled.
//!
//! ```
//! use kontext::{diagnostics, Context};
//!
//! let (request, _cancel) = Context::background().child();
//! let (step, _) = request.child(); // the `_` drops the handle: `step` is cancelled here
//! let here = diagnostics::creation_site(&step).unwrap();
//! assert_eq!(here.line(), line!() - 2);
//! // "Who cancelled this?": the handle created on that line, dropped at once.
//! assert_eq!(diagnostics::dropped_handle_site(&step), Some(here));
//!
//! let dump = diagnostics::snapshot().subtree(&request).to_string();
//! assert!(dump.contains("by dropping its CancelHandle"), "{dump}");
//! ```
//!
//! # What is recorded, and when
//! - A context is in the table from its construction until its node is freed (the last
//!   handle, clone, child or task holding it is gone) or, for a [`node`](crate::node)
//!   type, until its storage is dropped. `ClockRoot`s are not recorded (they are never
//!   dropped).
//! - It is *done* from the moment the tree makes its state final: a cancel, its parent's
//!   cancel reaching it, or a deadline fired by a timer or noticed by an observer. A
//!   deadline that has passed while nobody looked (no timer, no check) is still reported
//!   live, as the tree itself only settles it when someone looks.
//! - A bound task is recorded on its own context (every bound task gets a fresh child of
//!   the context it was spawned under) from the spawn until its future is dropped.
//! - Ages are measured on the real clock (`std::time::Instant`), whatever clock the tree
//!   measures deadlines on.
//!
//! # Cost
//! The table is a hash map in 16 shards behind mutexes: each construction, each node made
//! final and each free takes one shard lock, plus one `Instant::now()` per construction
//! and per cancelled node. It is meant for tests, debugging builds and staging, not for
//! hot production paths. Measured on the development machine (release, one thread, a
//! long-lived parent): a child's create + cancel + drop goes from 865 to 1,356
//! instructions (callgrind; a deadline child 1,197 to 1,691, a value node's create + drop
//! 319 to 693), about 100 to 120 ns more (best of five runs of a million, on a loaded
//! 2-core machine: 185 to 300 ns). The criterion rows of `benches/` run with it through
//! `cargo bench -p kontext-benches --features kontext/diagnostics`.

extern crate std;

mod check;
mod snapshot;

use core::hash::{BuildHasherDefault, Hasher};
use core::panic::Location;
use core::ptr::NonNull;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::context::Ctx;
use crate::tree::{self, CancelNode, Header, Link, NodeFacts};

pub use check::{assert_propagated, assert_propagated_async, baseline, unpropagated, Baseline};
pub use snapshot::{snapshot, ContextId, ContextInfo, ContextKind, Snapshot, TaskId, TaskInfo};

/// Where `ctx` was created (the caller of the constructor, or of the spawn for a task's
/// own context). `None` for the background context, a `ClockRoot`, or a context whose
/// node is not recorded.
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let root = Context::background();
/// let values = root.with_value(7u8);
/// let site = diagnostics::creation_site(&values).unwrap();
/// assert_eq!((site.file(), site.line()), (file!(), line!() - 2));
/// assert_eq!(diagnostics::creation_site(&root), None);
/// ```
pub fn creation_site(ctx: &Ctx) -> Option<&'static Location<'static>> {
    let addr = ctx.node?.as_ptr().addr();
    lock(shard(addr)).get(&addr).map(|r| r.site)
}

/// Where the [`CancelHandle`](crate::CancelHandle) was created whose drop cancelled `ctx`
/// (directly, or an ancestor whose cancel reached it): the answer to "who cancelled
/// this?" when the cause is [`HandleDropped`](crate::HandleDropped). `None` while `ctx`
/// is live, or when it was done another way (an explicit `cancel`, a deadline).
///
/// A handle is created with its context, so this is the site of the context whose
/// handle was dropped; the usual mistake it shows is `let (ctx, _) = parent.child();`.
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let (request, handle) = Context::background().child();
/// let worker = request.with_value("worker");
/// drop(handle);
/// let site = diagnostics::dropped_handle_site(&worker).unwrap();
/// assert_eq!(site.line(), line!() - 4);
///
/// let (other, cancel) = Context::background().child();
/// cancel.cancel(); // explicit: not a dropped handle
/// assert_eq!(diagnostics::dropped_handle_site(&other), None);
/// ```
pub fn dropped_handle_site(ctx: &Ctx) -> Option<&'static Location<'static>> {
    let n = ctx.header()?.dropped_by()?;
    let addr = n.as_ptr().addr();
    lock(shard(addr)).get(&addr).map(|r| r.site)
}

// ---------------------------------------------------------------------------------------
// The side table

/// What the table keeps of one context node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    id: u64,
    facts: NodeFacts,
    site: &'static Location<'static>,
    created: Instant,
    value_type: Option<&'static str>,
    done: Option<DoneRecord>,
    task: Option<TaskRecord>,
}

#[derive(Clone, Copy, Debug)]
struct DoneRecord {
    at: Instant,
    /// Its own armed handle was dropped (not an inherited cancel).
    by_drop: bool,
}

#[derive(Clone, Copy, Debug)]
struct TaskRecord {
    id: u64,
    site: &'static Location<'static>,
    spawned: Instant,
}

/// Node addresses, hashed by one multiplication folded down (heap addresses share their
/// low bits: the alignment).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map = HashMap<usize, Record, BuildHasherDefault<AddrHasher>>;

const SHARDS: usize = 16;

static TABLE: [Mutex<Map>; SHARDS] =
    [const { Mutex::new(HashMap::with_hasher(BuildHasherDefault::new())) }; SHARDS];

/// Ids of contexts and tasks, in creation order (a [`Baseline`] is one of them).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    // Relaxed: ids only need to be unique and increasing per thread; nothing is published.
    NEXT_ID.fetch_add(1, Relaxed)
}

fn shard(addr: usize) -> &'static Mutex<Map> {
    let h = (addr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    &TABLE[(h >> 60) as usize % SHARDS]
}

/// Locks a shard. A panic never leaves a shard half-updated (each update is one map
/// operation), so a poisoned lock is used as it is.
fn lock(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every record, copied out shard by shard under all the shards' locks at once (taken in
/// order; no hook ever holds two), so the copy is one consistent instant of the table.
fn records() -> std::vec::Vec<(usize, Record)> {
    let guards: std::vec::Vec<_> = TABLE.iter().map(lock).collect();
    let mut all = std::vec::Vec::with_capacity(guards.iter().map(|g| g.len()).sum());
    for g in &guards {
        all.extend(g.iter().map(|(a, r)| (*a, *r)));
    }
    all
}

// ---------------------------------------------------------------------------------------
// Hooks, called by the tree and by `rt`. None of them runs user code or holds a shard lock
// while taking anything else.

/// A node was built at `site` (before it is published, so every later hook finds it).
///
/// # Safety
/// As `tree::node_facts`: `node` is being built by the caller, or its facts are fixed.
pub(crate) unsafe fn created(
    node: NonNull<Header>,
    site: &'static Location<'static>,
    value_type: Option<&'static str>,
) {
    // SAFETY: the caller's guarantee.
    let facts = unsafe { tree::node_facts(node) };
    let created = Instant::now();
    let record = Record {
        id: next_id(),
        facts,
        site,
        created,
        value_type,
        done: facts.born_done.then_some(DoneRecord {
            at: created,
            by_drop: false,
        }),
        task: None,
    };
    let addr = node.as_ptr().addr();
    lock(shard(addr)).insert(addr, record);
}

/// The tree made `node`'s state final (the winner of its state's CAS, right after it).
pub(crate) fn done(node: &CancelNode) {
    let addr = core::ptr::from_ref(node).addr();
    let by_drop = node.is_dropped();
    if let Some(r) = lock(shard(addr)).get_mut(&addr) {
        r.done.get_or_insert(DoneRecord {
            at: Instant::now(),
            by_drop,
        });
    }
}

/// A node is being freed (heap) or its storage detached (user): its record goes. Called
/// before the memory can be reused, so a later node at the same address is a new record.
pub(crate) fn freed(node: NonNull<Link>) {
    let addr = node.as_ptr().addr();
    lock(shard(addr)).remove(&addr);
}

#[cfg(feature = "rt")]
/// A bound task, spawned at `site`, runs under `ctx` (its own fresh context).
pub(crate) fn task_spawned(ctx: &Ctx, site: &'static Location<'static>) -> usize {
    let Some(addr) = ctx.node.map(|n| n.as_ptr().addr()) else {
        return 0;
    };
    if let Some(r) = lock(shard(addr)).get_mut(&addr) {
        r.task = Some(TaskRecord {
            id: next_id(),
            site,
            spawned: Instant::now(),
        });
    }
    addr
}

#[cfg(feature = "rt")]
/// The task recorded on the context at `addr` has ended (its future is dropped). The
/// caller still holds that context, so the address is still its node's.
pub(crate) fn task_ended(addr: usize) {
    if addr == 0 {
        return;
    }
    if let Some(r) = lock(shard(addr)).get_mut(&addr) {
        r.task = None;
    }
}
