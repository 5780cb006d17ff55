//! An HTTP-style request pipeline on tokio: a request goes through middleware
//! layers that each derive a child context (request id, auth, a per-layer timeout); the
//! handler spawns sub-tasks; the client disconnects; everything below the request is
//! cancelled with that cause, and no task outlives the request.
//!
//! Run it: `cargo run --example http_pipeline` (tokio time is paused, so the trace is
//! deterministic and instant). With `--features diagnostics`, a fourth part leaks a
//! request's context on purpose and prints the diagnostics dump that finds it by the file
//! and line that created it.

use std::time::Duration;

use kontext_tokio::{CancelHandle, Context, ContextExt, Error, TaskTracker};

#[derive(Debug)]
struct RequestId(u32);
#[derive(Debug)]
struct User(&'static str);
/// Version negotiation through context values: each layer reads what the one above set.
#[derive(Debug)]
struct ApiVersion(u8);

#[derive(Debug)]
struct ClientDisconnected;
impl std::fmt::Display for ClientDisconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client disconnected")
    }
}
impl std::error::Error for ClientDisconnected {}

fn log(ctx: &Context, msg: impl std::fmt::Display) {
    let id = ctx.value::<RequestId>().map_or(0, |r| r.0);
    let user = ctx.value::<User>().map_or("-", |u| u.0);
    let t = tokio::time::Instant::now();
    println!("[{:>4} ms] req={id} user={user} {msg}", ms(t));
}

fn ms(t: tokio::time::Instant) -> u128 {
    use std::sync::OnceLock;
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    t.duration_since(*START.get_or_init(|| t)).as_millis()
}

/// Layer 1: request id (enriched: values added, cancel kept).
fn with_request_id(ctx: &Context, id: u32) -> Context {
    ctx.with_value(RequestId(id))
}

/// Layer 2: auth, negotiated API version.
fn with_auth(ctx: &Context) -> Context {
    ctx.with_value(User("alice")).with_value(ApiVersion(2))
}

/// Layer 3: this layer's own budget. The inner deadline never outlives the outer one.
fn with_layer_timeout(ctx: &Context, budget: Duration) -> (Context, CancelHandle) {
    ctx.with_timeout(budget)
}

/// Logs, on the cancelling thread, that `who` was stopped and why (Go's `AfterFunc`).
fn report_cancel(ctx: &Context, who: &'static str) -> kontext_tokio::OnCancel {
    let me = ctx.clone();
    ctx.on_cancel(move || {
        let why = me.cause().map_or(String::new(), |c| c.to_string());
        log(
            &me,
            format!("  {who}: saw cancel ({why}); its future is dropped"),
        );
    })
}

