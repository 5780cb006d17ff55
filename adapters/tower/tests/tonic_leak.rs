//! 10,000 tonic calls under one long-lived context leave nothing behind: each call's
//! cancellation binding (`TonicRequestExt::with_context`) is released by `PropagateLayer`
//! when the call ends. Counted with a counting global allocator (this binary has one test).

mod common;

#[path = "common/grpc.rs"]
mod grpc;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use grpc::*;
use kontext_tokio::TokioTimer;
use kontext_tower::{ContextLayer, PropagateLayer, TonicRequestExt};
use tower::ServiceBuilder;

/// Live heap allocations of the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter does not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, Ordering::Relaxed); // a statistic: nothing is published
                                              // SAFETY: forwarded (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded (see the impl); a reallocation keeps the count.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_under_one_context_leave_no_allocations_behind() {
    let svc = echo(|req| async move { Ok(tonic::Response::new(req.into_inner())) });
    let layer = ContextLayer::new(kontext_tokio::background(), TokioTimer);
    let addr = serve_grpc(layer, svc).await;
    let client = ServiceBuilder::new()
        .layer(PropagateLayer::new(TokioTimer))
        .service(channel(addr).await);
    // One long-lived context (a service root), with a deadline far away.
    let (root, _keep) = kontext_tokio::background().with_timeout(Duration::from_secs(3600));
    // 1,000 calls, 4 at a time.
    let calls = || {
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let client = client.clone();
                let root = root.clone();
                tokio::spawn(async move {
                    for i in 0..250 {
                        let req = msg(&format!("call {t}.{i}")).with_context(&root);
                        call(client.clone(), req).await.unwrap();
                    }
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // Warm up (connection, buffers, pools), then measure.
    bounded("1,000 warm-up calls", calls()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..10 {
        bounded("1,000 calls", calls()).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = LIVE.load(Ordering::Relaxed);
    // A registration left behind per call would be 10,000 allocations or more.
    assert!(
        after - before < 100,
        "{} allocations left behind by 10,000 calls",
        after - before
    );
    eprintln!("live allocations: before {before}, after {after}");
}
