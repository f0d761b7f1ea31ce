//! `loadgen`: a real HTTP/1.1 load client: a new TCP connection per request, `c`
//! requests at a time, every failure classified. The seed measured with `ab`
//! in this mode; each request exercises the SYN path a reload disturbs.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    match try_get(addr, path, timeout) {
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

/// Names the step of a request an error happened in, keeping its kind.
fn at(step: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{step}: {e}"))
}

/// Sends one request and returns the status and body.
pub fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(at("connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(at("write"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(at("read"))?;
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response with a Content-Length body.
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if raw.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("truncated response head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, body.to_string()))
}

fn classify(e: &io::Error) -> Outcome {
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

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub requests: usize,
    pub path: String,
    pub timeout: Duration,
    /// Stop starting requests after this long, even if fewer than `requests` ran.
    pub duration: Option<Duration>,
}

impl Options {
    pub fn new(addr: SocketAddr, concurrency: usize, requests: usize) -> Self {
        Options {
            addr,
            concurrency,
            requests,
            path: "/".into(),
            timeout: Duration::from_secs(10),
            duration: None,
        }
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub ok: usize,
    /// Failures counted by [`Outcome::kind`].
    pub failures: BTreeMap<&'static str, usize>,
    /// The first few failures, in full, for the test's message.
    pub examples: Vec<String>,
    /// Requests served by each PID.
    pub pids: BTreeMap<u32, usize>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

/// Runs `requests` requests, `concurrency` at a time, each on a new
/// connection. Stops by itself: every request has `timeout`.
pub fn run(opts: &Options) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let start = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency.max(1))
        .map(|_| {
            let (next, report, opts) = (next.clone(), report.clone(), opts.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < opts.requests
                    && opts.duration.is_none_or(|d| start.elapsed() < d)
                {
                    let (outcome, detail) = get_detailed(opts.addr, &opts.path, opts.timeout);
                    let mut r = report.lock().unwrap();
                    match outcome {
                        Outcome::Ok(pid) => {
                            r.ok += 1;
                            *r.pids.entry(pid).or_default() += 1;
                        }
                        failure => {
                            *r.failures.entry(failure.kind()).or_default() += 1;
                            if r.examples.len() < 5 {
                                let at_ms = start.elapsed().as_millis();
                                r.examples.push(format!(
                                    "{failure:?} at {at_ms} ms: {}",
                                    detail.unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut r = report.lock().unwrap().clone();
    r.elapsed = start.elapsed();
    r
}