async fn handler(ctx: Context, tracker: TaskTracker) {
    let _seen = report_cancel(&ctx, "handler");
    let v = ctx.value::<ApiVersion>().map_or(1, |v| v.0);
    log(
        &ctx,
        format!(
            "handler: api v{v}, deadline in {:?}",
            ctx.remaining().unwrap_or(Duration::MAX)
        ),
    );
    let mut jobs = Vec::new();
    for (name, work_ms) in [("db query", 80u64), ("cache fill", 400), ("search", 2_000)] {
        jobs.push(ctx.spawn(move |ctx| async move {
            log(&ctx, format!("  {name}: started ({work_ms} ms of work)"));
            let seen = report_cancel(&ctx, name);
            match ctx.sleep(Duration::from_millis(work_ms)).await {
                Ok(()) => log(&ctx, format!("  {name}: done")),
                Err(e) => unreachable!("the task is dropped before it sees {e}"),
            }
            seen.stop(); // finished: its context's release at task end is no news
            name.to_string()
        }));
    }
    for job in jobs {
        match job.await {
            Ok(name) => log(&ctx, format!("handler: {name} finished")),
            Err(e) => log(
                &ctx,
                format!("handler: a job was stopped: {e} (reason {:?})", e.reason()),
            ),
        }
    }
    log(
        &ctx,
        format!("handler: {} task(s) still tracked", tracker.len()),
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let server = kontext_tokio::background();
    let (server, tracker) = TaskTracker::attach(&server);

    println!("== 1. the client disconnects at 150 ms ==");
    {
        let (req, disconnect) = server.child();
        let req = with_auth(&with_request_id(&req, 1));
        let (req, _layer) = with_layer_timeout(&req, Duration::from_secs(1));
        let t = tracker.clone();
        let h = req.spawn(move |ctx| handler(ctx, t));
        tokio::time::sleep(Duration::from_millis(150)).await;
        log(&req, "server: client went away");
        disconnect.cancel_with_cause(ClientDisconnected);
        let err = h.await.unwrap_err();
        log(&req, format!("server: handler stopped: {err}"));
        assert_eq!(req.err(), Some(Error::Cancelled));
    }
    kontext_tokio::drain(&tracker, None).await.unwrap();
    println!("tasks alive after request 1: {}", tracker.len());

    println!("\n== 2. the layer timeout (300 ms) fires ==");
    {
        let (req, _disconnect) = server.child();
        let req = with_auth(&with_request_id(&req, 2));
        let (req, _layer) = with_layer_timeout(&req, Duration::from_millis(300));
        // An inner layer asks for 5 s: it inherits the outer 300 ms.
        let (inner, _h) = req.with_timeout(Duration::from_secs(5));
        log(
            &inner,
            format!(
                "inner layer deadline in {:?}",
                inner.remaining().unwrap_or(Duration::MAX)
            ),
        );
        let t = tracker.clone();
        let h = inner.spawn(move |ctx| handler(ctx, t));
        let err = h.await.unwrap_err();
        log(&inner, format!("server: handler stopped: {err}"));
        assert_eq!(err.reason(), Some(Error::DeadlineExceeded));
    }
    kontext_tokio::drain(&tracker, None).await.unwrap();
    println!("tasks alive after request 2: {}", tracker.len());

    println!("\n== 3. an audit log that must outlive the request (detached) ==");
    {
        let (req, disconnect) = server.child();
        let req = with_request_id(&req, 3);
        let audit = req.detached().spawn(|ctx| async move {
            ctx.sleep(Duration::from_millis(50)).await.ok();
            log(
                &ctx,
                "audit: written (kept the request id, ignored the cancel)",
            );
        });
        disconnect.cancel_with_cause(ClientDisconnected);
        audit.await.unwrap();
    }
    kontext_tokio::drain(&tracker, None).await.unwrap();
    println!("tasks alive at the end: {}", tracker.len());

    #[cfg(feature = "diagnostics")]
    leak_report(&server);
}

/// Part 4 (feature `diagnostics`): a request whose context outlives it, because a cache
/// keeps a clone, and a step whose `CancelHandle` was dropped at once. The dump names the
/// leaked contexts by the line that created them; the step says who cancelled it.
#[cfg(feature = "diagnostics")]
fn leak_report(server: &Context) {
    use kontext::diagnostics;

    println!("\n== 4. a leaked context, found by where it was created (diagnostics) ==");
    let before = diagnostics::baseline();
    let mut cache: Vec<Context> = Vec::new(); // lives longer than any request: the bug
    {
        let (req, finished) = server.child();
        let req = with_request_id(&req, 4);
        cache.push(req.clone()); // deliberate leak: the request's context, kept
        let (step, _) = req.child(); // deliberate mistake: `_` drops the handle at once
        let who = diagnostics::dropped_handle_site(&step).expect("a dropped handle");
        log(
            &step,
            format!(
                "step: born {:?}: its handle (made at {who}) was dropped",
                step.err()
            ),
        );
        finished.cancel(); // the request is over
    }
    let leaked = before.leaked();
    println!("still alive after the request ended (done, but held):\n{leaked}");
    for c in leaked.leak_suspects(Duration::ZERO).contexts() {
        println!(
            "leak suspect: {} {} created at {}",
            c.id(),
            c.kind(),
            c.site()
        );
    }
    cache.clear();
    println!(
        "after clearing the cache: {} context(s) of the request left",
        before.leaked().len()
    );
}
