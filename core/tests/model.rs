#![cfg_attr(not(feature = "std"), allow(unused))]
//! Model-based property test: random sequences of operations are applied both to a kontext
//! tree and to a plain single-threaded reference model, and after every step every live
//! context, cancel handle and callback is compared with the model.
//!
//! The model is a `Vec` of nodes, each knowing its parent, its kind and (for cancel and
//! deadline nodes) whether and why it is done. It encodes the documented semantics:
//! - a cancel reaches the node's whole subtree, stopping at `detached()` nodes, and the first
//!   cancel wins: every node it reaches reports its reason and its cause;
//! - a child of a done context is born done (with the parent's reason and cause);
//! - the effective deadline is the earliest of the node's own and its ancestors' (up to the
//!   nearest detached node); a deadline child whose deadline is not earlier than the
//!   inherited one is a plain cancellable child (as Go), and its cause is never used;
//! - a deadline that a callback depends on is armed in the clock's alarm queue, and fires
//!   (cancels its node with `DeadlineExceeded`) when the clock passes it, earliest first;
//! - other deadlines are observed lazily (no timer): whoever looks at a context whose effective
//!   deadline has passed (`is_cancelled`, `err`, `cause`, `CancelHandle::cancel` /
//!   `cancel_with_cause` / `is_cancelled` / drop, `on_cancel`) cancels the deadline's owner
//!   with `DeadlineExceeded` (and the deadline's own cause, if any) before anything else
//!   happens. `Instant::FAR_FUTURE` is never reached. So an explicit cancel over an expired,
//!   unobserved deadline loses; and an ancestor's cancel that reaches a deadline node whose
//!   own deadline has passed gives it (and its subtree) `DeadlineExceeded` with the
//!   deadline's cause, as if Go's timer had fired first. Which of two nested expired
//!   deadlines is observed first still decides nothing: the inner one is the earlier and
//!   wins either way. The checks run in a fixed order (oldest context first, or newest
//!   first: part of the generated input) that the model follows exactly;
//! - `on_cancel` runs its callback at once on a done context, never on a context that can
//!   never be cancelled (there the first `stop()` returns `true`), otherwise exactly once
//!   when the nearest cancel node at or above it is cancelled, unless `stop()` (which returns
//!   `true` only if it prevented the run) came first; dropping the `OnCancel` keeps it
//!   registered;
//! - values are found at the nearest value node of that type above, through detached nodes.
//!
//! After a step, every observable is compared: `is_cancelled`, `err`, `cause`, `deadline`,
//! `value::<K>()` for three key types and `clock()` of every live context,
//! `is_cancelled` of every live handle, and the run count of every callback ever
//! registered (0 or 1, as the model says) and `has_run` of every live `OnCancel`; the
//! returns of `cancel`, `cancel_with_cause` and `stop` when they are called. After a
//! `quiet` clock step (see [`Op::Advance`]) only what does not observe deadlines is compared
//! until a step that observes by itself, so that cancels, `on_cancel` and derivations also
//! meet expired deadlines nobody has looked at yet.
//!
//! Every cause and value carries the number of the step that created it, so each
//! observation names exactly which cancel, deadline or value it came from.

use core::fmt;
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use kontext::{CancelHandle, Clock, Context, Error, Instant, ManualClock, OnCancel};
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;

const FAR: u64 = Instant::FAR_FUTURE.as_nanos();

/// Cases (`PROPTEST_CASES` overrides) and the longest operation sequence: small under miri
/// (slow, and no file access, hence no failure persistence either).
const CASES: u32 = if cfg!(miri) { 8 } else { 256 };
const MAX_OPS: usize = if cfg!(miri) { 20 } else { 60 };

// ---------------------------------------------------------------------------------------
// What the tree carries

/// A cancel or deadline cause, tagged with the step that created it.
#[derive(Debug)]
struct StepCause(usize);

impl fmt::Display for StepCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cause of step {}", self.0)
    }
}

impl core::error::Error for StepCause {}

/// Three value key types; each value is the step that set it.
struct KeyA(usize);
struct KeyB(usize);
struct KeyC(usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    A,
    B,
    C,
}

const KEYS: [Key; 3] = [Key::A, Key::B, Key::C];

fn value_of(ctx: &Context, key: Key) -> Option<usize> {
    match key {
        Key::A => ctx.value::<KeyA>().map(|v| v.0),
        Key::B => ctx.value::<KeyB>().map(|v| v.0),
        Key::C => ctx.value::<KeyC>().map(|v| v.0),
    }
}

/// A cause as observed: the bare [`Error`] (no explicit cause), or a step's [`StepCause`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Bare(Error),
    Step(usize),
    /// Cancelled by dropping its armed handle (`HandleDropped`).
    Dropped,
    Foreign,
}

