//! reqwest calls bounded by a context, against a hyper server with the server layer.

mod common;

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::client::Error;
use kontext_tower::{context, ContextLayer, RequestBuilderExt, RequestEnd};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

#[derive(Debug)]
struct Budget;
impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the job's budget")
    }
}
impl std::error::Error for Budget {}

/// A server whose `/slow` never answers and `/fast` answers at once; reports contexts.
async fn server() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Context>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
        .service_fn(move |req: Request<Incoming>| {
            c.fetch_add(1, Ordering::SeqCst);
            tx.send(context(&req).unwrap().clone()).unwrap();
            let slow = req.uri().path() == "/slow";
            let timeout = req.headers().get("connect-timeout-ms").cloned();
            async move {
                if slow {
                    std::future::pending::<()>().await;
                }
                let text = format!("{timeout:?}");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }
        });
    (serve(svc).await, rx, calls)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_deadline_wins_over_the_client_timeout_and_is_reported_as_such() {
    let (addr, mut seen, _) = server().await;
    let (ctx, _keep) =
        kontext_tokio::background().with_timeout_cause(Duration::from_millis(100), Budget);
    let sent = http()
        .get(format!("http://{addr}/slow"))
        .context(&ctx)
        .send();
    let err = bounded("the call", sent).await.unwrap_err();
    let Error::Done(done) = err else {
        panic!("{err:?}")
    };
    assert_eq!(done.reason(), kontext::Error::DeadlineExceeded);
    assert!(done.context().cause().unwrap().is::<Budget>());
    assert_eq!(
        done.to_string(),
        "context deadline exceeded: the job's budget"
    );
    let server_ctx = bounded("the server", seen.recv()).await.unwrap();
    bounded("the server context", server_ctx.cancelled()).await;
    assert_eq!(request_end(&server_ctx), Some(RequestEnd::ClientGone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_context_mid_request_makes_the_server_see_its_client_go() {
    let (addr, mut seen, _) = server().await;
    let (ctx, cancel) = kontext_tokio::background().child();
    let sent = tokio::spawn(
        http()
            .get(format!("http://{addr}/slow"))
            .context(&ctx)
            .send(),
    );
    let server_ctx = bounded("the server", seen.recv()).await.unwrap();
    cancel.cancel();
    let err = bounded("the call", sent).await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Done(ref d) if d.reason() == kontext::Error::Cancelled),
        "{err:?}"
    );
    bounded("the server context", server_ctx.cancelled()).await;
    assert_eq!(request_end(&server_ctx), Some(RequestEnd::ClientGone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_context_lets_the_call_through_and_a_done_one_sends_nothing() {
    let (addr, mut seen, calls) = server().await;
    let (ctx, cancel) = kontext_tokio::background().with_timeout(Duration::from_secs(2));
    let res = http()
        .get(format!("http://{addr}/fast"))
        .context(&ctx)
        .timeout_ms_header(http::HeaderName::from_static("connect-timeout-ms"))
        .send();
    let res = bounded("the call", res).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = bounded("the body", res.text()).await.unwrap();
    let ms: u64 = text
        .trim_start_matches("Some(\"")
        .trim_end_matches("\")")
        .parse()
        .unwrap();
    assert!(ms <= 2000, "{text}");
    bounded("the server", seen.recv()).await.unwrap();
    cancel.cancel();
    let err = http()
        .get(format!("http://{addr}/fast"))
        .context(&ctx)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Done(_)), "{err:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a request was sent for a done context"
    );
}
