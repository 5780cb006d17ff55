//! [`ContextBody`]: the response body that keeps the request's context until it ends.

use core::pin::Pin;
use core::task::{self, Poll};
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use kontext::rt::Timer;
use kontext::Error;
use pin_project_lite::pin_project;

use crate::cause::RequestEnd;
use crate::end::RequestHandle;
use crate::respond::{grpc_status, Answer};
use crate::watch::Watch;
use crate::BoxError;

pin_project! {
    /// The response body of [`ContextService`](crate::ContextService). It owns the
    /// request context's handle: reaching the end of the stream ends the context with
    /// [`RequestEnd::Complete`]; being dropped before the end (the client went away, or
    /// an outer layer gave up) ends it with [`RequestEnd::ClientGone`].
    ///
    /// With [enforcement](crate::ContextLayer::enforce), a context that ends during the
    /// body ends the body too: with an error for HTTP (hyper then resets the stream or
    /// closes the connection), with trailers carrying the gRPC status for gRPC.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use kontext_tokio::TokioTimer;
    /// use kontext_tower::{context, ContextLayer, RequestEnd};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let svc = ServiceBuilder::new()
    ///     .layer(ContextLayer::new(kontext_tokio::background(), TokioTimer))
    ///     .service_fn(move |req: Request<()>| {
    ///         tx.send(context(&req).unwrap().clone()).unwrap();
    ///         async { Ok::<_, Infallible>(Response::new(Full::new(&b"hello"[..]))) }
    ///     });
    /// let res = svc.oneshot(Request::new(())).await.unwrap();
    /// let ctx = rx.recv().unwrap();
    /// assert!(!ctx.is_cancelled()); // the handler returned; the body is not sent yet
    /// res.into_body().collect().await.unwrap();
    /// assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&RequestEnd::Complete));
    /// # }
    /// ```
    pub struct ContextBody<B, T: Timer> {
        #[pin]
        inner: Option<B>,
        watch: Option<Watch<T>>,
        handle: Option<RequestHandle>,
        grpc: bool,
        ended: bool,
    }

    impl<B, T: Timer> PinnedDrop for ContextBody<B, T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(handle) = this.handle.take() {
                let how = if std::thread::panicking() {
                    RequestEnd::Panicked
                } else if *this.ended {
                    RequestEnd::Complete
                } else {
                    RequestEnd::ClientGone
                };
                handle.end(how);
            }
        }
    }
}

impl<B, T: Timer> ContextBody<B, T> {
    /// A body that does not own the context (the empty body of a `101 Switching Protocols`).
    pub(crate) fn detached(inner: B) -> Self {
        ContextBody {
            inner: Some(inner),
            watch: None,
            handle: None,
            grpc: false,
            ended: false,
        }
    }
}

impl<B: Body, T: Timer> ContextBody<B, T> {
    /// Owns `handle` until the end of `inner` (`None`: an empty body).
    pub(crate) fn new(
        inner: Option<B>,
        handle: RequestHandle,
        watch: Option<Watch<T>>,
        grpc: bool,
    ) -> Self {
        // A body with nothing to send (HEAD, 204, an empty body) is complete even if
        // nobody polls it.
        let ended = inner.as_ref().is_none_or(|b| b.is_end_stream());
        ContextBody {
            inner,
            watch,
            handle: Some(handle),
            grpc,
            ended,
        }
    }

    /// Ends the body early because the context ended (enforcement): trailers with the
    /// gRPC status, or an error for HTTP.
    fn cut(self: Pin<&mut Self>, reason: Error) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        *this.ended = true;
        this.inner.set(None);
        Poll::Ready(Some(if *this.grpc {
            let mut trailers = HeaderMap::new();
            grpc_status(&mut trailers, Answer::for_reason(reason));
            Ok(Frame::trailers(trailers))
        } else {
            Err(Box::new(reason))
        }))
    }

    fn finish(self: Pin<&mut Self>, how: RequestEnd) {
        let this = self.project();
        *this.ended = true;
        if let Some(handle) = this.handle.take() {
            handle.end(how);
        }
    }
}

impl<B, T> Body for ContextBody<B, T>
where
    B: Body,
    B::Error: Into<BoxError>,
    T: Timer,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.as_mut().project();
        if *this.ended {
            self.finish(RequestEnd::Complete);
            return Poll::Ready(None);
        }
        // Enforcement: the context first; the handler's body is dropped once it is done.
        if let Some(reason) = this.watch.as_ref().and_then(Watch::is_done) {
            return self.cut(reason);
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            self.finish(RequestEnd::Complete);
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(Poll::Pending) => match this.watch.as_mut().map(|w| w.poll_after_pending(cx)) {
                Some(Poll::Ready(reason)) => self.cut(reason),
                _ => Poll::Pending,
            },
            Ok(Poll::Ready(None)) => {
                self.finish(RequestEnd::Complete);
                Poll::Ready(None)
            }
            Ok(Poll::Ready(Some(Ok(frame)))) => {
                let at_end = this
                    .inner
                    .as_ref()
                    .as_pin_ref()
                    .is_none_or(|b| b.is_end_stream());
                if at_end {
                    self.finish(RequestEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(Poll::Ready(Some(Err(e)))) => {
                self.finish(RequestEnd::Failed);
                Poll::Ready(Some(Err(e.into())))
            }
            Err(panic) => {
                self.finish(RequestEnd::Panicked);
                resume_unwind(panic)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) if !self.ended => b.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}

impl<B: fmt::Debug, T: Timer> fmt::Debug for ContextBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody")
            .field("inner", &self.inner)
            .field("context", &self.handle.as_ref().map(RequestHandle::context))
            .field("enforced", &self.watch.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}