fn why(cause: &kontext::Cause) -> Why {
    if let Some(s) = cause.downcast_ref::<StepCause>() {
        Why::Step(s.0)
    } else if let Some(e) = cause.downcast_ref::<Error>() {
        Why::Bare(*e)
    } else if cause.is::<kontext::HandleDropped>() {
        Why::Dropped
    } else {
        Why::Foreign
    }
}

// ---------------------------------------------------------------------------------------
// Operations

/// A duration: a few nanoseconds, or `Duration::MAX` (saturates at `Instant::FAR_FUTURE`).
#[derive(Clone, Copy, Debug)]
enum Span {
    Nanos(u64),
    Max,
}

impl Span {
    fn duration(self) -> Duration {
        match self {
            Span::Nanos(n) => Duration::from_nanos(n),
            Span::Max => Duration::MAX,
        }
    }
    fn nanos(self) -> u64 {
        match self {
            Span::Nanos(n) => n,
            Span::Max => u64::MAX,
        }
    }
}

/// An instant relative to the clock's current reading.
#[derive(Clone, Copy, Debug)]
enum When {
    Ago(u64),
    In(u64),
    FarFuture,
}

impl When {
    fn at(self, now: u64) -> u64 {
        match self {
            When::Ago(n) => now.saturating_sub(n),
            When::In(n) => now.saturating_add(n).min(FAR),
            When::FarFuture => FAR,
        }
    }
}

/// A deadline: an instant relative to the clock, or to the parent's effective deadline
/// (the clock's reading if it has none), to hit the earlier / equal / later boundary.
#[derive(Clone, Copy, Debug)]
enum Due {
    Clock(When),
    NearParents(i64),
}

/// Which of the live contexts, handles or `OnCancel`s (kept in the order they were made) a
/// step acts on: the `k`-th oldest or `k`-th newest, modulo their number.
#[derive(Clone, Copy, Debug)]
enum Pick {
    Oldest(usize),
    Newest(usize),
}

/// One step. A step with nothing to act on is skipped.
/// Causes and values made at step `s` carry `s`.
#[derive(Clone, Debug)]
#[rustfmt::skip]
enum Op {
    /// `ctx.child()`.
    Child { ctx: Pick },
    /// `ctx.with_deadline(at)`, or `with_deadline_cause(at, StepCause(step))`.
    WithDeadline { ctx: Pick, at: Due, cause: bool },
    /// `ctx.with_timeout(after)`, or `with_timeout_cause(after, StepCause(step))`.
    WithTimeout { ctx: Pick, after: Span, cause: bool },
    /// `ctx.with_value(KeyA(step))` (or `KeyB`, `KeyC`).
    WithValue { ctx: Pick, key: Key },
    /// `ctx.detached()`.
    Detached { ctx: Pick },
    /// `ctx.clone()`.
    CloneContext { ctx: Pick },
    /// `drop(ctx)`.
    DropContext { ctx: Pick },
    /// `handle.context()`.
    HandleContext { handle: Pick },
    /// `handle.cancel()`.
    Cancel { handle: Pick },
    /// `handle.cancel_with_cause(StepCause(step))`.
    CancelWithCause { handle: Pick },
    /// `handle.disarm()`, keeping the context it returns.
    Disarm { handle: Pick },
    /// `drop(handle)`: cancels.
    DropHandle { handle: Pick },
    /// `clock.advance(by)`. `quiet`: the checks after this step and the following ones look
    /// only at what does not observe deadlines (`deadline()`, values, callback runs) until
    /// a step that observes by itself (a cancel, dropping a handle, `on_cancel`) or a clock
    /// step that is not quiet: those steps meet expired deadlines nobody has observed yet.
    Advance { by: Span, quiet: bool },
    /// `clock.set(to)` (ignored if earlier); `quiet` as for `Advance`.
    SetClock { to: When, quiet: bool },
    /// `ctx.on_cancel(..)`, counting its runs.
    OnCancel { ctx: Pick },
    /// `on_cancel.stop()`.
    Stop { cb: Pick },
    /// `drop(on_cancel)`: the callback stays registered.
    DropOnCancel { cb: Pick },
}

