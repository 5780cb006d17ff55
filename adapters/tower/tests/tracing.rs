//! With feature `tracing`: one event per request when its context ends, in the request's
//! span (tower-http's TraceLayer outside the layer), saying how it ended.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use kontext_tokio::TokioTimer;
use kontext_tower::{context, ContextLayer};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::trace::TraceLayer;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// An event of target `kontext_tower`: its fields and the name of its span.
#[derive(Debug, Default, Clone)]
struct Seen {
    outcome: String,
    cause: String,
    span: Option<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "outcome" {
            self.outcome = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "outcome" => self.outcome = format!("{value:?}").trim_matches('"').to_owned(),
            "cause" => self.cause = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        if event.metadata().target() != "kontext_tower" {
            return;
        }
        let mut seen = Seen {
            span: ctx.event_span(event).map(|s| s.name().to_owned()),
            ..Seen::default()
        };
        event.record(&mut seen);
        self.0.lock().unwrap().push(seen);
    }
}

async fn one_request(layer: ContextLayer<TokioTimer>, hang: bool, read_body: bool) {
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(layer)
        .service_fn(move |req: Request<Full<Bytes>>| {
            let ctx = context(&req).unwrap().clone();
            async move {
                // The request's span is a value of its context, for tasks it spawns.
                assert!(ctx.value::<tracing::Span>().is_some());
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
    let res = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    if read_body {
        res.into_body().collect().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn one_event_per_request_in_its_span_says_how_it_ended() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let layer = || ContextLayer::new(kontext_tokio::background(), TokioTimer);

    one_request(layer(), false, true).await;
    one_request(layer(), false, false).await; // response dropped unread: the client went away
    let deadline = layer()
        .default_timeout(Duration::from_millis(50))
        .enforce(true);
    one_request(deadline, true, true).await;

    let seen = capture.0.lock().unwrap().clone();
    let outcomes: Vec<_> = seen.iter().map(|s| s.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["complete", "client_gone", "deadline"],
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.span.as_deref() == Some("request")),
        "{seen:?}"
    );
    assert!(
        seen[2].cause.contains("the server's default of 50ms"),
        "{seen:?}"
    );
}
