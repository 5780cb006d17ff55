//! Per-request overhead of the server layer on a hyper-style service (`Request` in,
//! `Response<Full<Bytes>>` out, body read to the end), in process, on a current-thread
//! tokio runtime: no layer, `ContextLayer` (a context per request, ended at the end of the
//! body), `ContextLayer` with a deadline and enforcement (one timer per request), and
//! tower-http's `TimeoutLayer` (one timer per request), in the same run.

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

criterion_group!(benches, overhead, parts);
criterion_main!(benches);