fn op() -> impl Strategy<Value = Op> {
    let ix = || {
        prop_oneof![
            (0..64usize).prop_map(Pick::Oldest),
            (0..4usize).prop_map(Pick::Newest),
        ]
    };
    let span = prop_oneof![9 => (0..=12u64).prop_map(Span::Nanos), 1 => Just(Span::Max)];
    let advance = prop_oneof![29 => (0..=12u64).prop_map(Span::Nanos), 1 => Just(Span::Max)];
    let due = prop_oneof![
        2 => (0..=6u64).prop_map(|n| Due::Clock(When::Ago(n))),
        6 => (0..=15u64).prop_map(|n| Due::Clock(When::In(n))),
        1 => Just(Due::Clock(When::FarFuture)),
        4 => (-2..=2i64).prop_map(Due::NearParents),
    ];
    let set_to = prop_oneof![
        3 => (0..=6u64).prop_map(When::Ago),
        12 => (0..=15u64).prop_map(When::In),
        1 => Just(When::FarFuture),
    ];
    let key = prop_oneof![Just(Key::A), Just(Key::B), Just(Key::C)];
    let quiet = || prop::bool::weighted(0.75);
    prop_oneof![
        4 => ix().prop_map(|ctx| Op::Child { ctx }),
        3 => (ix(), due, any::<bool>())
            .prop_map(|(ctx, at, cause)| Op::WithDeadline { ctx, at, cause }),
        3 => (ix(), span, any::<bool>())
            .prop_map(|(ctx, after, cause)| Op::WithTimeout { ctx, after, cause }),
        3 => (ix(), key).prop_map(|(ctx, key)| Op::WithValue { ctx, key }),
        1 => ix().prop_map(|ctx| Op::Detached { ctx }),
        2 => ix().prop_map(|ctx| Op::CloneContext { ctx }),
        3 => ix().prop_map(|ctx| Op::DropContext { ctx }),
        1 => ix().prop_map(|handle| Op::HandleContext { handle }),
        3 => ix().prop_map(|handle| Op::Cancel { handle }),
        2 => ix().prop_map(|handle| Op::CancelWithCause { handle }),
        2 => ix().prop_map(|handle| Op::Disarm { handle }),
        3 => ix().prop_map(|handle| Op::DropHandle { handle }),
        4 => (advance, quiet()).prop_map(|(by, quiet)| Op::Advance { by, quiet }),
        1 => (set_to, quiet()).prop_map(|(to, quiet)| Op::SetClock { to, quiet }),
        4 => ix().prop_map(|ctx| Op::OnCancel { ctx }),
        2 => ix().prop_map(|cb| Op::Stop { cb }),
        1 => ix().prop_map(|cb| Op::DropOnCancel { cb }),
    ]
}

// ---------------------------------------------------------------------------------------
// The reference model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Done {
    err: Error,
    cause: Why,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `Context::with_clock`: never cancelled, no deadline, no values.
    Root,
    /// `child()`, or a deadline child whose deadline is not earlier than the inherited one.
    Cancel,
    /// A deadline child whose deadline is earlier than the inherited one.
    Deadline {
        at: u64,
        cause: Option<usize>,
    },
    Value {
        key: Key,
        step: usize,
    },
    /// `detached()`: cuts cancellation and deadlines, keeps values.
    Detached,
}

#[derive(Debug)]
struct Node {
    parent: Option<usize>,
    kind: Kind,
    /// Cancel and deadline nodes only.
    done: Option<Done>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cb {
    /// Registered on the cancel node `owner`.
    Pending {
        owner: usize,
    },
    Ran,
    Stopped,
    /// On a context that can never be cancelled: never runs; the first `stop()` is `true`.
    Never {
        stopped: bool,
    },
}

#[derive(Debug)]
struct Model {
    now: u64,
    nodes: Vec<Node>,
    cbs: Vec<Cb>,
    /// Deadline nodes armed in the clock's alarm queue (a callback depends on them), in
    /// arming order: the clock fires them when it passes their deadline.
    armed: Vec<usize>,
}

impl Model {
    fn new() -> Self {
        Model {
            now: 0,
            nodes: vec![Node {
                parent: None,
                kind: Kind::Root,
                done: None,
            }],
            cbs: Vec::new(),
            armed: Vec::new(),
        }
    }

    /// `n`, its parent, its grandparent, ... up to the root.
    fn chain(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        core::iter::successors(Some(n), move |&x| self.nodes[x].parent)
    }

    /// The nearest cancel or deadline node at or above `n`, not crossing a detached node.
    fn state_src(&self, n: usize) -> Option<usize> {
        for x in self.chain(n) {
            match self.nodes[x].kind {
                Kind::Cancel | Kind::Deadline { .. } => return Some(x),
                Kind::Root | Kind::Detached => return None,
                Kind::Value { .. } => {}
            }
        }
        None
    }

