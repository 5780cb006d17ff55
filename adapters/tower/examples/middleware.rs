//! A request's context through a real middleware chain: an axum service with request ids,
//! authentication and timeout layers, calling a downstream service; a detached audit job
//! bounded by server shutdown; a graceful drain on Ctrl-C / SIGTERM (or at the end of the
//! scripted run).
//!
//! Run: `cargo run -p kontext-tower --example middleware --features axum,reqwest`
//!
//! It starts two servers on 127.0.0.1 ("api" and its downstream "inventory"), sends three
//! requests and prints what happens to each request's context:
//! 1. a normal request: both contexts end with "response complete";
//! 2. a client that hangs up: the api's context ends with "client went away", which
//!    cancels its downstream call, so the inventory's context ends the same way;
//! 3. a client deadline (`x-timeout-ms: 300`): the api answers 504 at the deadline, and
//!    the cause names the header.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderName, StatusCode};
use kontext::Context;
use kontext_tokio::{ContextExt, TaskTracker, TokioTimer};
use kontext_tower::client::Error;
use kontext_tower::{ContextLayer, RequestBuilderExt, RequestContext, ServerShutdown};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The request id, as a context value (copied from tower-http's `RequestId`).
#[derive(Debug, Clone)]
struct Rid(String);

/// The authenticated user, as a context value.
#[derive(Debug, Clone)]
struct User(String);

/// Request ids `api-1`, `api-2`, ...
#[derive(Clone, Default)]
struct Counter(std::sync::Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        Some(RequestId::new(format!("api-{n}").parse().unwrap()))
    }
}

/// The server layer of both services: request contexts under `base`, the client's
/// `x-timeout-ms` (capped at 10 s, 2 s by default), answers 504 at the deadline, and one
/// line printed when each request's context ends.
fn context_layer(service: &'static str, base: &Context) -> ContextLayer<TokioTimer> {
    ContextLayer::new(base.clone(), TokioTimer)
        .timeout_ms_header(HeaderName::from_static("x-timeout-ms"))
        .max_timeout(Duration::from_secs(10))
        .default_timeout(Duration::from_secs(2))
        .enforce(true)
        .on_request(move |ctx, head| {
            let rid = head
                .extensions
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .or_else(|| head.headers.get("x-request-id")?.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let ctx = ctx.with_value(Rid(rid.clone()));
            let watched = ctx.clone();
            // Runs once, when the request's context ends, on the thread that ends it.
            let _ = ctx.on_cancel(move || {
                let cause = watched.cause().map(|c| c.to_string()).unwrap_or_default();
                println!("  [{service} {rid}] context ended: {cause}");
            });
            ctx
        })
}

/// Authentication: `authorization: Bearer <name>` becomes a `User` value on the request's
/// context (the "enriched" pattern: derive, then put the child back).
async fn auth(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(user) = user else {
        return (StatusCode::UNAUTHORIZED, "who are you?").into_response();
    };
    if let Some(ctx) = req.extensions().get::<Context>().cloned() {
        req.extensions_mut().insert(ctx.with_value(User(user)));
    }
    next.run(req).await
}

/// The `ms=N` of a query string.
fn millis(uri: &http::Uri) -> u64 {
    uri.query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `GET /work?ms=N` on the api: asks the inventory for N ms of work, under the request's
/// context, and writes an audit record that outlives the request (but not the server).
async fn work(
    RequestContext(ctx): RequestContext,
    axum::Extension(app): axum::Extension<App>,
    uri: http::Uri,
) -> Result<String, (StatusCode, String)> {
    let ms = millis(&uri);
    let rid = ctx.value::<Rid>().map_or("-", |r| r.0.as_str()).to_owned();
    let user = ctx.value::<User>().map_or("-", |u| u.0.as_str()).to_owned();
    println!("  [api {rid}] {user} asks for {ms} ms of work");
    // The audit record: a job that outlives the request (it records how the request
    // ended, even when the client hangs up), bound to the server's job root instead, so a
    // shutdown waits for it and cancels it after a grace period.
    let request = ctx.clone();
    // Dropping the join handle detaches the job.
    drop(app.jobs.spawn(move |job| async move {
        if job.run_until_cancelled(request.cancelled()).await.is_ok()
            && job.sleep(Duration::from_millis(20)).await.is_ok()
        {
            let how = request.cause().map(|c| c.to_string()).unwrap_or_default();
            println!("  [audit {rid}] {user}'s request: {how}");
        }
    }));
    let rid = ctx.value::<Rid>().map_or("-", |r| r.0.as_str()).to_owned();
    let url = format!("http://{}/stock?ms={ms}", app.inventory);
    let answer = app
        .http
        .get(url)
        .header("x-request-id", &rid)
        .context(&ctx)
        .timeout_ms_header(HeaderName::from_static("x-timeout-ms"))
        .send()
        .await;
    let text = match answer {
        Ok(res) => res.text().await.map_err(|e| Error::from_reqwest(e, &ctx)),
        Err(e) => Err(e),
    };
    text.map(|t| format!("inventory says: {t}"))
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
}

/// `GET /stock?ms=N` on the inventory: N ms of work that stops with its request.
async fn stock(RequestContext(ctx): RequestContext, uri: http::Uri) -> String {
    let ms = millis(&uri);
    match ctx.sleep(Duration::from_millis(ms)).await {
        Ok(()) => format!("{ms} ms of stock counted"),
        Err(reason) => format!("stopped: {reason}"),
    }
}

#[derive(Clone)]
struct App {
    inventory: SocketAddr,
    http: reqwest::Client,
    jobs: Context,
}

/// Serves `app` until `accepting` is done, then lets in-flight requests finish.
async fn start(app: Router, accepting: &Context) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = accepting.cancelled_owned();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .unwrap();
    });
    (addr, server)
}

