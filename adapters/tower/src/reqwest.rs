//! reqwest calls bounded by a context: one source of truth for the deadline.

use core::future::Future;
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;
use std::fmt;

use http::HeaderName;
use kontext::{Context, Error as Reason};

use crate::client::{ContextDone, Error};

/// Bounds a reqwest request by a [`Context`] (feature `reqwest`).
pub trait RequestBuilderExt {
    /// The request under `ctx`: its timeout becomes the context's remaining time, and
    /// [`send`](ContextRequest::send) races it against the context.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use kontext_tower::{client::Error, RequestBuilderExt};
    ///
    /// # async fn f() {
    /// let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    /// let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(100));
    /// match http.get("http://127.0.0.1:8080/slow").context(&ctx).send().await {
    ///     Ok(res) => println!("{}", res.status()),
    ///     Err(Error::Done(done)) => println!("gave up: {done}"), // the context's reason and cause
    ///     Err(e) => println!("failed: {e}"),
    /// }
    /// # }
    /// ```
    fn context(self, ctx: &Context) -> ContextRequest;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn context(self, ctx: &Context) -> ContextRequest {
        ContextRequest {
            builder: self,
            ctx: ctx.clone(),
            cap: None,
            ms_header: None,
        }
    }
}

/// A reqwest request bounded by a context, from [`RequestBuilderExt::context`].
pub struct ContextRequest {
    builder: reqwest::RequestBuilder,
    ctx: Context,
    cap: Option<Duration>,
    ms_header: Option<HeaderName>,
}

impl fmt::Debug for ContextRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextRequest")
            .field("builder", &self.builder)
            .field("context", &self.ctx)
            .field("cap", &self.cap)
            .finish()
    }
}

impl ContextRequest {
    /// The longest this request may take even if the context allows more. reqwest's
    /// per-request timeout *replaces* the client-wide one (`ClientBuilder::timeout`), so
    /// pass the client's timeout here to keep it.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Also sends the remaining time, in whole milliseconds rounded up, in `header`
    /// (e.g. `connect-timeout-ms`), so the server can bound its work too.
    pub fn timeout_ms_header(mut self, header: HeaderName) -> Self {
        self.ms_header = Some(header);
        self
    }

    /// Sends the request: fails at once ([`Error::Done`]) if the context is done;
    /// otherwise races the call against the context (context first, so a cancelled
    /// context drops the call and closes its connection or stream). A reqwest timeout at
    /// or after the context's deadline is reported as the context's `DeadlineExceeded`
    /// with its cause, not as a reqwest error.
    ///
    /// The timeout covers the response body too (reqwest's rule); a body read that fails
    /// because of it maps the same way with [`Error::from_reqwest`].
    pub async fn send(self) -> Result<reqwest::Response, Error<reqwest::Error>> {
        let ContextRequest {
            mut builder,
            ctx,
            cap,
            ms_header,
        } = self;
        if let Some(reason) = ctx.err() {
            return Err(Error::Done(ContextDone::new(reason, ctx)));
        }
        let left = ctx.remaining();
        let timeout = match (left, cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        };
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        if let (Some(name), Some(l)) = (ms_header, left) {
            let ms = l.as_nanos().div_ceil(1_000_000).min(9_999_999_999) as u64;
            builder = builder.header(name, ms);
        }
        // reqwest's timer wakes us at the deadline; the context's wait wakes us on cancel.
        let mut cancelled = pin!(ctx.cancelled());
        let mut call = pin!(builder.send());
        let res = core::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None); // the context first
            }
            call.as_mut().poll(cx).map(Some)
        })
        .await;
        match res {
            None => {
                let reason = ctx.err().unwrap_or(Reason::Cancelled);
                Err(Error::Done(ContextDone::new(reason, ctx.clone())))
            }
            Some(Ok(res)) => Ok(res),
            Some(Err(e)) => Err(Error::from_reqwest(e, &ctx)),
        }
    }
}

impl Error<reqwest::Error> {
    /// A reqwest error of a call made under `ctx`: a timeout once `ctx` is done is the
    /// context's reason ([`Error::Done`], with its cause), anything else stays reqwest's.
    ///
    /// ```
    /// # async fn f(res: reqwest::Response, ctx: kontext::Context) {
    /// use kontext_tower::client::Error;
    /// let body = res.bytes().await.map_err(|e| Error::from_reqwest(e, &ctx));
    /// # }
    /// ```
    pub fn from_reqwest(err: reqwest::Error, ctx: &Context) -> Self {
        match ctx.err() {
            Some(reason) if err.is_timeout() => Error::Done(ContextDone::new(reason, ctx.clone())),
            _ => Error::Inner(err),
        }
    }
}
