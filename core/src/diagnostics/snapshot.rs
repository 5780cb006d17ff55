//! [`Snapshot`]: the live contexts and their bound tasks at one instant, and its dump.

use alloc::vec::Vec;
use core::fmt;
use core::panic::Location;
use core::time::Duration;
use std::collections::HashMap;
use std::time::Instant;

use super::{records, Record};
use crate::context::Ctx;
use crate::tree::Kind;

/// The live contexts (and the tasks bound to them) now: every context whose node has not
/// been freed yet, done or not.
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let (request, cancel) = Context::background().child();
/// let user = request.with_value("alice");
/// cancel.cancel();
/// let now = diagnostics::snapshot();
/// let info = now.get(&user).unwrap();
/// assert!(info.is_done()); // cancelled, but still held (by `user`)
/// assert_eq!(info.value_type(), Some("&str"));
/// assert_eq!(info.parent(), Some(now.get(&request).unwrap().id()));
/// ```
pub fn snapshot() -> Snapshot {
    let taken = Instant::now();
    let mut all = records();
    all.sort_unstable_by_key(|(_, r)| r.id);
    let by_addr: HashMap<usize, &Record> = all.iter().map(|(a, r)| (*a, r)).collect();
    let contexts = all
        .iter()
        .map(|(addr, r)| {
            let parent = r.facts.parent.and_then(|p| by_addr.get(&p));
            // A value or detached node is done when its state source is (the nearest cancel
            // node above it), and only then.
            let done = match r.facts.kind {
                Kind::Cancel | Kind::Deadline => r.done,
                _ => r
                    .facts
                    .state_src
                    .and_then(|s| by_addr.get(&s))
                    .and_then(|s| s.done)
                    .map(|d| super::DoneRecord {
                        by_drop: false,
                        ..d
                    }),
            };
            ContextInfo {
                id: ContextId(r.id),
                parent: parent.map(|p| ContextId(p.id)),
                kind: match r.facts.kind {
                    Kind::Cancel => ContextKind::Child,
                    Kind::Deadline => ContextKind::Deadline,
                    Kind::Value => ContextKind::Value,
                    Kind::Clock if r.facts.parent.is_some() => ContextKind::Detached,
                    _ => ContextKind::Root,
                },
                pinned: r.facts.user,
                value_type: r.value_type,
                site: r.site,
                age: taken.saturating_duration_since(r.created),
                done_for: done.map(|d| taken.saturating_duration_since(d.at)),
                dropped_handle: done.is_some_and(|d| d.by_drop),
                task: r.task.map(|t| TaskInfo {
                    id: TaskId(t.id),
                    site: t.site,
                    age: taken.saturating_duration_since(t.spawned),
                }),
                addr: *addr,
            }
        })
        .collect();
    Snapshot { contexts }
}

/// Live contexts and their bound tasks, from [`snapshot`] (or a part of one). Its
/// `Display` is the dump: an indented tree, a line per context (kind, value type, where
/// it was created, age, live or done since when) and per task (where it was spawned, age).
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let (request, _cancel) = Context::background().child();
/// let traced = request.with_value(42u64);
/// let dump = diagnostics::snapshot().subtree(&request).to_string();
/// // kontext: 2 live contexts, 0 bound tasks
/// // #1 child at src/main.rs:3:51, 8µs old, live
/// //   #2 value u64 at src/main.rs:4:22, 5µs old, live
/// let lines: Vec<&str> = dump.lines().collect();
/// assert_eq!(lines.len(), 3);
/// assert!(lines[1].starts_with('#') && lines[1].contains(" child at "));
/// assert!(lines[2].starts_with("  #") && lines[2].contains(" value u64 at "));
/// assert!(lines[2].contains(&format!("{}:{}:", file!(), line!() - 9)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// In creation order.
    contexts: Vec<ContextInfo>,
}

/// A context's number in [`Snapshot`]s and dumps (`#12`): unique in the process, in
/// creation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId(pub(super) u64);

/// A bound task's number in [`Snapshot`]s and dumps (`task #13`), from the same sequence
/// as [`ContextId`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(super) u64);

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task #{}", self.0)
    }
}

/// Which constructor made a context.
///
/// ```
/// use kontext::diagnostics::{self, ContextKind};
/// use kontext::Context;
///
/// let root = Context::with_clock(kontext::StdClock::STATIC);
/// let audit = root.detached();
/// let now = diagnostics::snapshot();
/// assert_eq!(now.get(&root).unwrap().kind(), ContextKind::Root);
/// assert_eq!(now.get(&audit).unwrap().kind(), ContextKind::Detached);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextKind {
    /// `child()`, a bound task's own context, or a deadline constructor whose deadline
    /// was not sooner than the parent's (Go's `WithCancel`).
    Child,
    /// A deadline or timeout constructor with its own deadline.
    Deadline,
    /// `with_value` (and everything built on it: spans, trackers).
    Value,
    /// `detached()` (Go's `WithoutCancel`), or the base of `detached_under`.
    Detached,
    /// `Context::with_clock`: a root with a clock.
    Root,
}