    /// The node that owns `n`'s effective deadline: the nearest deadline node at or above it
    /// (each one's deadline is earlier than every one above it), not crossing a detached
    /// node.
    fn time_owner(&self, n: usize) -> Option<usize> {
        for x in self.chain(n) {
            match self.nodes[x].kind {
                Kind::Deadline { .. } => return Some(x),
                Kind::Root | Kind::Detached => return None,
                Kind::Cancel | Kind::Value { .. } => {}
            }
        }
        None
    }

    fn deadline(&self, n: usize) -> Option<u64> {
        self.time_owner(n).map(|t| match self.nodes[t].kind {
            Kind::Deadline { at, .. } => at,
            _ => unreachable!(),
        })
    }

    fn value(&self, n: usize, key: Key) -> Option<usize> {
        self.chain(n).find_map(|x| match self.nodes[x].kind {
            Kind::Value { key: k, step } if k == key => Some(step),
            _ => None,
        })
    }

    /// Whether cancelling `c` reaches `x`: `x` is `c` or below it without a detached node
    /// in between.
    fn reaches(&self, c: usize, x: usize) -> bool {
        for y in self.chain(x) {
            if y == c {
                return true;
            }
            if matches!(self.nodes[y].kind, Kind::Root | Kind::Detached) {
                return false;
            }
        }
        false
    }

    /// Cancels the cancel node `c` and its subtree; `false` if it was already done.
    fn cancel(&mut self, c: usize, done: Done) -> bool {
        if self.nodes[c].done.is_some() {
            return false;
        }
        let mut hit = Vec::new();
        for x in 0..self.nodes.len() {
            let cancellable = matches!(self.nodes[x].kind, Kind::Cancel | Kind::Deadline { .. });
            if cancellable && self.nodes[x].done.is_none() && self.reaches(c, x) {
                hit.push(x);
            }
        }
        for &x in &hit {
            // The nearest deadline node between `x` (included) and `c` (excluded) whose
            // deadline has passed decides; otherwise the cancel does.
            let now = self.now;
            let own =
                self.chain(x)
                    .take_while(|&y| y != c)
                    .find_map(|y| match self.nodes[y].kind {
                        Kind::Deadline { at, cause } if at < FAR && now >= at => Some(Done {
                            err: Error::DeadlineExceeded,
                            cause: cause.map_or(Why::Bare(Error::DeadlineExceeded), Why::Step),
                        }),
                        _ => None,
                    });
            self.nodes[x].done = Some(own.unwrap_or(done));
        }
        for cb in &mut self.cbs {
            if let Cb::Pending { owner } = *cb {
                if hit.contains(&owner) {
                    *cb = Cb::Ran;
                }
            }
        }
        true
    }

    /// Observes `n` (as `is_cancelled`, `err` and `cause` do): an expired deadline cancels
    /// its owner first.
    fn done(&mut self, n: usize) -> Option<Done> {
        if let Some(s) = self.state_src(n) {
            if let Some(d) = self.nodes[s].done {
                return Some(d);
            }
        }
        let t = self.time_owner(n)?;
        let Kind::Deadline { at, cause } = self.nodes[t].kind else {
            unreachable!()
        };
        if at < FAR && self.now >= at {
            let cause = cause.map_or(Why::Bare(Error::DeadlineExceeded), Why::Step);
            self.cancel(
                t,
                Done {
                    err: Error::DeadlineExceeded,
                    cause,
                },
            );
            return self.nodes[t].done;
        }
        None
    }

    /// The clock moved: fires every armed deadline now due, earliest first (ties in arming
    /// order), as the alarm queue does.
    fn fire_due(&mut self) {
        loop {
            let due = self
                .armed
                .iter()
                .enumerate()
                .filter_map(|(i, &t)| {
                    let at = self.deadline(t)?;
                    (at <= self.now).then_some((at, i, t))
                })
                .min();
            let Some((_, i, t)) = due else { return };
            self.armed.remove(i);
            let Kind::Deadline { cause, .. } = self.nodes[t].kind else {
                unreachable!()
            };
            let cause = cause.map_or(Why::Bare(Error::DeadlineExceeded), Why::Step);
            self.cancel(
                t,
                Done {
                    err: Error::DeadlineExceeded,
                    cause,
                },
            );
        }
    }

    fn push(&mut self, parent: usize, kind: Kind) -> usize {
        self.nodes.push(Node {
            parent: Some(parent),
            kind,
            done: None,
        });
        self.nodes.len() - 1
    }

