//! With feature `tracing`, behind kontext-tower's `ContextLayer` (feature `tracing`) and
//! tower-http's `TraceLayer`, on a hyper server over loopback: a task spawned under the
//! request's context logs inside the TraceLayer request span, even when it is spawned
//! from a thread that knows nothing of that span; the context's end event fires once, in
//! the same span, with the cause kontext-tower gave it.

#[path = "../../tracing/tests/capture/mod.rs"]
mod capture;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use capture::{end_events, is_end, wait_for};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kontext_tokio::kontext_tracing::TracingExt;
use kontext_tokio::{Context, ContextExt, TokioTimer};
use kontext_tower::{context, ContextLayer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(v) => v,
        Err(_) => panic!("waited 5 s for {what}"),
    }
}

/// A request context and where to say that its task has ended.
type Job = (Context, oneshot::Sender<()>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_spawned_in_a_handler_logs_inside_the_trace_layer_request_span() {
    capture::install();
    // A worker started outside any span: it spawns under contexts it is sent, so only the
    // context can carry the request span to its tasks.
    let (jobs, mut inbox) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        while let Some((ctx, done)) = inbox.recv().await {
            let task = ctx.spawn(|_| async { tracing::info!("from the worker's task") });
            let _ = task.await;
            let _ = done.send(());
        }
    });

    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request<_>| tracing::info_span!("request", test = "tower", uri = %req.uri()),
        ))
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .service_fn(move |req: Request<hyper::body::Incoming>| {
            let ctx = context(&req).expect("ContextLayer").clone();
            let jobs = jobs.clone();
            async move {
                let _end = ctx.record_end();
                let task = ctx.spawn(|_| async {
                    tokio::task::yield_now().await;
                    tracing::info!("from the handler's task");
                });
                task.await.expect("task");
                let (done, finished) = oneshot::channel();
                jobs.send((ctx.clone(), done)).expect("worker");
                finished.await.expect("worker task");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://localhost/orders/7")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = bounded("the response", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = bounded("the body", res.into_body().collect())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "ok");

    for message in ["from the handler's task", "from the worker's task"] {
        let seen = wait_for("tower", 1, |e| e.message() == message);
        assert_eq!(seen[0].span_names(), ["request"], "{seen:#?}");
        assert!(seen[0].scope[0].fields["uri"].ends_with("/orders/7"));
    }
    // The request context ended when the body did: one event, in the request span.
    let ends = wait_for("tower", 1, is_end);
    assert_eq!(ends[0].field("reason"), Some("context cancelled"));
    assert_eq!(ends[0].field("cause"), Some("response complete"));
    assert_eq!(ends[0].span_names(), ["request"]);
    std::thread::sleep(Duration::from_millis(50)); // a second end event would show now
    assert_eq!(end_events("tower").len(), 1, "{:#?}", end_events("tower"));
}