impl fmt::Display for ContextKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContextKind::Child => "child",
            ContextKind::Deadline => "deadline",
            ContextKind::Value => "value",
            ContextKind::Detached => "detached",
            ContextKind::Root => "root",
        })
    }
}

/// One live context in a [`Snapshot`].
///
/// ```
/// use kontext::{diagnostics, Context};
///
/// let (ctx, _cancel) = Context::background().child();
/// let info = diagnostics::snapshot().get(&ctx).cloned().unwrap();
/// assert_eq!(info.site().line(), line!() - 2);
/// assert!(!info.is_done());
/// assert_eq!(info.done_for(), None);
/// assert!(info.task().is_none());
/// ```
#[derive(Clone, Debug)]
pub struct ContextInfo {
    id: ContextId,
    parent: Option<ContextId>,
    kind: ContextKind,
    pinned: bool,
    value_type: Option<&'static str>,
    site: &'static Location<'static>,
    age: Duration,
    done_for: Option<Duration>,
    dropped_handle: bool,
    task: Option<TaskInfo>,
    /// The node's address when the snapshot was taken (to find a `&Ctx` in it).
    addr: usize,
}

impl ContextInfo {
    /// The context's number.
    pub fn id(&self) -> ContextId {
        self.id
    }

    /// Its parent's number; `None` below the background context or a `ClockRoot`.
    pub fn parent(&self) -> Option<ContextId> {
        self.parent
    }

    /// Which constructor made it.
    pub fn kind(&self) -> ContextKind {
        self.kind
    }

    /// Whether it lives in memory the user provides ([`node`](crate::node)), not on the
    /// heap.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// The type name of its value (`with_value`), as `core::any::type_name` spells it.
    pub fn value_type(&self) -> Option<&'static str> {
        self.value_type
    }

    /// Where it was created: the caller of its constructor, or of the spawn for a bound
    /// task's own context.
    pub fn site(&self) -> &'static Location<'static> {
        self.site
    }

    /// How long before the snapshot it was created.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// Whether it was done when the snapshot was taken (see the [module
    /// docs](super#what-is-recorded-and-when)).
    pub fn is_done(&self) -> bool {
        self.done_for.is_some()
    }

    /// For how long it had been done when the snapshot was taken: a context done long ago
    /// and still alive is held by someone ([`Snapshot::leak_suspects`]).
    pub fn done_for(&self) -> Option<Duration> {
        self.done_for
    }

    /// Whether it was cancelled by dropping its own armed
    /// [`CancelHandle`](crate::CancelHandle) (created, as the context, at
    /// [`site`](ContextInfo::site)). Its descendants report `false`: they were cancelled
    /// by it ([`dropped_handle_site`](super::dropped_handle_site) follows them up).
    pub fn cancelled_by_drop(&self) -> bool {
        self.dropped_handle
    }

    /// The bound task running under it, if it is a task's own context and the task's
    /// future has not been dropped yet.
    pub fn task(&self) -> Option<&TaskInfo> {
        self.task.as_ref()
    }
}

/// A bound task in a [`Snapshot`]: spawned, and its future not dropped yet.
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo {
    id: TaskId,
    site: &'static Location<'static>,
    age: Duration,
}

impl TaskInfo {
    /// The task's number.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Where it was spawned.
    pub fn site(&self) -> &'static Location<'static> {
        self.site
    }

    /// How long before the snapshot it was spawned.
    pub fn age(&self) -> Duration {
        self.age
    }
}

impl Snapshot {
    /// The contexts, in creation order.
    pub fn contexts(&self) -> &[ContextInfo] {
        &self.contexts
    }

    /// How many contexts it holds.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether it holds no context.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// The bound tasks, each with its own context.
    pub fn tasks(&self) -> impl Iterator<Item = (&ContextInfo, &TaskInfo)> {
        self.contexts
            .iter()
            .filter_map(|c| c.task.as_ref().map(|t| (c, t)))
    }

    /// `ctx`'s entry (`ctx` must have been alive when the snapshot was taken).
    pub fn get(&self, ctx: &Ctx) -> Option<&ContextInfo> {
        let addr = ctx.node?.as_ptr().addr();
        self.contexts.iter().find(|c| c.addr == addr)
    }

    /// `ctx` and every context below it, detached ones included.
    ///
    /// ```
    /// use kontext::{diagnostics, Context};
    ///
    /// let (a, _cancel_a) = Context::background().child();
    /// let (b, _cancel_b) = Context::background().child();
    /// let a1 = a.with_value(1u8);
    /// let part = diagnostics::snapshot().subtree(&a);
    /// assert_eq!(part.len(), 2);
    /// assert!(part.get(&a1).is_some() && part.get(&b).is_none());
    /// ```
    pub fn subtree(&self, ctx: &Ctx) -> Snapshot {
        self.below(ctx, true)
    }

