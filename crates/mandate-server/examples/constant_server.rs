//! The baseline of the decision-API benchmark (`scripts/bench-authzen.sh`): a bare hyper
//! HTTP/1.1 server, keep-alive, that answers every request with a constant AuthZEN
//! decision. What Mandate adds on top of it is the decision itself.
//!
//! Usage: `cargo run --release -p mandate-server --example constant_server -- 127.0.0.1:PORT`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const ANSWER: &[u8] = br#"{"decision":true,"context":{}}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as a real server must before answering.
    let _ = req.into_body().collect().await;
    let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8282".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("constant server on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