    /// A cancellable child, with a deadline if `deadline` is earlier than the inherited
    /// one. Born done if its owner is done (an expired, unobserved deadline does not count,
    /// unless the child's own deadline has passed too: then the parent is looked at first).
    fn derive_cancel(&mut self, parent: usize, deadline: Option<(u64, Option<usize>)>) -> usize {
        let inherited = self.deadline(parent).unwrap_or(u64::MAX);
        let kind = match deadline {
            Some((at, cause)) if at < inherited => Kind::Deadline { at, cause },
            _ => Kind::Cancel,
        };
        // A deadline already past: done at birth, the parent looked at first (an expired
        // parent nobody has observed gives the child its error and cause).
        let passed = matches!(kind, Kind::Deadline { at, .. } if at < FAR && self.now >= at);
        if passed {
            let _ = self.done(parent);
        }
        let born = self.state_src(parent).and_then(|o| self.nodes[o].done);
        let n = self.push(parent, kind);
        self.nodes[n].done = born;
        if let (None, true, Kind::Deadline { cause, .. }) = (born, passed, kind) {
            self.nodes[n].done = Some(Done {
                err: Error::DeadlineExceeded,
                cause: cause.map_or(Why::Bare(Error::DeadlineExceeded), Why::Step),
            });
        }
        n
    }

    /// `CancelHandle::cancel` / `cancel_with_cause` / cancel-on-drop of the handle on `n`.
    fn cancel_handle(&mut self, n: usize, done: Done) -> bool {
        if self.done(n).is_some() {
            return false;
        }
        self.cancel(n, done)
    }

    fn on_cancel(&mut self, n: usize) -> usize {
        let cb = match self.state_src(n) {
            None => Cb::Never { stopped: false },
            Some(owner) => {
                if self.done(n).is_some() {
                    Cb::Ran
                } else {
                    // The callback depends on the deadline: its node is armed (once).
                    if let Some(t) = self.time_owner(n) {
                        if self.deadline(t).is_some_and(|at| at < FAR) && !self.armed.contains(&t) {
                            self.armed.push(t);
                        }
                    }
                    Cb::Pending { owner }
                }
            }
        };
        self.cbs.push(cb);
        self.cbs.len() - 1
    }

    fn stop(&mut self, id: usize) -> bool {
        match self.cbs[id] {
            Cb::Pending { .. } => {
                self.cbs[id] = Cb::Stopped;
                true
            }
            Cb::Never { stopped: false } => {
                self.cbs[id] = Cb::Never { stopped: true };
                true
            }
            _ => false,
        }
    }

    /// `n` and its ancestors, for failure messages.
    fn describe(&self, n: usize) -> String {
        let parts: Vec<String> = self
            .chain(n)
            .map(|x| {
                let node = &self.nodes[x];
                let kind = match node.kind {
                    Kind::Root => String::from("root"),
                    Kind::Cancel => String::from("cancel"),
                    Kind::Deadline { at, cause: None } => format!("deadline {at}"),
                    Kind::Deadline { at, cause: Some(s) } => {
                        format!("deadline {at} (cause of step {s})")
                    }
                    Kind::Value { key, step } => format!("value {key:?} of step {step}"),
                    Kind::Detached => String::from("detached"),
                };
                match node.done {
                    Some(d) => format!("n{x} [{kind}; done: {:?}, {:?}]", d.err, d.cause),
                    None => format!("n{x} [{kind}]"),
                }
            })
            .collect();
        format!("{} (clock at {})", parts.join(" <- "), self.now)
    }
}

// ---------------------------------------------------------------------------------------
// The system under test, next to the model

struct Real {
    clock: &'static ManualClock,
    /// Live contexts, with their model node.
    ctxs: Vec<(Context, usize)>,
    /// Live cancel handles, with their model node.
    handles: Vec<(CancelHandle, usize)>,
    /// Live `OnCancel`s, with their model callback id.
    cbs: Vec<(OnCancel, usize)>,
    /// Run counters of every callback ever registered, by model callback id.
    runs: Vec<Arc<AtomicUsize>>,
    /// Under miri only: `OnCancel`s dropped by `DropOnCancel` while pending, kept to be
    /// stopped at the end (see `leak_free_teardown`).
    pending_dropped: Vec<OnCancel>,
}

impl Real {
    /// Under miri, stops every callback still pending before the case's handles go.
    ///
    /// A registration "keeps the context alive until f runs or `OnCancel::stop` is called"
    /// (`Context::on_cancel`). So a callback left pending on a context that nobody can
    /// cancel any more never runs and is never freed: the entry and the node hold each
    /// other. That happens when no cancel handle is left on the node or on any cancel node
    /// above it up to the root or a `detached()` node (all disarmed), also when the node's
    /// deadline has passed but no context is left to observe it. Go's garbage collector
    /// frees such a cycle; miri reports it as a leak, e.g. for
    /// `let (kid, h) = Context::background().child(); let kid = h.disarm();
    /// drop(kid.on_cancel(|| {})); drop(kid);` (the node, its table and the entry).
    fn leak_free_teardown(&self) {
        // BUG: documented behaviour, but a permanent leak (see above). Excluded under miri
        // only, so that miri checks everything else; natively the cycles are just leaked.
        if cfg!(miri) {
            for oc in self
                .cbs
                .iter()
                .map(|(oc, _)| oc)
                .chain(&self.pending_dropped)
            {
                oc.stop();
            }
        }
    }
}

fn pick(len: usize, at: Pick) -> Option<usize> {
    match at {
        _ if len == 0 => None,
        Pick::Oldest(k) => Some(k % len),
        Pick::Newest(k) => Some(len - 1 - k % len),
    }
}

/// A new clock for every case: trees and deadlines of one case never see another's time.
/// It must be `'static`; keeping it reachable from a static tells miri it is not a leak.
fn fresh_clock() -> &'static ManualClock {
    static CLOCKS: std::sync::Mutex<Vec<&'static ManualClock>> = std::sync::Mutex::new(Vec::new());
    let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new()));
    CLOCKS.lock().unwrap().push(clock);
    clock
}