    /// `ctx` and the contexts below it, through detached ones (`through_detached`) or not
    /// (the contexts a cancel of `ctx` reaches).
    pub(super) fn below(&self, ctx: &Ctx, through_detached: bool) -> Snapshot {
        let Some(top) = self.get(ctx) else {
            return Snapshot::default();
        };
        let mut keep = std::collections::HashSet::new();
        keep.insert(top.id);
        // Creation order: a parent comes before its children.
        let contexts = self
            .contexts
            .iter()
            .filter(|c| {
                let inside = c.id == top.id
                    || c.parent.is_some_and(|p| keep.contains(&p))
                        && (through_detached || c.kind != ContextKind::Detached);
                if inside {
                    keep.insert(c.id);
                }
                inside
            })
            .cloned()
            .collect();
        Snapshot { contexts }
    }

    /// The leak suspects: contexts that had been done for at least `done_for` when the
    /// snapshot was taken and are still alive (someone keeps a clone, a child or a
    /// callback of them; a bound task still running under one ignores its context).
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext::{diagnostics, Context};
    ///
    /// let (request, cancel) = Context::background().child();
    /// let kept = request.clone(); // held past the end of the request
    /// drop(cancel);
    /// let suspects = diagnostics::snapshot().leak_suspects(Duration::ZERO);
    /// let info = suspects.get(&kept).unwrap();
    /// assert!(info.cancelled_by_drop());
    /// assert!(suspects.to_string().contains(&format!("{}:{}", file!(), line!() - 6)));
    /// ```
    pub fn leak_suspects(&self, done_for: Duration) -> Snapshot {
        self.filter(|c| c.done_for.is_some_and(|d| d >= done_for))
    }

    pub(super) fn filter(&self, mut keep: impl FnMut(&ContextInfo) -> bool) -> Snapshot {
        Snapshot {
            contexts: self.contexts.iter().filter(|c| keep(c)).cloned().collect(),
        }
    }
}

/// A duration in a dump: three significant digits or so.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_millis(1) {
            write!(f, "{}µs", d.as_micros())
        } else if d < Duration::from_secs(1) {
            write!(f, "{:.1}ms", d.as_secs_f64() * 1e3)
        } else {
            write!(f, "{:.2}s", d.as_secs_f64())
        }
    }
}

impl fmt::Display for ContextInfo {
    /// One line: `#7 child at src/server.rs:42:17, 1.20s old, done 0.80s ago`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id, self.kind)?;
        if let Some(t) = self.value_type {
            write!(f, " {t}")?;
        }
        if self.pinned {
            f.write_str(" (pinned)")?;
        }
        write!(f, " at {}, {} old, ", self.site, Short(self.age))?;
        match self.done_for {
            None => f.write_str("live")?,
            Some(d) => write!(f, "done {} ago", Short(d))?,
        }
        if self.dropped_handle {
            write!(
                f,
                ", cancelled by dropping its CancelHandle (made at {})",
                self.site
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for TaskInfo {
    /// One line: `task #8 spawned at src/server.rs:50:9, 1.10s old`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} spawned at {}, {} old, running",
            self.id,
            self.site,
            Short(self.age)
        )
    }
}

/// Indentation stops growing past this depth (a deep chain stays readable).
const MAX_INDENT: usize = 32;

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tasks = self.tasks().count();
        writeln!(
            f,
            "kontext: {} live context{}, {} bound task{}",
            self.len(),
            if self.len() == 1 { "" } else { "s" },
            tasks,
            if tasks == 1 { "" } else { "s" },
        )?;
        let index: HashMap<ContextId, usize> = self
            .contexts
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect();
        let mut children: Vec<Vec<usize>> = self.contexts.iter().map(|_| Vec::new()).collect();
        let mut tops = Vec::new();
        for (i, c) in self.contexts.iter().enumerate() {
            match c.parent.and_then(|p| index.get(&p)) {
                Some(&p) => children[p].push(i),
                None => tops.push(i),
            }
        }
        // Depth-first with an explicit stack (a long chain needs no recursion).
        let mut stack: Vec<(usize, usize)> = tops.iter().rev().map(|&i| (i, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            let c = &self.contexts[i];
            let pad = 2 * depth.min(MAX_INDENT);
            write!(f, "{:pad$}", "")?;
            if depth > MAX_INDENT {
                write!(f, "[depth {depth}] ")?;
            }
            write!(f, "{c}")?;
            match c.parent {
                Some(p) if depth == 0 => writeln!(f, ", below {p}")?,
                _ => writeln!(f)?,
            }
            if let Some(t) = &c.task {
                writeln!(f, "{:pad$}  {t}", "")?;
            }
            stack.extend(children[i].iter().rev().map(|&ch| (ch, depth + 1)));
        }
        Ok(())
    }
}
