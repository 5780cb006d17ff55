//! Why a request's context ended: the causes the layers cancel with, for logs and tests.

use core::fmt;
use core::time::Duration;

use http::HeaderName;

/// How a request ended, as the cause of its context ([`Context::cause`]) when the
/// server layer ([`ContextLayer`](crate::ContextLayer)) ends it.
///
/// Read it back with `ctx.cause().and_then(|c| c.downcast_ref::<RequestEnd>())`. A
/// deadline that passed first is reported as [`RequestDeadline`] (or the base context's
/// cause) instead: the first reason wins.
///
/// [`Context::cause`]: kontext::Context::cause
///
/// ```
/// use kontext_tower::RequestEnd;
///
/// assert_eq!(RequestEnd::ClientGone.to_string(), "client went away before the response ended");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestEnd {
    /// The response body reached its end (Go: "the ServeHTTP method returns"): the
    /// request is over, work started under it should stop.
    Complete,
    /// The response future or the response body was dropped before the end: the client
    /// reset the stream (HTTP/2 `RST_STREAM`) or closed the connection (HTTP/1), or an
    /// outer layer gave up on the request.
    ClientGone,
    /// The handler panicked while it was polled (the future or the body).
    Panicked,
    /// The service, or the response body, returned an error.
    Failed,
}

impl fmt::Display for RequestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestEnd::Complete => "response complete",
            RequestEnd::ClientGone => "client went away before the response ended",
            RequestEnd::Panicked => "handler panicked",
            RequestEnd::Failed => "service returned an error",
        })
    }
}

impl std::error::Error for RequestEnd {}

/// Where a request's deadline came from ([`RequestDeadline::source`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineSource {
    /// The client's `grpc-timeout` header.
    GrpcTimeout,
    /// A configured header carrying the client's timeout in milliseconds
    /// ([`ContextLayer::timeout_ms_header`](crate::ContextLayer::timeout_ms_header)).
    Header(HeaderName),
    /// The server's cap ([`ContextLayer::max_timeout`](crate::ContextLayer::max_timeout)),
    /// shorter than what the client asked for.
    ServerMax,
    /// The server's default for clients that sent no timeout
    /// ([`ContextLayer::default_timeout`](crate::ContextLayer::default_timeout)).
    Default,
}

/// The cause of a request context whose own deadline passed: which limit won and how
/// long it was. A client's deadline and a server cap are different failures (the first
/// is the client's choice, the second the server's), and the cause tells them apart.
///
/// ```
/// use std::time::Duration;
/// use kontext_tower::{DeadlineSource, RequestDeadline};
///
/// let cause = RequestDeadline::new(DeadlineSource::GrpcTimeout, Duration::from_millis(300));
/// assert_eq!(cause.to_string(), "request deadline exceeded: the client's grpc-timeout of 300ms");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestDeadline {
    source: DeadlineSource,
    timeout: Duration,
}

impl RequestDeadline {
    /// A deadline `timeout` after the request arrived, from `source`.
    pub fn new(source: DeadlineSource, timeout: Duration) -> Self {
        RequestDeadline { source, timeout }
    }

    /// Which limit set the deadline.
    pub fn source(&self) -> &DeadlineSource {
        &self.source
    }

    /// The timeout, from the request's arrival.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for RequestDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.timeout;
        match &self.source {
            DeadlineSource::GrpcTimeout => {
                write!(
                    f,
                    "request deadline exceeded: the client's grpc-timeout of {t:?}"
                )
            }
            DeadlineSource::Header(h) => {
                write!(f, "request deadline exceeded: the client's {h} of {t:?}")
            }
            DeadlineSource::ServerMax => {
                write!(
                    f,
                    "request deadline exceeded: the server's maximum of {t:?}"
                )
            }
            DeadlineSource::Default => {
                write!(
                    f,
                    "request deadline exceeded: the server's default of {t:?}"
                )
            }
        }
    }
}

impl std::error::Error for RequestDeadline {}

/// A cause for cancelling a server's base context at shutdown, so that a request's
/// context reports why it ended:
///
/// ```
/// use kontext::Context;
/// use kontext_tower::ServerShutdown;
///
/// let (base, abort) = Context::background().child();
/// // ... serve with ContextLayer::new(base.clone(), timer) ...
/// abort.cancel_with_cause(ServerShutdown);
/// assert!(base.cause().unwrap().downcast_ref::<ServerShutdown>().is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServerShutdown;

impl fmt::Display for ServerShutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server shutting down")
    }
}

impl std::error::Error for ServerShutdown {}