/// Applies step `step` to both (`trace`: the steps so far); returns what it did, for the
/// trace.
fn apply(
    step: usize,
    op: &Op,
    real: &mut Real,
    model: &mut Model,
    trace: &[String],
) -> Result<String, TestCaseError> {
    let ctx_at = |real: &Real, at: Pick| pick(real.ctxs.len(), at);
    Ok(match *op {
        Op::Child { ctx } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let p = real.ctxs[i].1;
            let (c, h) = real.ctxs[i].0.child();
            let n = model.derive_cancel(p, None);
            real.ctxs.push((c, n));
            real.handles.push((h, n));
            format!("n{n} = n{p}.child()")
        }
        Op::WithDeadline { ctx, at, cause } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let p = real.ctxs[i].1;
            let at = match at {
                Due::Clock(when) => when.at(model.now),
                Due::NearParents(d) => {
                    let base = model.deadline(p).unwrap_or(model.now);
                    base.saturating_add_signed(d).min(FAR)
                }
            };
            let parent = &real.ctxs[i].0;
            let (c, h) = if cause {
                parent.with_deadline_cause(Instant::from_nanos(at), StepCause(step))
            } else {
                parent.with_deadline(Instant::from_nanos(at))
            };
            let n = model.derive_cancel(p, Some((at, cause.then_some(step))));
            real.ctxs.push((c, n));
            real.handles.push((h, n));
            format!(
                "n{n} = n{p}.with_deadline{}({at}) at {}: {:?}",
                if cause { "_cause" } else { "" },
                model.now,
                model.nodes[n].kind
            )
        }
        Op::WithTimeout { ctx, after, cause } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let p = real.ctxs[i].1;
            let at = model.now.saturating_add(after.nanos()).min(FAR);
            let parent = &real.ctxs[i].0;
            let (c, h) = if cause {
                parent.with_timeout_cause(after.duration(), StepCause(step))
            } else {
                parent.with_timeout(after.duration())
            };
            let n = model.derive_cancel(p, Some((at, cause.then_some(step))));
            real.ctxs.push((c, n));
            real.handles.push((h, n));
            format!(
                "n{n} = n{p}.with_timeout{}({after:?}) at {}: {:?}",
                if cause { "_cause" } else { "" },
                model.now,
                model.nodes[n].kind
            )
        }
        Op::WithValue { ctx, key } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let p = real.ctxs[i].1;
            let parent = &real.ctxs[i].0;
            let c = match key {
                Key::A => parent.with_value(KeyA(step)),
                Key::B => parent.with_value(KeyB(step)),
                Key::C => parent.with_value(KeyC(step)),
            };
            let n = model.push(p, Kind::Value { key, step });
            real.ctxs.push((c, n));
            format!("n{n} = n{p}.with_value({key:?})")
        }
        Op::Detached { ctx } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let p = real.ctxs[i].1;
            let c = real.ctxs[i].0.detached();
            let n = model.push(p, Kind::Detached);
            real.ctxs.push((c, n));
            format!("n{n} = n{p}.detached()")
        }
        Op::CloneContext { ctx } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let (c, n) = (real.ctxs[i].0.clone(), real.ctxs[i].1);
            real.ctxs.push((c, n));
            format!("cloned a context on n{n}")
        }
        Op::DropContext { ctx } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let (c, n) = real.ctxs.remove(i);
            drop(c);
            format!("dropped a context on n{n}")
        }
        Op::HandleContext { handle } => {
            let Some(i) = pick(real.handles.len(), handle) else {
                return Ok(String::from("skipped: no handle"));
            };
            let (c, n) = (real.handles[i].0.context(), real.handles[i].1);
            real.ctxs.push((c, n));
            format!("a context on n{n} from its handle")
        }
        Op::Cancel { handle } | Op::CancelWithCause { handle } => {
            let Some(i) = pick(real.handles.len(), handle) else {
                return Ok(String::from("skipped: no handle"));
            };
            let n = real.handles[i].1;
            let (got, want) = if let Op::Cancel { .. } = op {
                let want = model.cancel_handle(
                    n,
                    Done {
                        err: Error::Cancelled,
                        cause: Why::Bare(Error::Cancelled),
                    },
                );
                (real.handles[i].0.cancel(), want)
            } else {
                let want = model.cancel_handle(
                    n,
                    Done {
                        err: Error::Cancelled,
                        cause: Why::Step(step),
                    },
                );
                (real.handles[i].0.cancel_with_cause(StepCause(step)), want)
            };
            prop_assert_eq!(
                got,
                want,
                "(left: kontext, right: model) step {} {:?}: the return of cancelling n{} = \
                 {}\ntrace:\n  {}",
                step,
                op,
                n,
                model.describe(n),
                trace.join("\n  ")
            );
            format!("cancelled n{n}: {got}")
        }
        Op::Disarm { handle } => {
            let Some(i) = pick(real.handles.len(), handle) else {
                return Ok(String::from("skipped: no handle"));
            };
            let (h, n) = real.handles.remove(i);
            real.ctxs.push((h.disarm(), n));
            format!("disarmed n{n}'s handle")
        }
        Op::DropHandle { handle } => {
            let Some(i) = pick(real.handles.len(), handle) else {
                return Ok(String::from("skipped: no handle"));
            };
            let (h, n) = real.handles.remove(i);
            let did = model.cancel_handle(
                n,
                Done {
                    err: Error::Cancelled,
                    cause: Why::Dropped,
                },
            );
            drop(h);
            format!("dropped n{n}'s handle (cancelled it: {did})")
        }
        Op::Advance { by, .. } => {
            real.clock.advance(by.duration());
            model.now = model.now.saturating_add(by.nanos()).min(FAR);
            model.fire_due();
            format!("clock advanced to {}", model.now)
        }
        Op::SetClock { to, .. } => {
            let at = to.at(model.now);
            real.clock.set(Instant::from_nanos(at));
            model.now = model.now.max(at);
            model.fire_due();
            format!("clock set to {at}: now {}", model.now)
        }
        Op::OnCancel { ctx } => {
            let Some(i) = ctx_at(real, ctx) else {
                return Ok(String::from("skipped: no context"));
            };
            let n = real.ctxs[i].1;
            let runs = Arc::new(AtomicUsize::new(0));
            let r = runs.clone();
            let oc = real.ctxs[i].0.on_cancel(move || {
                r.fetch_add(1, SeqCst);
            });
            let id = model.on_cancel(n);
            assert_eq!(id, real.runs.len());
            real.runs.push(runs);
            real.cbs.push((oc, id));
            format!("cb{id} = n{n}.on_cancel(..): {:?}", model.cbs[id])
        }
        Op::Stop { cb } => {
            let Some(i) = pick(real.cbs.len(), cb) else {
                return Ok(String::from("skipped: no callback"));
            };
            let id = real.cbs[i].1;
            let before = model.cbs[id];
            let got = real.cbs[i].0.stop();
            let want = model.stop(id);
            prop_assert_eq!(
                got,
                want,
                "(left: kontext, right: model) step {} {:?}: the return of stop() on cb{} \
                 (model: {:?})\ntrace:\n  {}",
                step,
                op,
                id,
                before,
                trace.join("\n  ")
            );
            format!("cb{id}.stop(): {got}")
        }
        Op::DropOnCancel { cb } => {
            let Some(i) = pick(real.cbs.len(), cb) else {
                return Ok(String::from("skipped: no callback"));
            };
            let (oc, id) = real.cbs.remove(i);
            if cfg!(miri) && matches!(model.cbs[id], Cb::Pending { .. }) {
                // BUG: see `Real::leak_free_teardown`: kept, to be stopped at the end.
                real.pending_dropped.push(oc);
            } else {
                drop(oc);
            }
            format!("dropped cb{id}'s OnCancel (stays registered)")
        }
    })
}

