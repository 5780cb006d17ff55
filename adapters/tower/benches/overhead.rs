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
use criterion::{criterion_group, Criterion};
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

/// Runs `n` requests through one stack and returns the time taken.
type Stack = Box<dyn Fn(&tokio::runtime::Runtime, u64) -> Duration>;

/// The four in-process stacks, by name.
fn stacks(base: &kontext::Context) -> Vec<(&'static str, Stack)> {
    let bare = ServiceBuilder::new().service_fn(handler);
    let ctx = ServiceBuilder::new()
        .layer(ContextLayer::new(base.clone(), TokioTimer))
        .service_fn(|req: Request<Full<Bytes>>| {
            black_box(context(&req));
            handler(req)
        });
    let enforced = ServiceBuilder::new()
        .layer(
            ContextLayer::new(base.clone(), TokioTimer)
                .default_timeout(Duration::from_secs(30))
                .enforce(true),
        )
        .service_fn(handler);
    let timeout = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(30),
        ))
        .service_fn(handler);
    vec![
        ("no_layer", Box::new(move |rt, n| run(rt, bare, n))),
        (
            "context_layer",
            Box::new(move |rt, n| run(rt, ctx.clone(), n)),
        ),
        (
            "context_layer_deadline_enforced",
            Box::new(move |rt, n| run(rt, enforced.clone(), n)),
        ),
        (
            "tower_http_timeout",
            Box::new(move |rt, n| run(rt, timeout, n)),
        ),
    ]
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn overhead(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let base = kontext_tokio::background();
    let mut g = c.benchmark_group("per_request");
    for (name, stack) in stacks(&base) {
        g.bench_function(name, |b| b.iter_custom(|n| stack(&rt, n)));
    }
    g.finish();
}

/// `OVERHEAD_ROUNDS=<r>`: `r` rounds, each timing a batch of requests through every
/// in-process stack in turn, so that a shared machine's load, which drifts, weighs on
/// all stacks alike; prints each stack's time per request (median and range over the
/// rounds) and its ratio to `tower_http_timeout` (median and range of the per-round
/// ratios).
fn rounds(r: usize, n: u64) {
    let rt = current_thread();
    let _guard = rt.enter();
    let base = kontext_tokio::background();
    let stacks = stacks(&base);
    let mut ns = vec![Vec::new(); stacks.len()];
    for _ in 0..r {
        for ((_, stack), ns) in stacks.iter().zip(&mut ns) {
            stack(&rt, n / 10); // warm-up
            ns.push(stack(&rt, n).as_nanos() as f64 / n as f64);
        }
    }
    let reference = stacks
        .iter()
        .position(|(name, _)| *name == "tower_http_timeout")
        .unwrap();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!("{r} rounds of {n} requests per stack; ns per request, median [range]; ratio to tower_http_timeout, median [range]");
    for (i, (name, _)) in stacks.iter().enumerate() {
        let mut ratio: Vec<f64> = ns[i]
            .iter()
            .zip(&ns[reference])
            .map(|(a, b)| a / b)
            .collect();
        let (m, lo, hi) = median(&mut ns[i].clone());
        let (rm, rlo, rhi) = median(&mut ratio);
        println!("{name:<32} {m:6.0} [{lo:.0}-{hi:.0}]  x{rm:.2} [{rlo:.2}-{rhi:.2}]");
    }
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

/// Without these variables, criterion's benches. `OVERHEAD_ROUNDS=<r>` (and
/// `OVERHEAD_REQUESTS=<n>`, default 10,000): interleaved rounds of the in-process stacks,
/// see [`rounds`]. `OVERHEAD_STACK=<name> OVERHEAD_REQUESTS=<n>`: only `n` requests through
/// one in-process stack (`no_layer`, `context_layer`, ...), no measurement: for an
/// instruction count under `valgrind --tool=callgrind`, repeatable where wall time on a
/// shared machine is not (run it with two values of `n`; the difference divided by the
/// difference of `n` is the cost of one request).
fn main() {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let n = var("OVERHEAD_REQUESTS").unwrap_or(10_000);
    if let Some(r) = var("OVERHEAD_ROUNDS") {
        return rounds(r as usize, n);
    }
    if let Ok(name) = std::env::var("OVERHEAD_STACK") {
        let rt = current_thread();
        let _guard = rt.enter();
        let base = kontext_tokio::background();
        let stacks = stacks(&base);
        let (_, stack) = stacks
            .iter()
            .find(|(s, _)| *s == name)
            .unwrap_or_else(|| panic!("no stack named {name}"));
        stack(&rt, n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
