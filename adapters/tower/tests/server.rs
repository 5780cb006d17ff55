//! The server layer over real hyper connections on loopback: how a request's context ends.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use kontext::Context;
use kontext_tokio::TokioTimer;
use kontext_tower::{context, ContextLayer, DeadlineSource, RequestDeadline, RequestEnd};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceBuilder;

/// A layer over a fresh base context on tokio's clock.
fn layer() -> ContextLayer<TokioTimer> {
    ContextLayer::new(kontext_tokio::background(), TokioTimer)
}

/// A handler that reports its context, then never answers.
fn hanging(
    seen: mpsc::UnboundedSender<Context>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<kontext_tower::ContextBody<Empty<Bytes>, TokioTimer>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                seen.send(context(&req).unwrap().clone()).unwrap();
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Empty::new()))
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_dropping_its_request_ends_the_context_with_client_gone() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = serve(hanging(tx)).await;
    let mut client = h2_client(addr).await;
    let call = tokio::spawn(async move { client.send_request(get("/")).await });
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    assert!(!ctx.is_cancelled());
    call.abort(); // drops the request future: hyper's h2 client resets the stream
    bounded("the context to end", ctx.cancelled()).await;
    assert_eq!(request_end(&ctx), Some(RequestEnd::ClientGone));
    assert_eq!(ctx.err(), Some(kontext::Error::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_socket_closed_mid_handler_ends_the_context_with_client_gone() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = serve(hanging(tx)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    drop(stream);
    bounded("the context to end", ctx.cancelled()).await;
    assert_eq!(request_end(&ctx), Some(RequestEnd::ClientGone));
}

/// The documented limitation: hyper does not watch an HTTP/1 socket while the request
/// body is unread, so a client that goes away then is noticed only once the handler
/// reads the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_post_with_unread_body_is_not_noticed_until_the_body_is_read() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Context, oneshot::Sender<()>)>();
    let read_result = Arc::new(std::sync::Mutex::new(None));
    let result = read_result.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            let result = result.clone();
            async move {
                let (go, wait) = oneshot::channel();
                tx.send((context(&req).unwrap().clone(), go)).unwrap();
                let _ = wait.await;
                let read = req.into_body().collect().await;
                *result.lock().unwrap() = Some(read.is_ok());
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let addr = serve(svc).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nab")
        .await
        .unwrap();
    let (ctx, go) = bounded("the handler", rx.recv()).await.unwrap();
    drop(stream);
    // Not noticed: the context outlives the connection while the body is unread.
    let noticed = tokio::time::timeout(Duration::from_millis(300), ctx.cancelled()).await;
    assert!(
        noticed.is_err(),
        "hyper noticed the close of an HTTP/1 connection with an unread body"
    );
    assert!(!ctx.is_cancelled());
    go.send(()).unwrap();
    bounded("the context to end once the body is read", ctx.cancelled()).await;
    assert_eq!(
        *read_result.lock().unwrap(),
        Some(false),
        "the truncated body read fails"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_dropped_after_three_chunks_ends_the_context_during_the_body() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Context, bool)>();
    let produced = Arc::new(AtomicUsize::new(0));
    let count = produced.clone();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            let count = count.clone();
            async move {
                let ctx = context(&req).unwrap().clone();
                let (chunks, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                tokio::spawn(async move {
                    for i in 0..100 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if chunks
                            .send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))))
                            .await
                            .is_err()
                        {
                            return; // the body was dropped
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
                // The handler returns with its context still live.
                tx.send((ctx.clone(), ctx.is_cancelled())).unwrap();
                let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                Ok::<_, Infallible>(Response::new(body))
            }
        });
    let addr = serve(svc).await;
    let mut client = h2_client(addr).await;
    let res = bounded("the response head", client.send_request(get("/stream")))
        .await
        .unwrap();
    let (ctx, done_at_return) = bounded("the handler", rx.recv()).await.unwrap();
    assert!(!done_at_return, "context done when the handler returned");
    let mut body = res.into_body();
    for _ in 0..3 {
        let frame = bounded("a chunk", body.frame()).await.unwrap().unwrap();
        assert!(frame.is_data());
        assert!(!ctx.is_cancelled(), "context ended before the body did");
    }
    drop(body); // the client resets the stream mid-body
    bounded("the context to end", ctx.cancelled()).await;
    assert_eq!(request_end(&ctx), Some(RequestEnd::ClientGone));
    let sent = produced.load(Ordering::SeqCst);
    assert!((3..100).contains(&sent), "{sent} chunks were produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_get_ends_the_context_with_complete() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                tx.send(context(&req).unwrap().clone()).unwrap();
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"hello"),
                )))
            }
        });
    let addr = serve(svc).await;
    for mut client in [None, Some(h1_client(addr).await)] {
        let body = match client.as_mut() {
            Some(h1) => bounded("h1 response", h1.send_request(get("/")))
                .await
                .unwrap()
                .collect(),
            None => {
                let mut h2 = h2_client(addr).await;
                bounded("h2 response", h2.send_request(get("/")))
                    .await
                    .unwrap()
                    .collect()
            }
        };
        let body = bounded("the body", body).await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        let ctx = bounded("the handler", rx.recv()).await.unwrap();
        bounded("the context to end", ctx.cancelled()).await;
        assert_eq!(request_end(&ctx), Some(RequestEnd::Complete));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_answers_504_and_drops_the_handler_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let flag = dropped.clone();
    let svc = ServiceBuilder::new()
        .layer(
            layer()
                .default_timeout(Duration::from_millis(100))
                .enforce(true),
        )
        .service_fn(move |req: Request<Incoming>| {
            let guard = DropFlag(flag.clone());
            tx.send(context(&req).unwrap().clone()).unwrap();
            async move {
                let _guard = guard;
                std::future::pending::<()>().await; // ignores its context
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let addr = serve(svc).await;
    let mut client = h1_client(addr).await;
    let res = bounded("the 504", client.send_request(get("/")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler future was not dropped"
    );
    let ctx = rx.recv().await.unwrap();
    assert_eq!(ctx.err(), Some(kontext::Error::DeadlineExceeded));
    let cause = ctx
        .cause()
        .unwrap()
        .downcast_ref::<RequestDeadline>()
        .unwrap();
    assert_eq!(cause.source(), &DeadlineSource::Default);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_every_request_context() {
    let (base, abort) = kontext_tokio::background().child();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(base, TokioTimer).enforce(true))
        .service_fn(move |req: Request<Incoming>| {
            tx.send(context(&req).unwrap().clone()).unwrap();
            async move {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let addr = serve(svc).await;
    let mut client = h2_client(addr).await;
    let call = tokio::spawn(client.send_request(get("/")));
    let ctx = bounded("the handler", rx.recv()).await.unwrap();
    abort.cancel_with_cause(kontext_tower::ServerShutdown);
    let res = bounded("the 503", call).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ctx
        .cause()
        .unwrap()
        .downcast_ref::<kontext_tower::ServerShutdown>()
        .is_some());
    // A request arriving after the shutdown is answered without the handler.
    let res = bounded("the second 503", client.send_request(get("/")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        rx.try_recv().is_err(),
        "the handler was called after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_upgrade_hands_the_context_to_the_upgraded_connection() {
    use tokio::io::AsyncReadExt;
    let (base, shutdown) = kontext_tokio::background().child();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let svc = ServiceBuilder::new()
        .layer(ContextLayer::new(base, TokioTimer))
        .service_fn(move |mut req: Request<Incoming>| {
            let ctx = context(&req).unwrap().clone();
            let upgrade = hyper::upgrade::on(&mut req);
            let tx = tx.clone();
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                // The upgraded connection's task owns the request's context now.
                tx.send(ctx.clone()).unwrap();
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 16];
                let _ = ctx.run_until_cancelled(io.read(&mut buf)).await;
            });
            async {
                let res = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        });
    let addr = serve(svc).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        bounded("the 101", stream.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let ctx = bounded("the upgraded connection", rx.recv()).await.unwrap();
    // The 101's empty body has ended; the context lives on with the connection.
    let ended = tokio::time::timeout(Duration::from_millis(200), ctx.cancelled()).await;
    assert!(
        ended.is_err(),
        "the context ended with the 101 response: {:?}",
        ctx.cause()
    );
    shutdown.cancel_with_cause(kontext_tower::ServerShutdown);
    bounded("the context to end at shutdown", ctx.cancelled()).await;
    assert!(ctx.cause().unwrap().is::<kontext_tower::ServerShutdown>());
}