/// Compares every observable with the model, contexts then handles in the given order.
/// With `observe == false`, only what does not observe deadlines.
fn check(
    at: &str,
    real: &Real,
    model: &mut Model,
    newest_first: bool,
    observe: bool,
    trace: &[String],
) -> Result<(), TestCaseError> {
    let trace = || trace.join("\n  ");
    macro_rules! agree {
        ($got:expr, $want:expr, $($what:tt)*) => {{
            let want = $want;
            prop_assert_eq!(
                $got,
                want,
                "(left: kontext, right: model) {}: {}\ntrace:\n  {}",
                at,
                format!($($what)*),
                trace()
            );
        }};
    }
    agree!(
        real.clock.now(),
        Instant::from_nanos(model.now),
        "the clock"
    );
    let clock_addr = real.clock as *const ManualClock as *const ();
    let order = |len: usize| -> Vec<usize> {
        if newest_first {
            (0..len).rev().collect()
        } else {
            (0..len).collect()
        }
    };
    for i in order(real.ctxs.len()) {
        let (ctx, n) = (&real.ctxs[i].0, real.ctxs[i].1);
        if observe {
            // The model observes too: `done` may expire a deadline, as these calls do.
            agree!(
                ctx.is_cancelled(),
                model.done(n).is_some(),
                "is_cancelled() of context #{i}, {}",
                model.describe(n)
            );
            agree!(
                ctx.err(),
                model.done(n).map(|d| d.err),
                "err() of context #{i}, {}",
                model.describe(n)
            );
            agree!(
                ctx.cause().map(why),
                model.done(n).map(|d| d.cause),
                "cause() of context #{i}, {}",
                model.describe(n)
            );
        }
        agree!(
            ctx.deadline(),
            model.deadline(n).map(Instant::from_nanos),
            "deadline() of context #{i}, {}",
            model.describe(n)
        );
        for key in KEYS {
            agree!(
                value_of(ctx, key),
                model.value(n, key),
                "value::<Key{key:?}>() of context #{i}, {}",
                model.describe(n)
            );
        }
        agree!(
            ctx.clock().map(|c| c as *const dyn Clock as *const ()),
            Some(clock_addr),
            "clock() of context #{i}, {}",
            model.describe(n)
        );
    }
    if observe {
        for i in order(real.handles.len()) {
            let (h, n) = (&real.handles[i].0, real.handles[i].1);
            agree!(
                h.is_cancelled(),
                model.done(n).is_some(),
                "is_cancelled() of handle #{i}, on {}",
                model.describe(n)
            );
        }
    }
    for (id, runs) in real.runs.iter().enumerate() {
        agree!(
            runs.load(SeqCst),
            usize::from(model.cbs[id] == Cb::Ran),
            "runs of cb{id} (model: {:?})",
            model.cbs[id]
        );
    }
    for (oc, id) in &real.cbs {
        agree!(
            oc.has_run(),
            model.cbs[*id] == Cb::Ran,
            "has_run() of cb{id} (model: {:?})",
            model.cbs[*id]
        );
    }
    Ok(())
}

