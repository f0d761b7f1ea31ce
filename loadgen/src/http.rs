//! One HTTP/1.1 request, on a new connection or a kept-alive one, with every
//! failure classified by the step it happened in.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200, served by this PID.
    Ok(u32),
    Refused,
    Reset,
    /// The server closed the connection without answering.
    Closed,
    Timeout,
    BadStatus(u16),
    Other(String),
}

impl Outcome {
    /// A short name to count failures by.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Closed => "closed",
            Outcome::Timeout => "timeout",
            Outcome::BadStatus(_) => "bad-status",
            Outcome::Other(_) => "other",
        }
    }
}

/// One request on a fresh connection: `GET path`, `Connection: close`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Outcome {
    get_detailed(addr, path, timeout).0
}

/// Like [`get`], with the error's text (which step failed, and how).
pub fn get_detailed(addr: SocketAddr, path: &str, timeout: Duration) -> (Outcome, Option<String>) {
    outcome_of(try_get(addr, path, timeout))
}

/// Names the step of a request an error happened in, keeping its kind.
fn at(step: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{step}: {e}"))
}

/// One request as [`get_timed`] saw it.
#[derive(Debug)]
pub struct Attempt {
    pub outcome: Outcome,
    /// Time to connect (zero on a reused connection).
    pub connect: Duration,
    /// The error's text, when it failed.
    pub detail: Option<String>,
    /// It failed in `connect()` itself: the handshake did not complete, so
    /// no server process had a byte of it (a process that closes a
    /// connection it read nothing from sends a FIN, not a reset).
    pub in_connect: bool,
}

/// Like [`get_detailed`], also returning the time to connect and whether
/// the failure was in the handshake.
pub fn get_timed(addr: SocketAddr, path: &str, timeout: Duration) -> Attempt {
    let t = Instant::now();
    let mut stream = match connect(addr, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::connect_failed(&e, t.elapsed()),
    };
    let connect = t.elapsed();
    let (outcome, detail) = outcome_of(request_and_close(&mut stream, addr, path));
    Attempt {
        outcome,
        connect,
        detail,
        in_connect: false,
    }
}

impl Attempt {
    pub fn connect_failed(e: &io::Error, connect: Duration) -> Self {
        Attempt {
            outcome: classify(e),
            connect,
            detail: Some(e.to_string()),
            in_connect: true,
        }
    }
}

/// Sends `GET path` with `Connection: close` and reads the whole answer.
fn request_and_close(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
) -> io::Result<(u16, String)> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(at("write"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(at("read"))?;
    parse_response(&raw)
}

/// A connected stream with read and write timeouts.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(at("connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn outcome_of(result: io::Result<(u16, String)>) -> (Outcome, Option<String>) {
    match result {
        Ok((200, body)) => match body.trim().parse() {
            Ok(pid) => (Outcome::Ok(pid), None),
            Err(_) => (
                Outcome::Other(format!("200 with a body that is not a PID: {body:?}")),
                None,
            ),
        },
        Ok((status, _)) => (Outcome::BadStatus(status), None),
        Err(e) => (classify(&e), Some(e.to_string())),
    }
}

/// One request on a kept-alive connection. Returns the outcome and whether
/// the connection may be reused (no `Connection: close`).
pub fn keepalive_get(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
) -> io::Result<(Outcome, bool)> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").map_err(at("write"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
        let n = stream.read(&mut chunk).map_err(at("read"))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read: connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let end = head.len + head.content_length;
    while buf.len() < end {
        let n = stream.read(&mut chunk).map_err(at("read"))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read: connection closed mid-response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (outcome, _) = outcome_of(parse_response(&buf[..end]));
    Ok((outcome, !head.close))
}

/// A response head, read with httparse.
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    content_length: usize,
    /// `Connection: close`.
    close: bool,
}

/// Parses a response head; `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad response head: {e}"),
            ))
        }
    };
    let value = |name: &str| {
        r.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    Ok(Some(Head {
        status: r.code.unwrap_or(0),
        len,
        content_length: value("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        close: value("connection").is_some_and(|v| v == "close"),
    }))
}

/// Sends one request and returns the status and body.
pub fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    request_and_close(&mut connect(addr, timeout)?, addr, path)
}

/// Parses a complete HTTP/1.1 response: its status and body.
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    if raw.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let head = parse_head(raw)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "truncated response head"))?;
    let body = &raw[head.len..];
    Ok((head.status, String::from_utf8_lossy(body).into_owned()))
}

pub fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Outcome::Reset,
        io::ErrorKind::UnexpectedEof => Outcome::Closed,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Other(e.to_string()),
    }
}

/// Polls `addr` until it answers 200 or `within` passes.
pub fn wait_ready(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Outcome::Ok(_) = get(addr, "/healthz", Duration::from_millis(500)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