#[tokio::main]
async fn main() {
    let root = kontext_tokio::background();
    // Two phases: stop accepting, drain, then abort what is left (ServerShutdown).
    let (accepting, stop_accepting) = root.child();
    let (base, abort) = root.child();
    let (jobs, tracker) = TaskTracker::attach(&base);

    let inventory = Router::new().route("/stock", get(stock)).layer(
        ServiceBuilder::new()
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(context_layer("inventory", &base)),
    );
    let (inventory, inventory_server) = start(inventory, &accepting).await;

    let app = App {
        inventory,
        http: reqwest::Client::new(),
        jobs,
    };
    let api = Router::new()
        .route("/work", get(work))
        .layer(middleware::from_fn(auth))
        .layer(axum::Extension(app))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(Counter::default()))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(context_layer("api", &base)),
        );
    let (api, api_server) = start(api, &accepting).await;
    println!("api on http://{api}, inventory on http://{inventory}");

    let client = reqwest::Client::new();
    let get = |ms: u64| {
        client
            .get(format!("http://{api}/work?ms={ms}"))
            .header("authorization", "Bearer alice")
    };
    let scenario = async {
        println!("\n1. a normal request");
        let res = get(20).send().await.unwrap();
        println!(
            "  client got {}: {}",
            res.status(),
            res.text().await.unwrap()
        );

        println!("\n2. a client that hangs up after 100 ms");
        let hang_up = tokio::time::timeout(Duration::from_millis(100), get(5_000).send()).await;
        println!("  client gave up: {}", hang_up.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;

        println!("\n3. a client deadline of 300 ms (x-timeout-ms)");
        let res = get(5_000)
            .header("x-timeout-ms", "300")
            .send()
            .await
            .unwrap();
        println!("  client got {}", res.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::select! {
        () = scenario => println!("\nscenario done: shutting down"),
        sig = kontext_tokio::shutdown::signal() => println!("\n{:?}: shutting down", sig),
    }
    stop_accepting.cancel();
    let drained = kontext_tokio::drain(&tracker, Some(Duration::from_secs(2))).await;
    println!("audit jobs drained: {}", drained.is_ok());
    abort.cancel_with_cause(ServerShutdown);
    let _ = tokio::join!(api_server, inventory_server);
    println!("servers stopped");
}