fn run(newest_first: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = fresh_clock();
    let mut real = Real {
        clock,
        ctxs: vec![(Context::with_clock(clock), 0)],
        handles: Vec::new(),
        cbs: Vec::new(),
        runs: Vec::new(),
        pending_dropped: Vec::new(),
    };
    let mut model = Model::new();
    let mut trace = Vec::new();
    let mut quiet = false;
    check(
        "at the start",
        &real,
        &mut model,
        newest_first,
        true,
        &trace,
    )?;
    for (step, op) in ops.iter().enumerate() {
        let did = apply(step, op, &mut real, &mut model, &trace)?;
        trace.push(format!("step {step}: {op:?} -> {did}"));
        let at = format!("step {step} {op:?}");
        quiet = match *op {
            Op::Advance { quiet, .. } | Op::SetClock { quiet, .. } => quiet,
            // These observe (part of) the tree themselves: a quiet stretch ends here.
            Op::Cancel { .. } | Op::CancelWithCause { .. } | Op::DropHandle { .. } => false,
            Op::OnCancel { .. } => false,
            _ => quiet,
        };
        check(&at, &real, &mut model, newest_first, !quiet, &trace)?;
    }
    real.leak_free_teardown();
    Ok(())
}

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: match std::env::var_os("PROPTEST_CASES") {
            Some(_) => default.cases,
            None => CASES,
        },
        failure_persistence: None,
        // ChaCha, the default, makes generating the operations the bulk of a run under miri.
        rng_algorithm: if cfg!(miri) {
            RngAlgorithm::XorShift
        } else {
            RngAlgorithm::default()
        },
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn kontext_agrees_with_the_model(
        newest_first in any::<bool>(),
        ops in prop::collection::vec(op(), 0..=MAX_OPS),
    ) {
        run(newest_first, &ops)?;
    }
}
