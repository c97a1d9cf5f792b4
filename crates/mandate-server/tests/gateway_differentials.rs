//! Parser differentials at the gateway: places where Mandate and the party on the other
//! side of it could read the same bytes two ways. The upstreams here are raw TCP servers
//! that write exactly the bytes a test gives them (framing, codings, chunk splits), so
//! malformed and hostile answers reach the real server as they would on the wire.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ADMIN, Harness, demo_policies};
use mandate_gateway::GatewayConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The credential injected upstream: mixed case and with reserved bytes (`/`, `+`), so a
/// percent-encoded echo has escapes and letters of both cases.
const SECRET: &str = "raw-upstream-Secret/5e6f+7a8b";

/// Text every scripted body carries, so a test can tell whether any of it was relayed.
const MARKER: &str = "upstream-body-marker";

/// What the raw upstream writes for one request: pieces, written with a pause between
/// them so they arrive as separate reads (the redactor's unit tests split at every byte;
/// here the pauses make the real stream split too).
type Script = Arc<dyn Fn(&str) -> Vec<Vec<u8>> + Send + Sync>;

/// A raw HTTP/1.1 upstream: reads a request head, records its target, writes the script's
/// pieces for it and closes the connection.
struct Raw {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let target = text.split(' ').nth(1).unwrap_or_default().to_owned();
                    log.lock().unwrap().push(text);
                    for (i, piece) in script(&target).into_iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                        if stream.write_all(&piece).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A chunked body, one chunk per piece.
fn chunk(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}

const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A complete answer with a content length.
fn answer(extra_headers: &str, body: &[u8]) -> Vec<u8> {
    [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat()
}

struct Gw {
    h: Harness,
    up: Raw,
    task: String,
    token: String,
}

async fn start(script: Script) -> Gw {
    let up = Raw::start(script).await;
    let toml = format!(
        r#"
[[upstream]]
name = "raw"
base_url = "http://{addr}/api"
allow_private = true
credential = {{ secret = "raw-token", kind = "bearer" }}

[[route]]
upstream = "raw"
method = "GET"
path = "/r/{{id}}"
tool = "tickets.search"
data_domain = "support"

[[route]]
upstream = "raw"
method = "GET"
path = "/r/{{id}}/x"
tool = "tickets.search"
data_domain = "support"
"#,
        addr = up.addr
    );
    let cfg = GatewayConfig::from_toml(&toml).unwrap();
    let h = Harness::start_configured(&demo_policies(), |c| c.gateway = Some(Arc::new(cfg))).await;
    let r = h
        .send(
            h.http
                .put(h.url("/v1/secrets/raw-token"))
                .bearer_auth(ADMIN)
                .json(&json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let identity = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&identity), json!({
            "purpose": "read tickets",
            "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"],
                       "destinations": [up.addr.to_string()] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Gw {
        task: r.body["task_id"].as_str().unwrap().to_owned(),
        token: r.body["task_token"].as_str().unwrap().to_owned(),
        h,
        up,
    }
}

/// What the agent got back: status, raw body bytes, and the body as JSON when it is.
struct Got {
    status: u16,
    bytes: Vec<u8>,
    json: Value,
}

impl Got {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl Gw {
    async fn get(&self, path: &str) -> Got {
        let res = self
            .h
            .http
            .get(self.h.url(&format!("/gw/raw{path}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        // A stream cut mid-way is an error here; what arrived before it still counts.
        let bytes = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Got {
            status,
            bytes,
            json,
        }
    }

    /// Sends a request target exactly as written (no client-side URL normalisation), as
    /// raw bytes so it may hold UTF-8 that is not percent-encoded.
    async fn raw_get(&self, target: &[u8]) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.h.server.addr)
            .await
            .unwrap();
        let req = [
            b"GET ".as_slice(),
            target,
            format!(
                " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.token
            )
            .as_bytes(),
        ]
        .concat();
        s.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// The task's `gateway.result` events, once `n` of them are committed (they are
    /// deferred to the next group commit).
    async fn results(&self, n: usize) -> Vec<Value> {
        let mut found = Vec::new();
        for _ in 0..200 {
            let r = self
                .h
                .get(&format!("/v1/tasks/{}/events", self.task), Some(ADMIN))
                .await;
            found = r
                .body
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "gateway.result")
                .cloned()
                .collect();
            if found.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts a refusal as the upstream_encoded_response error, with nothing of the body.
fn assert_refused_encoded(got: &Got, what: &str) {
    assert_eq!(
        (got.status, got.code()),
        (502, "upstream_encoded_response"),
        "{what}: {}",
        got.text()
    );
    assert!(
        !contains(&got.bytes, MARKER.as_bytes()),
        "{what}: {}",
        got.text()
    );
    assert!(!contains(&got.bytes, SECRET.as_bytes()), "{what}");
    assert!(
        !contains(&got.bytes, &[0x1f, 0x8b]),
        "{what}: gzip bytes relayed"
    );
}

// ---------------------------------------------------------------------------------------
// (a) Transfer and content codings: only plain body bytes are relayed.

/// `gzip` of `{"token":"Bearer raw-upstream-Secret/5e6f+7a8b"}` (Python's
/// `gzip.compress(…, mtime=0)`): the secret is nowhere in these bytes as text.
const GZIPPED_ECHO: [u8; 68] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0x2a, 0xc9, 0xcf, 0x4e,
    0xcd, 0x53, 0xb2, 0x52, 0x72, 0x4a, 0x4d, 0x2c, 0x4a, 0x2d, 0x52, 0x28, 0x4a, 0x2c, 0xd7, 0x2d,
    0x2d, 0x28, 0x2e, 0x29, 0x4a, 0x4d, 0xcc, 0xd5, 0x0d, 0x4e, 0x4d, 0x2e, 0x4a, 0x2d, 0xd1, 0x37,
    0x4d, 0x35, 0x4b, 0xd3, 0x36, 0x4f, 0xb4, 0x48, 0x52, 0xaa, 0x05, 0x00, 0xc8, 0xaa, 0x91, 0x4d,
    0x30, 0x00, 0x00, 0x00,
];

#[tokio::test]
async fn gzip_chunked_transfer_coding_is_refused_not_unwrapped() {
    let g = start(Arc::new(|_: &str| {
        vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
                .to_vec(),
            [chunk(&GZIPPED_ECHO), LAST_CHUNK.to_vec()].concat(),
        ]
    }))
    .await;
    let got = g.get("/r/1").await;
    assert_refused_encoded(&got, "gzip, chunked");
    assert_eq!(
        g.up.count(),
        1,
        "the call was forwarded, its answer was not"
    );
    let results = g.results(1).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["data"]["error"], "upstream_encoded_response");
    assert_eq!(results[0]["data"]["upstream_status"], Value::Null);
}

#[tokio::test]
async fn any_transfer_coding_but_a_single_chunked_is_refused() {
    let body = format!("{{\"echo\":\"{SECRET}\",\"m\":\"{MARKER}\"}}").into_bytes();
    let chunked = [chunk(&body), LAST_CHUNK.to_vec()].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("transfer-encoding: GZIP, Chunked\r\n", chunk(&GZIPPED_ECHO)),
        // Framed twice: the client removes one layer, the other would reach the agent.
        (
            "transfer-encoding: chunked, chunked\r\n",
            [chunk(&chunked), LAST_CHUNK.to_vec()].concat(),
        ),
        (
            "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
            [chunk(&GZIPPED_ECHO), LAST_CHUNK.to_vec()].concat(),
        ),
        (
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            [chunk(&chunked), LAST_CHUNK.to_vec()].concat(),
        ),
        // Not chunked at all: read to the end of the connection.
        ("transfer-encoding: identity\r\n", body.clone()),
        ("transfer-encoding: x-custom\r\n", body.clone()),
        // Two framings.
        (
            "transfer-encoding: chunked\r\ncontent-length: 7\r\n",
            chunked.clone(),
        ),
        (
            "content-length: 7\r\ntransfer-encoding: chunked\r\n",
            chunked.clone(),
        ),
    ];
    let scripted: Vec<Vec<u8>> = cases
        .iter()
        .map(|(headers, body)| {
            [
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{headers}\r\n")
                    .as_bytes(),
                body,
            ]
            .concat()
        })
        .collect();
    let plain = [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: Chunked\r\n\r\n"
            .as_slice(),
        &chunked,
    ]
    .concat();
    let g = start(Arc::new(move |target: &str| {
        let i: usize = target.rsplit('/').next().unwrap().parse().unwrap();
        vec![scripted.get(i).cloned().unwrap_or_else(|| plain.clone())]
    }))
    .await;
    for (i, (headers, _)) in cases.iter().enumerate() {
        let got = g.get(&format!("/r/{i}")).await;
        assert_refused_encoded(&got, headers);
    }
    // A single chunked coding, in any case, is relayed (and redacted).
    let got = g.get("/r/99").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json,
        json!({ "echo": "[REDACTED]", "m": MARKER }),
        "{}",
        got.text()
    );
    let results = g.results(cases.len() + 1).await;
    let refused = results
        .iter()
        .filter(|e| e["data"]["error"] == "upstream_encoded_response")
        .count();
    assert_eq!(refused, cases.len(), "{results:?}");
}

#[tokio::test]
async fn content_codings_are_refused_in_every_spelling_and_repetition() {
    let body = format!("{{\"m\":\"{MARKER}\"}}").into_bytes();
    let cases = [
        // The first header alone says identity: the second is the one a client applies.
        "content-encoding: identity\r\ncontent-encoding: gzip\r\n",
        "content-encoding: identity\r\ncontent-encoding: identity\r\n",
        "content-encoding: identity, gzip\r\n",
        "content-encoding: gzip\r\n",
        "content-encoding: GZIP\r\n",
        "content-encoding: Identity\r\n",
        "content-encoding: br\r\n",
        "content-encoding:\r\n",
    ];
    let scripted: Vec<Vec<u8>> = cases.iter().map(|h| answer(h, &body)).collect();
    let plain = answer("content-encoding: identity\r\n", &body);
    let g = start(Arc::new(move |target: &str| {
        let i: usize = target.rsplit('/').next().unwrap().parse().unwrap();
        vec![scripted.get(i).cloned().unwrap_or_else(|| plain.clone())]
    }))
    .await;
    for (i, headers) in cases.iter().enumerate() {
        let got = g.get(&format!("/r/{i}")).await;
        assert_refused_encoded(&got, headers);
    }
    let got = g.get("/r/99").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json, json!({ "m": MARKER }));
}

// ---------------------------------------------------------------------------------------
// (b) Escaped echoes of the credential: redacted however each byte is written, and
// wherever the stream splits.

/// The secret with every byte written by `pick`.
fn escape_each(pick: impl Fn(usize, u8) -> String) -> String {
    SECRET
        .bytes()
        .enumerate()
        .map(|(i, b)| pick(i, b))
        .collect()
}

/// The escaped echoes a test sends, by request path index.
fn escaped_echoes() -> Vec<(&'static str, String)> {
    vec![
        ("every byte %xx", escape_each(|_, b| format!("%{b:02x}"))),
        ("every byte %XX", escape_each(|_, b| format!("%{b:02X}"))),
        (
            "every byte %xx or %XX, mixed",
            escape_each(|i, b| {
                if i % 3 == 0 {
                    format!("%{b:02X}")
                } else {
                    format!("%{:x}{:X}", b >> 4, b & 15)
                }
            }),
        ),
        // Only `/` and `+` escaped, in lowercase hex; the letters keep their case.
        (
            "reserved bytes %xx",
            SECRET.replace('/', "%2f").replace('+', "%2b"),
        ),
        (
            "every byte \\u00xx",
            escape_each(|_, b| format!("\\u{b:04x}")),
        ),
        (
            "every byte \\u00XX",
            escape_each(|_, b| format!("\\u{b:04X}")),
        ),
        (
            "literal, %XX and \\u00Xx in turn",
            escape_each(|i, b| match i % 3 {
                0 => char::from(b).to_string(),
                1 => format!("%{b:02X}"),
                _ => format!("\\u00{:X}{:x}", b >> 4, b & 15),
            }),
        ),
    ]
}

/// An answer echoing `echo` in a JSON string, with a content length, in one write.
fn echo_answer(echo: &str) -> Vec<Vec<u8>> {
    vec![answer(
        "",
        format!("{{\"echo\":\"{echo}\",\"m\":\"{MARKER}\"}}").as_bytes(),
    )]
}

#[tokio::test]
async fn fully_escaped_echoes_of_the_credential_are_redacted() {
    let cases = escaped_echoes();
    let scripted = cases.clone();
    let g = start(Arc::new(move |target: &str| {
        let i: usize = target.rsplit('/').next().unwrap().parse().unwrap();
        echo_answer(&scripted[i].1)
    }))
    .await;
    for (i, (what, echo)) in cases.iter().enumerate() {
        let got = g.get(&format!("/r/{i}")).await;
        assert_eq!(got.status, 200, "{what}: {}", got.text());
        assert_eq!(
            got.json,
            json!({ "echo": "[REDACTED]", "m": MARKER }),
            "{what}: {}",
            got.text()
        );
        assert!(!contains(&got.bytes, echo.as_bytes()), "{what}");
    }
    let results = g.results(cases.len()).await;
    assert_eq!(results.len(), cases.len(), "{results:?}");
    for r in &results {
        assert_eq!(r["data"]["secret_redacted"], true, "{r}");
    }
}

#[tokio::test]
async fn an_escaped_echo_split_across_chunks_is_redacted() {
    let cases = escaped_echoes();
    let scripted = cases.clone();
    // Even requests: chunked, each piece its own chunk; odd: one content length, the body
    // in several writes. The pieces split the echo inside escapes (`%2` | `f`, `\\u0` | `0`).
    let g = start(Arc::new(move |target: &str| {
        let i: usize = target.rsplit('/').next().unwrap().parse().unwrap();
        let body = format!(
            "{{\"echo\":\"{}\",\"m\":\"{MARKER}\"}}",
            scripted[i / 2].1
        )
        .into_bytes();
        let cuts = [10usize, 11, 12, 17, 30, 31, 55, 80];
        let mut pieces = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().filter(|&&c| c < body.len()) {
            pieces.push(body[from..c].to_vec());
            from = c;
        }
        pieces.push(body[from..].to_vec());
        let mut writes = Vec::new();
        if i.is_multiple_of(2) {
            writes.push(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec(),
            );
            writes.extend(pieces.iter().map(|p| chunk(p)));
            writes.push(LAST_CHUNK.to_vec());
        } else {
            writes.push(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes(),
            );
            writes.extend(pieces);
        }
        writes
    }))
    .await;
    for (i, (what, _)) in cases.iter().enumerate() {
        for framing in [0, 1] {
            let got = g.get(&format!("/r/{}", i * 2 + framing)).await;
            assert_eq!(got.status, 200, "{what}: {}", got.text());
            assert_eq!(
                got.json,
                json!({ "echo": "[REDACTED]", "m": MARKER }),
                "{what} (framing {framing}): {}",
                got.text()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) Compatibility characters in paths: an upstream that normalises to NFKC would read
// another path than the one decided.

#[tokio::test]
async fn compatibility_characters_in_paths_are_refused_not_forwarded() {
    let g = start(Arc::new(|_: &str| {
        vec![answer("", format!("{{\"m\":\"{MARKER}\"}}").as_bytes())]
    }))
    .await;
    let targets: Vec<Vec<u8>> = [
        // U+FF0E FULLWIDTH FULL STOP twice: `..` after NFKC.
        "/gw/raw/r/%EF%BC%8E%EF%BC%8E/x",
        "/gw/raw/r/%ef%bc%8e%ef%bc%8e/x",
        "/gw/raw/r/%EF%BC%8E%2E/x",
        // U+2024 ONE DOT LEADER, U+2025 TWO DOT LEADER, U+FE52 SMALL FULL STOP.
        "/gw/raw/r/%E2%80%A4%E2%80%A4/x",
        "/gw/raw/r/%E2%80%A5/x",
        "/gw/raw/r/%EF%B9%92%EF%B9%92/x",
        // U+FF0F FULLWIDTH SOLIDUS, U+FF3C FULLWIDTH REVERSE SOLIDUS: separators.
        "/gw/raw/r/..%EF%BC%8Fx",
        "/gw/raw/r/..%EF%BC%BCx",
        // The same characters as raw UTF-8 in the request line.
        "/gw/raw/r/\u{ff0e}\u{ff0e}/x",
        "/gw/raw/r/\u{2024}\u{2024}/x",
        "/gw/raw/r/..\u{ff0f}x",
        "/gw/raw/r/..\u{ff3c}x",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect();
    for target in &targets {
        let (status, text) = g.raw_get(target).await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(status, 400, "{shown}: {text}");
        let body: Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        assert_eq!(body["error"]["code"], "invalid_path", "{shown}: {text}");
    }
    assert_eq!(g.up.count(), 0, "nothing reached the upstream");
    // Text already in NFKC form, encoded or raw, is forwarded (encoded).
    let (status, text) = g.raw_get("/gw/raw/r/caf%C3%A9".as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = g.raw_get("/gw/raw/r/caf\u{e9}".as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let seen = g.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for head in &seen {
        assert!(head.starts_with("GET /api/r/caf%C3%A9 "), "{head}");
    }
}
