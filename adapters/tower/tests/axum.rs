//! The axum extractor over a real axum server on loopback.

mod common;

use std::time::Duration;

use axum::routing;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use kontext_tokio::{ContextExt, TokioTimer};
use kontext_tower::{ContextLayer, RequestContext, RequestEnd};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn serve_axum(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn get_text(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
    let mut client = h1_client(addr).await;
    let res = bounded("the response", client.send_request(get(path)))
        .await
        .unwrap();
    let status = res.status();
    let body: Bytes = bounded("the body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_gives_handlers_the_request_context() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/",
            routing::get(move |RequestContext(ctx): RequestContext| async move {
                tx.send(ctx.clone()).unwrap();
                assert!(ctx.remaining().unwrap() <= Duration::from_secs(2));
                match ctx.sleep(Duration::from_millis(1)).await {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.to_string(),
                }
            }),
        )
        .route(
            "/optional",
            routing::get(|ctx: Option<RequestContext>| async move { format!("{}", ctx.is_some()) }),
        )
        .layer(
            ContextLayer::new(kontext_tokio::background(), TokioTimer)
                .default_timeout(Duration::from_secs(2)),
        );
    let addr = serve_axum(app).await;
    let (status, body) = get_text(addr, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("ok"), "{body}");
    let ctx = rx.recv().await.unwrap();
    bounded("the context to end", ctx.cancelled()).await;
    assert_eq!(request_end(&ctx), Some(RequestEnd::Complete));
    assert_eq!(
        get_text(addr, "/optional").await,
        (StatusCode::OK, "true".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_layer_is_a_500_that_says_so_not_a_panic() {
    let app = Router::new()
        .route(
            "/",
            routing::get(|RequestContext(_ctx): RequestContext| async { "unreachable" }),
        )
        .route(
            "/optional",
            routing::get(|ctx: Option<RequestContext>| async move { format!("{}", ctx.is_some()) }),
        );
    let addr = serve_axum(app).await;
    let (status, body) = get_text(addr, "/").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("ContextLayer"), "{body}");
    assert_eq!(
        get_text(addr, "/optional").await,
        (StatusCode::OK, "false".into())
    );
    // The server is still up.
    assert_eq!(
        get_text(addr, "/").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}
