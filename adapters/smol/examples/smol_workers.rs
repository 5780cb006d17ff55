//! A smol group of workers under a deadline: workers pull jobs; the first failure cancels
//! the rest (errgroup); the group's deadline bounds the whole batch.
//!
//! Run it: `cargo run --example smol_workers`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kontext_smol::{ContextExt, Group};

#[derive(Debug)]
struct JobFailed(usize);
impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} failed", self.0)
    }
}
impl std::error::Error for JobFailed {}

fn run_batch(name: &str, deadline: Duration, fail_at: Option<usize>) {
    let start = Instant::now();
    println!("== {name}: deadline {deadline:?}, failing job {fail_at:?} ==");
    let result = smol::block_on(async {
        let (batch, _h) = kontext_smol::background().with_timeout(deadline);
        let group: Group<JobFailed> = Group::new(&batch).limit(3);
        let next = Arc::new(AtomicUsize::new(0));
        for w in 0..3 {
            let next = next.clone();
            group.spawn(move |ctx| async move {
                loop {
                    let job = next.fetch_add(1, Ordering::SeqCst);
                    if job >= 12 {
                        return Ok(());
                    }
                    // 20 ms of "work" per job, cut short by the group's context.
                    if ctx.sleep(Duration::from_millis(20)).await.is_err() {
                        return Ok(()); // (unreachable in practice: the task is dropped)
                    }
                    if Some(job) == fail_at {
                        println!("  worker {w}: job {job} failed");
                        return Err(JobFailed(job));
                    }
                    println!("  worker {w}: job {job} done");
                }
            });
        }
        let ctx = group.context().clone();
        let res = group.wait().await;
        (res, batch.err(), ctx.cause().map(|c| c.to_string()))
    });
    let (res, batch_err, cause) = result;
    let wait = match res {
        Ok(()) => "Ok (every job done)".to_string(),
        Err(e) => format!("Err({e})"),
    };
    println!(
        "  -> wait: {wait}; batch context: {batch_err:?}; group cause: {cause:?}; {} ms\n",
        start.elapsed().as_millis() / 10 * 10
    );
}

fn main() {
    run_batch("all jobs finish", Duration::from_secs(5), None);
    run_batch("a job fails", Duration::from_secs(5), Some(4));
    run_batch("the deadline hits", Duration::from_millis(50), None);
}
