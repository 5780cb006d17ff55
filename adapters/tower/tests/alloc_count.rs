//! Heap allocations per request, counted (this binary has one test and a counting global
//! allocator): what the server layer costs, beside no layer and tower-http's TimeoutLayer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kontext_tokio::TokioTimer;
use kontext_tower::ContextLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::timeout::TimeoutLayer;

thread_local! {
    /// Allocations made by this thread.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a thread-local that does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

async fn handler(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Allocations of one request through `svc` (after a warm-up request), body read.
async fn per_request<S, B>(svc: S) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    for _ in 0..2 {
        let before = COUNT.with(Cell::get);
        let res = svc
            .clone()
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        Box::pin(res.into_body()).collect().await.unwrap();
        n = COUNT.with(Cell::get) - before;
    }
    n
}

#[tokio::test(flavor = "current_thread")]
async fn allocations_per_request() {
    let base = kontext_tokio::background();
    let bare = per_request(ServiceBuilder::new().service_fn(handler)).await;
    let ctx = per_request(
        ServiceBuilder::new()
            .layer(ContextLayer::new(base.clone(), TokioTimer))
            .service_fn(handler),
    )
    .await;
    let enforced = per_request(
        ServiceBuilder::new()
            .layer(
                ContextLayer::new(base.clone(), TokioTimer)
                    .default_timeout(Duration::from_secs(30))
                    .enforce(true),
            )
            .service_fn(handler),
    )
    .await;
    let timeout = per_request(
        ServiceBuilder::new()
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                Duration::from_secs(30),
            ))
            .service_fn(handler),
    )
    .await;
    eprintln!("allocations per request: no layer {bare}, ContextLayer {ctx}, with deadline and enforcement {enforced}, TimeoutLayer {timeout}");
    if cfg!(feature = "diagnostics") {
        // kontext's leak diagnostics keep a record of every live context, in tables of
        // their own: their allocations are not the layer's, and are not checked.
        return;
    }
    // The request context (one node); its entry in the extensions (http allocates the map,
    // its table and the boxed value on the first insert); its end cause (one record holding
    // the cause). A handler that answers at once arms no wait. With a deadline, one more:
    // the deadline's cause.
    assert!(
        ctx - bare <= 5,
        "ContextLayer: {} allocations more than no layer",
        ctx - bare
    );
    assert!(
        enforced - bare <= 6,
        "enforced: {} allocations more than no layer",
        enforced - bare
    );
}
