//! A capturing `tracing-subscriber` layer for the behaviour tests: every event with its
//! level, target, fields and span scope (innermost first, each span with its fields),
//! installed once as the global default so events from every thread (runtime workers, the
//! deadline driver) are seen. Tests tell their events apart by a `test` field on their own
//! root span.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Field name -> value (`Display` or `Debug` text, strings unquoted).
pub type Fields = BTreeMap<String, String>;

/// A span of an event's scope.
#[derive(Debug, Clone)]
pub struct SeenSpan {
    pub name: String,
    pub fields: Fields,
}

/// One captured event.
#[derive(Debug, Clone)]
pub struct Seen {
    pub level: Level,
    pub target: String,
    pub fields: Fields,
    /// Innermost span first.
    pub scope: Vec<SeenSpan>,
}

impl Seen {
    pub fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Names of the spans around the event, innermost first.
    pub fn span_names(&self) -> Vec<&str> {
        self.scope.iter().map(|s| s.name.as_str()).collect()
    }

    /// Whether one of the spans around it has `test = name`.
    pub fn in_test(&self, name: &str) -> bool {
        self.scope
            .iter()
            .any(|s| s.fields.get("test").map(String::as_str) == Some(name))
    }
}

struct Recorder<'a>(&'a mut Fields);

impl Visit for Recorder<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Recorder(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Recorder(&mut fields));
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| SeenSpan {
                        name: span.name().to_owned(),
                        fields: span
                            .extensions()
                            .get::<Fields>()
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let seen = Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
            scope,
        };
        self.0.lock().unwrap().push(seen);
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        capture
    })
}

/// Installs the capturing subscriber (once per test binary).
pub fn install() {
    capture();
}

/// The events so far inside a span with `test = name`.
pub fn events(name: &str) -> Vec<Seen> {
    let all = capture().0.lock().unwrap();
    all.iter().filter(|e| e.in_test(name)).cloned().collect()
}

/// Waits (at most 5 s, polling from this thread: call it from the test's own thread, not
/// from a runtime worker) until `n` events of test `name` match `pred`; panics with what
/// was seen otherwise.
pub fn wait_for(name: &str, n: usize, pred: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    let start = Instant::now();
    loop {
        let seen: Vec<Seen> = events(name).into_iter().filter(|e| pred(e)).collect();
        if seen.len() >= n {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "waited 5 s for {n} events of test {name:?}; saw {:#?}",
            events(name)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The end events (`target: kontext`, `context ended`) of test `name`.
pub fn end_events(name: &str) -> Vec<Seen> {
    events(name).into_iter().filter(is_end).collect()
}

/// Whether `e` is an end event.
pub fn is_end(e: &Seen) -> bool {
    e.target == "kontext" && e.message() == "context ended"
}
