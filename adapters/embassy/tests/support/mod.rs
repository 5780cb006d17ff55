//! What the embassy test files share: the mock clock's advance, a waker that counts its
//! wakes, and polling a future by hand. (Each test file uses part of it.)
#![allow(dead_code)]

use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Wake;

use embassy_time::MockDriver;

/// Moves the mock driver's (process-global) clock forward.
pub(crate) fn advance(d: Duration) {
    MockDriver::get().advance(embassy_time::Duration::from_micros(d.as_micros() as u64));
}

/// A waker that counts how often it was woken.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

pub(crate) fn counting_waker() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

pub(crate) fn poll<F: Future + ?Sized>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(w))
}
