//! A real upstream HTTP server on loopback that records every request it receives, so
//! tests can prove what reached it and what did not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Answers `/echo-auth` with the Authorization header it received (an upstream that
    /// leaks the credential back), `/big` with 64 KiB, and anything else with a small JSON
    /// document naming the path.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let method = req.method().to_string();
                            let target = req.uri().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| {
                                    (
                                        n.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect::<Vec<_>>();
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let api_key = req
                                .headers()
                                .get("x-api-key")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            log.lock().unwrap().push(Seen {
                                method,
                                target: target.clone(),
                                headers,
                                body,
                            });
                            let path = target.split('?').next().unwrap_or("").to_owned();
                            let res = if path.ends_with("/echo-auth") {
                                Response::builder()
                                    .header("x-echo", format!("{auth}{api_key}"))
                                    .body(Full::new(Bytes::from(format!(
                                        "{{\"you_sent\":\"{auth}\",\"key\":\"{api_key}\"}}"
                                    ))))
                            } else if path.ends_with("/big") {
                                Response::builder()
                                    .body(Full::new(Bytes::from(vec![b'x'; 64 * 1024])))
                            } else {
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(format!(
                                        "{{\"ok\":true,\"path\":\"{path}\"}}"
                                    ))))
                            };
                            Ok::<_, std::convert::Infallible>(res.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}
