//! A hand-written tonic service and client (no protoc): one unary method
//! `/test.Echo/Call` with a prost message.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use kontext_tokio::TokioTimer;
use kontext_tower::ContextLayer;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

/// The message both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<
    dyn Fn(tonic::Request<Msg>) -> BoxFuture<Result<tonic::Response<Msg>, Status>> + Send + Sync,
>;

type CollectHandler = Arc<
    dyn Fn(tonic::Request<tonic::Streaming<Msg>>) -> BoxFuture<Result<tonic::Response<Msg>, Status>>
        + Send
        + Sync,
>;

/// The service: calls its handler for `/test.Echo/Call` (unary) and its collector for
/// `/test.Echo/Collect` (client streaming).
#[derive(Clone)]
pub struct Echo(Handler, Option<CollectHandler>);

/// A service whose `Call` method runs `f`.
pub fn echo<F, Fut>(f: F) -> Echo
where
    F: Fn(tonic::Request<Msg>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Msg>, Status>> + Send + 'static,
{
    Echo(Arc::new(move |req| Box::pin(f(req))), None)
}

impl Echo {
    /// Adds a `Collect` method (client streaming) that runs `f`.
    pub fn collect<F, Fut>(mut self, f: F) -> Echo
    where
        F: Fn(tonic::Request<tonic::Streaming<Msg>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Msg>, Status>> + Send + 'static,
    {
        self.1 = Some(Arc::new(move |req| Box::pin(f(req))));
        self
    }
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let handler = self.0.clone();
        let collect = self.1.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<Msg, Msg>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            match (req.uri().path(), collect) {
                ("/test.Echo/Call", _) => {
                    let svc = tower::service_fn(move |r| handler(r));
                    Ok(grpc.unary(svc, req).await)
                }
                ("/test.Echo/Collect", Some(collect)) => {
                    let svc = tower::service_fn(move |r| collect(r));
                    Ok(grpc.client_streaming(svc, req).await)
                }
                (path, _) => Ok(Status::unimplemented(path.to_owned()).into_http()),
            }
        })
    }
}

/// Serves `echo` with tonic's server and `layer` on 127.0.0.1.
pub async fn serve_grpc(layer: ContextLayer<TokioTimer>, echo: Echo) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(echo)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A channel to `addr`.
pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Calls `/test.Echo/Call` through `svc` (a channel, possibly layered).
pub async fn call<T>(svc: T, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let codec = tonic_prost::ProstCodec::<Msg, Msg>::default();
    grpc.unary(req, PathAndQuery::from_static("/test.Echo/Call"), codec)
        .await
}

/// Calls `/test.Echo/Collect` (client streaming) through `svc`.
pub async fn collect<T, S>(svc: T, req: tonic::Request<S>) -> Result<tonic::Response<Msg>, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: tokio_stream::Stream<Item = Msg> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(svc);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let codec = tonic_prost::ProstCodec::<Msg, Msg>::default();
    grpc.client_streaming(req, PathAndQuery::from_static("/test.Echo/Collect"), codec)
        .await
}

/// A request carrying `text`.
pub fn msg(text: &str) -> tonic::Request<Msg> {
    tonic::Request::new(Msg {
        text: text.to_owned(),
    })
}
