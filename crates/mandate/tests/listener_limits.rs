//! The listener's bounds, driven against the real `mandate serve` process over raw sockets:
//! bodies declared too large, slow bodies, silent and slowloris connections, the connection
//! cap (also under a small open-file limit), and keep-alive on endpoints that ignore a body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Served, demo_policies, http};

/// Bounds how long a test waits for something that must happen; not a performance claim.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// One answer read off a kept-alive connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close")
    }
}

/// A raw HTTP/1.1 connection that reads one answer at a time.
struct Conn {
    s: TcpStream,
    port: u16,
    buf: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self {
            s,
            port,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, extra_headers: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n{extra_headers}\r\n",
            self.port,
            body.len()
        );
        self.s.write_all(head.as_bytes()).unwrap();
        self.s.write_all(body).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0_u8; 8192];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one whole answer (Content-Length or chunked).
    fn answer(&mut self) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill() > 0, "connection closed before an answer");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end);
        let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let body = match length {
            Some(n) => {
                while self.buf.len() < n {
                    assert!(self.fill() > 0, "connection closed inside a body");
                }
                self.buf.drain(..n).collect::<Vec<u8>>()
            }
            None if head.contains("transfer-encoding: chunked") => {
                while !self.buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                    assert!(self.fill() > 0, "connection closed inside a chunked body");
                }
                let raw = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                common::dechunk(&raw).into_bytes()
            }
            None => Vec::new(),
        };
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Answer { status, head, body }
    }

    /// Whether the server has closed (or reset) the connection, waiting up to `wait`.
    fn closed_within(&mut self, wait: Duration) -> bool {
        self.s
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0_u8; 1024];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                // An answer before the close (a refusal) is read past.
                Ok(_) => {}
                Err(e) => {
                    return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                }
            }
        }
    }
}

fn start(extra: &[&str]) -> (tempfile::TempDir, Served) {
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(data.path(), &demo_policies(), extra);
    (data, server)
}

#[test]
fn a_declared_body_over_the_limit_is_refused_at_once_with_json_and_connection_close() {
    // The body timeout is long: a server that waited for the body would answer 408, late.
    let (_d, server) = start(&["--body-read-timeout-secs", "25"]);
    for path in [
        "/v1/attest",
        "/v1/decide",
        "/v1/agents",
        "/access/v1/evaluation",
        "/healthz",
        "/no/such/route",
    ] {
        let mut c = Conn::open(server.port);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        );
        c.s.write_all(head.as_bytes()).unwrap();
        let a = c.answer();
        assert_eq!(a.status, 413, "{path}: {a:?}");
        assert_eq!(a.code(), "body_too_large", "{path}: {a:?}");
        assert!(
            a.closes(),
            "{path}: the refusal must say Connection: close: {a:?}"
        );
        assert!(c.closed_within(HANG_GUARD), "{path}: connection left open");
    }
}

#[test]
fn a_chunked_body_that_grows_past_the_limit_is_refused_with_json() {
    let (_d, server) = start(&[]);
    let mut c = Conn::open(server.port);
    c.s.write_all(
        b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    // 17 chunks of 64 KiB: just past the 1 MiB limit.
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..17 {
        let sent =
            c.s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| c.s.write_all(&chunk))
                .and_then(|()| c.s.write_all(b"\r\n"));
        if sent.is_err() {
            break;
        }
    }
    let a = c.answer();
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.code(), "body_too_large");
    assert!(a.closes(), "{a:?}");
}

#[test]
fn a_body_that_trickles_in_gets_408_with_json() {
    let (_d, server) = start(&["--body-read-timeout-secs", "1"]);
    let mut c = Conn::open(server.port);
    c.s.write_all(
        b"POST /v1/attest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agent\":",
    )
    .unwrap();
    let a = c.answer();
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.code(), "body_timeout", "{a:?}");
    assert!(a.closes(), "{a:?}");
}

