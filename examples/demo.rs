//! A request's life in kontext: middleware derives children (request id, auth, a timeout),
//! the handler fans out to workers, the client disconnects, and every worker sees why.
//!
//! Run it: `cargo run --example demo`

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use kontext::{Context, Error, ManualClock};

/// Request-scoped values are keyed by their type: no string keys to collide.
#[derive(Debug)]
struct RequestId(&'static str);
#[derive(Debug)]
struct User(&'static str);

/// The cause a server attaches when the client goes away.
#[derive(Debug)]
struct ClientDisconnected;
impl std::fmt::Display for ClientDisconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client disconnected")
    }
}
impl std::error::Error for ClientDisconnected {}

fn log(ctx: &Context, msg: &str) {
    // The trace id rides in the context into every log line.
    let id = ctx.value::<RequestId>().map_or("-", |r| r.0);
    println!("[req {id}] {msg}");
}

fn main() {
    // A manual clock makes the timeout part of this demo deterministic; a server would use
    // the runtime adapter's clock (or `StdClock`, the default with `std`).
    static CLOCK: ManualClock = ManualClock::new();
    let server = Context::with_clock(&CLOCK);

    println!("== 1. a request that the client abandons ==");
    let (conn, disconnect) = server.child(); // the connection: cancelled when the client goes
    let req = conn.with_value(RequestId("7f3a")); // middleware 1: request id
    let req = req.with_value(User("ada")); // middleware 2: auth
    let (req, _timeout) = req.with_timeout(Duration::from_secs(30)); // middleware 3: timeout
    log(
        &req,
        &format!(
            "handler runs for user {:?}, {:?} left before its deadline",
            req.value::<User>().unwrap().0,
            req.remaining().unwrap()
        ),
    );

    let _audit = req.on_cancel(|| println!("[on_cancel] request ended: release its resources"));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(Barrier::new(4));
    let workers: Vec<_> = ["db query", "cache fill", "upstream call"]
        .into_iter()
        .map(|name| {
            let (ctx, cancel_on_drop) = req.child(); // each worker gets its own child
            let finished = finished.clone();
            let started = started.clone();
            thread::spawn(move || {
                let _guard = cancel_on_drop; // lives as long as the worker
                log(
                    &ctx,
                    &format!("{name}: started, waiting for work or cancel"),
                );
                started.wait();
                futures_executor::block_on(ctx.cancelled());
                let why = format!(
                    "{name}: stopped: {} (cause: {})",
                    ctx.err().unwrap(),
                    ctx.cause().unwrap()
                );
                log(&ctx, &why);
                finished.lock().unwrap().push(name);
            })
        })
        .collect();

    // An audit write must outlive the request: detached keeps values, not cancellation.
    let audit = req.detached();

    started.wait(); // every worker is running
    println!("-- the client disconnects --");
    disconnect.cancel_with_cause(ClientDisconnected);
    for w in workers {
        w.join().unwrap();
    }
    println!(
        "workers that saw the cancel: {:?}",
        finished.lock().unwrap()
    );
    log(
        &audit,
        &format!(
            "audit context still live: {} (values kept: user {:?})",
            !audit.is_cancelled(),
            audit.value::<User>().map(|u| u.0)
        ),
    );
    assert!(!server.is_cancelled(), "cancel never flows up");
    println!("server context still live: {}", !server.is_cancelled());

    println!("\n== 2. a request that runs out of time ==");
    let (req, _cancel) = server
        .with_value(RequestId("9b21"))
        .with_timeout(Duration::from_secs(2));
    let (inner, _c) = req.with_timeout(Duration::from_secs(10)); // an inner timeout cannot extend
    log(
        &inner,
        &format!(
            "inner deadline is the outer one: {:?} left, not 10s",
            inner.remaining().unwrap()
        ),
    );
    CLOCK.advance(Duration::from_secs(1));
    log(&inner, &format!("after 1s: err = {:?}", inner.err()));
    CLOCK.advance(Duration::from_secs(1));
    log(
        &inner,
        &format!(
            "after 2s: err = {:?} (no timer was armed: seen at this check)",
            inner.err()
        ),
    );
    assert_eq!(inner.err(), Some(Error::DeadlineExceeded));

    println!("\n== 3. forgetting to cancel cannot leak ==");
    {
        let (_ctx, _guard) = server.child();
        // `_guard` goes out of scope here and cancels; Go's `defer cancel()` built in.
    }
    println!("a child whose CancelHandle was dropped is cancelled and unregistered");

    println!("\n== 4. ...so keep the handle while the work runs ==");
    let (ctx, _) = server.child(); // `_` drops the handle at the end of this statement
    println!(
        "let (ctx, _) = server.child();       -> already cancelled: {}",
        ctx.is_cancelled()
    );
    let (ctx, _cancel) = server.child(); // `_cancel` lives to the end of the scope
    println!(
        "let (ctx, _cancel) = server.child(); -> already cancelled: {}",
        ctx.is_cancelled()
    );
    println!("\ndone.");
}
