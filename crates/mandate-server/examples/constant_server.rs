//! The baseline of the HTTP benchmarks: a bare hyper HTTP/1.1 server, keep-alive, that
//! answers every request (any method, any path) with one constant JSON body.
//!
//! - `scripts/bench-authzen.sh` (P2) uses the default body, a constant AuthZEN decision:
//!   what Mandate adds on top of it is the decision itself.
//! - `scripts/bench-gateway.sh` (P3) passes `{"ok":true}` and uses it as the upstream that
//!   is called directly, through nginx and through Mandate's gateway.
//!
//! Usage: `cargo run --release -p mandate-server --example constant_server -- 127.0.0.1:PORT [BODY]`

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark baseline: one task per connection, like any bare server"
)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const DECISION: &str = r#"{"decision":true,"context":{}}"#;

async fn answer(
    req: Request<hyper::body::Incoming>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must before answering.
    let _ = req.into_body().collect().await;
    let mut res = Response::new(Full::new(body));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8282".to_owned());
    let body = Bytes::from(args.next().unwrap_or_else(|| DECISION.to_owned()));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("constant server on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let body = body.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| answer(req, body.clone())),
                )
                .await;
        });
    }
}