#[test]
fn an_endpoint_that_ignores_its_body_keeps_the_connection_usable() {
    let (_d, server) = start(&[]);
    let mut c = Conn::open(server.port);
    // A bodyless GET that carries a body anyway, larger than one read buffer.
    let filler = vec![b'x'; 300 * 1024];
    c.send("GET", "/healthz", "", &filler);
    let a = c.answer();
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!a.closes(), "{a:?}");
    // Refused before its body is looked at (no credentials).
    c.send(
        "POST",
        "/v1/keys/rotate",
        "Content-Type: application/json\r\n",
        b"{}",
    );
    let a = c.answer();
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.body["error"]["code"].is_string(), "{a:?}");
    assert!(!a.closes(), "{a:?}");
    // A route that does not exist, with a body.
    c.send("POST", "/v1/nothing-here", "", &filler);
    let a = c.answer();
    assert_eq!(a.status, 404, "{a:?}");
    assert!(!a.closes(), "{a:?}");
    // Still the same connection.
    c.send("GET", "/readyz", "", b"");
    let a = c.answer();
    assert_eq!(a.status, 200, "{a:?}");
}

/// Sends one byte of a request head every 300 ms until the server closes the connection;
/// whether it did within the guard.
fn slowloris(port: u16) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < HANG_GUARD {
        if s.write_all(&head[i % head.len()..=i % head.len()]).is_err() {
            return true;
        }
        i += 1;
        let mut b = [0_u8; 256];
        match s.read(&mut b) {
            Ok(0) => return true,
            // An answer (e.g. 408) is also an end, as long as the head never completed.
            Ok(_) => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn silent_and_slowloris_connections_are_closed_while_a_busy_client_keeps_its_connection() {
    let (_d, server) = start(&[
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "2",
    ]);
    let port = server.port;
    let slow: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || slowloris(port)))
        .collect();
    let mut silent: Vec<Conn> = (0..20).map(|_| Conn::open(port)).collect();
    // A client busy on one kept-alive connection for longer than both timeouts.
    let mut busy = Conn::open(port);
    for _ in 0..10 {
        busy.send("GET", "/healthz", "", b"");
        assert_eq!(busy.answer().status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, c) in silent.iter_mut().enumerate() {
        assert!(
            c.closed_within(HANG_GUARD),
            "silent connection {i} never closed"
        );
    }
    for (i, t) in slow.into_iter().enumerate() {
        assert!(t.join().unwrap(), "slowloris connection {i} never closed");
    }
    // Left idle after its last answer, the busy connection is closed too.
    assert!(
        busy.closed_within(HANG_GUARD),
        "idle keep-alive connection never closed"
    );
}

#[test]
fn past_the_connection_cap_new_clients_are_refused_clearly_and_established_ones_keep_working() {
    let (_d, server) = start(&["--max-connections", "16", "--header-read-timeout-secs", "3"]);
    let port = server.port;
    let mut established = Conn::open(port);
    established.send("GET", "/healthz", "", b"");
    assert_eq!(established.answer().status, 200);
    // Fill the cap with sockets that never send anything.
    let mut hogs: Vec<Conn> = (0..40).map(|_| Conn::open(port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (s, r) = http(port, "GET", "/healthz", None, None);
    assert_eq!(s, 503, "{r}");
    assert_eq!(r["error"]["code"], "too_many_connections", "{r}");
    // The established client is not starved.
    for _ in 0..3 {
        established.send("GET", "/readyz", "", b"");
        assert_eq!(established.answer().status, 200);
    }
    // The hogs past the cap were refused and closed at once; the rest time out.
    let refused = hogs
        .iter_mut()
        .map(|c| c.closed_within(Duration::from_millis(200)))
        .filter(|closed| *closed)
        .count();
    assert!(refused >= 40 - 16, "only {refused} of 40 hogs were refused");
    let started = Instant::now();
    loop {
        let (s, r) = http(port, "GET", "/healthz", None, None);
        if s == 200 {
            break;
        }
        assert_eq!(r["error"]["code"], "too_many_connections", "{r}");
        assert!(
            started.elapsed() < HANG_GUARD,
            "capacity never came back after the hogs timed out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(hogs);
}

#[test]
fn under_a_256_file_limit_300_idle_sockets_do_not_lock_out_new_clients() {
    let data = tempfile::tempdir().unwrap();
    let server = Served::start_with_open_files(
        data.path(),
        &demo_policies(),
        &["--header-read-timeout-secs", "2"],
        Some(256),
    );
    let port = server.port;
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A new client is answered at once: served, or refused clearly, never left hanging.
    let (s, r) = http(port, "GET", "/healthz", None, None);
    assert!(
        s == 200 || (s == 503 && r["error"]["code"] == "too_many_connections"),
        "{s} {r}"
    );
    // And once the idle sockets have timed out, it is served.
    let started = Instant::now();
    loop {
        let (s, r) = http(port, "GET", "/healthz", None, None);
        if s == 200 {
            break;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "never served again: {s} {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);
}
