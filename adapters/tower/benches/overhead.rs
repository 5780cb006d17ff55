//! Per-request overhead of the server layer on a hyper-style service (`Request` in,
//! `Response<Full<Bytes>>` out, body read to the end), in process, on a current-thread
//! tokio runtime: no layer, `ContextLayer` (a context per request, ended at the end of the
//! body), `ContextLayer` with a deadline and enforcement (one timer per request), and
//! tower-http's `TimeoutLayer` (one timer per request), in the same run; then the same
//! four stacks behind a real hyper HTTP/1 server on loopback, one keep-alive connection,
//! requests one after the other (what a request costs end to end).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kontext_tokio::TokioTimer;
use kontext_tower::{context, ContextLayer};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::timeout::TimeoutLayer;

async fn handler(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    black_box(&req);
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Runs `iters` requests through `svc` and returns the time taken.
fn run<S, B>(rt: &tokio::runtime::Runtime, svc: S, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let mut svc = svc.clone();
            let req = Request::new(Full::new(Bytes::new()));
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            let body = Box::pin(res.into_body()).collect().await.unwrap();
            black_box(body);
        }
        start.elapsed()
    })
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let base = kontext_tokio::background();
    let mut g = c.benchmark_group("per_request");

    let bare = ServiceBuilder::new().service_fn(handler);
    g.bench_function("no_layer", |b| b.iter_custom(|n| run(&rt, bare, n)));

    let ctx = ServiceBuilder::new()
        .layer(ContextLayer::new(base.clone(), TokioTimer))
        .service_fn(|req: Request<Full<Bytes>>| {
            black_box(context(&req));
            handler(req)
        });
    g.bench_function("context_layer", |b| {
        b.iter_custom(|n| run(&rt, ctx.clone(), n))
    });

    let enforced = ServiceBuilder::new()
        .layer(
            ContextLayer::new(base.clone(), TokioTimer)
                .default_timeout(Duration::from_secs(30))
                .enforce(true),
        )
        .service_fn(handler);
    g.bench_function("context_layer_deadline_enforced", |b| {
        b.iter_custom(|n| run(&rt, enforced.clone(), n))
    });

    let timeout = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        .service_fn(handler);
    g.bench_function("tower_http_timeout", |b| {
        b.iter_custom(|n| run(&rt, timeout, n))
    });
    g.finish();
}

/// What the server layer's cost is made of.
fn parts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let base = kontext_tokio::background();
    let (base, _keep) = base.child();
    let mut g = c.benchmark_group("parts");
    g.bench_function("child_then_drop", |b| {
        b.iter(|| {
            let (ctx, handle) = base.child();
            black_box(&ctx);
            drop(handle);
        })
    });
    g.bench_function("child_then_cancel_with_cause", |b| {
        b.iter(|| {
            let (ctx, handle) = base.child();
            black_box(&ctx);
            handle.cancel_with_cause(kontext_tower::RequestEnd::Complete);
        })
    });
    g.bench_function("extensions_insert_context", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.extensions_mut().insert(base.clone());
            black_box(req);
        })
    });
    g.bench_function("with_timeout_cause", |b| {
        b.iter(|| {
            let (ctx, handle) = base.with_timeout_cause(
                Duration::from_secs(30),
                kontext_tower::RequestDeadline::new(
                    kontext_tower::DeadlineSource::Default,
                    Duration::from_secs(30),
                ),
            );
            black_box(&ctx);
            drop(handle);
        })
    });
    g.bench_function("tokio_sleep_new", |b| {
        b.iter(|| black_box(tokio::time::sleep(Duration::from_secs(30))))
    });
    g.finish();
}

/// Serves `svc` with hyper's HTTP/1 server on 127.0.0.1 and returns a connected client.
async fn loopback<S, B>(svc: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn handler_in(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    black_box(&req);
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Sends `iters` GETs on `client`, one after the other, reading each body.
fn round_trips(
    rt: &tokio::runtime::Runtime,
    client: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            client.ready().await.unwrap();
            let req = Request::builder()
                .uri("/")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = client.send_request(req).await.unwrap();
            black_box(res.into_body().collect().await.unwrap());
        }
        start.elapsed()
    })
}

fn over_loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let base = rt.block_on(async { kontext_tokio::background() });
    let mut g = c.benchmark_group("loopback_http1");
    let mut bare = rt.block_on(loopback(ServiceBuilder::new().service_fn(handler_in)));
    let mut ctx = rt.block_on(loopback(
        ServiceBuilder::new()
            .layer(ContextLayer::new(base.clone(), TokioTimer))
            .service_fn(handler_in),
    ));
    let mut enforced = rt.block_on(loopback(
        ServiceBuilder::new()
            .layer(
                ContextLayer::new(base.clone(), TokioTimer)
                    .default_timeout(Duration::from_secs(30))
                    .enforce(true),
            )
            .service_fn(handler_in),
    ));
    let mut timeout = rt.block_on(loopback(
        ServiceBuilder::new()
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                Duration::from_secs(30),
            ))
            .service_fn(handler_in),
    ));
    g.bench_function("no_layer", |b| {
        b.iter_custom(|n| round_trips(&rt, &mut bare, n))
    });
    g.bench_function("context_layer", |b| {
        b.iter_custom(|n| round_trips(&rt, &mut ctx, n))
    });
    g.bench_function("context_layer_deadline_enforced", |b| {
        b.iter_custom(|n| round_trips(&rt, &mut enforced, n))
    });
    g.bench_function("tower_http_timeout", |b| {
        b.iter_custom(|n| round_trips(&rt, &mut timeout, n))
    });
    g.finish();
}

criterion_group!(benches, overhead, parts, over_loopback);
criterion_main!(benches);
