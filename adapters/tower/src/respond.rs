//! The answers the server layer gives itself, without the handler: deadline passed (504 /
//! gRPC `DEADLINE_EXCEEDED`), server shutting down (503 / `UNAVAILABLE`), malformed
//! timeout header in strict mode (400 / `INTERNAL`).

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use kontext::Error;

/// Why the layer answers on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The request's deadline passed (or was already past on arrival).
    DeadlineExceeded,
    /// The base context was cancelled: the server is shutting down.
    Unavailable,
    /// A timeout header did not follow its grammar (strict mode).
    MalformedTimeout,
}

impl Answer {
    /// The answer for a context that ended with `reason` before the response.
    pub(crate) fn for_reason(reason: Error) -> Answer {
        match reason {
            Error::DeadlineExceeded => Answer::DeadlineExceeded,
            _ => Answer::Unavailable,
        }
    }

    fn http_status(self) -> StatusCode {
        match self {
            Answer::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Answer::MalformedTimeout => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code and message.
    pub(crate) fn grpc(self) -> (&'static str, &'static str) {
        match self {
            Answer::DeadlineExceeded => ("4", "request deadline exceeded"),
            Answer::Unavailable => ("14", "server shutting down"),
            Answer::MalformedTimeout => ("13", "malformed grpc-timeout"),
        }
    }

    /// The response head with an empty body `body`. gRPC answers are trailers-only
    /// (status 200, `grpc-status` in the headers), as gRPC's PROTOCOL-HTTP2 allows.
    pub(crate) fn respond<B>(self, grpc: bool, body: B) -> Response<B> {
        let mut res = Response::new(body);
        if grpc {
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            grpc_status(h, self);
        } else {
            *res.status_mut() = self.http_status();
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        res
    }
}

/// Writes `grpc-status` and `grpc-message` for `answer` into `map`.
pub(crate) fn grpc_status(map: &mut HeaderMap, answer: Answer) {
    let (code, message) = answer.grpc();
    map.insert("grpc-status", HeaderValue::from_static(code));
    map.insert("grpc-message", HeaderValue::from_static(message));
}

/// Whether a request or response head says gRPC (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
