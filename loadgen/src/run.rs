//! Many requests: `concurrency` workers, each doing one request at a time,
//! either as fast as they can (closed loop) or at scheduled instants (open
//! loop, `rate` requests per second in all: a stalled server shows as
//! latency, not as fewer requests).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{self, Attempt, Outcome};

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub requests: usize,
    pub path: String,
    pub timeout: Duration,
    /// Stop starting requests after this long, even if fewer than `requests` ran.
    pub duration: Option<Duration>,
    /// Reuse connections (HTTP keep-alive) instead of one per request.
    pub keepalive: bool,
    /// Open loop: start requests at this many per second in all.
    pub rate: Option<f64>,
    /// Keep a [`Record`] per request (for the TSV and the plots).
    pub record: bool,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// Shared with the caller while the load runs: how many requests are
    /// done, and a switch that stops it (so a load can span an event and
    /// end after it, instead of racing it with a fixed count).
    pub live: Option<Arc<Live>>,
    /// Past `requests`, go on until this many distinct server PIDs have
    /// answered (a load that must span that many reloads), bounded by
    /// `duration`.
    pub min_servers: usize,
    /// Past `requests`, go on until one request has failed (a check that
    /// unprotected reloads lose requests), bounded by `duration`.
    pub until_failure: bool,
}

/// See [`Options::live`].
#[derive(Debug, Default)]
pub struct Live {
    pub done: AtomicUsize,
    pub stop: AtomicBool,
    /// Distinct server PIDs that have answered.
    pub servers: AtomicUsize,
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
            keepalive: false,
            rate: None,
            record: false,
            progress: false,
            live: None,
            min_servers: 0,
            until_failure: false,
        }
    }
}

/// One request as it happened.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it started (open loop: was scheduled), since the run began.
    pub start: Duration,
    /// Time to connect (zero on a reused connection).
    pub connect: Duration,
    /// From start to the whole response (or the failure).
    pub total: Duration,
    /// The serving PID, when it succeeded.
    pub pid: Option<u32>,
    /// [`Outcome::kind`].
    pub outcome: &'static str,
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub ok: usize,
    /// Failures counted by [`Outcome::kind`].
    pub failures: BTreeMap<&'static str, usize>,
    /// Of those, the ones that failed in `connect()`, by kind: the handshake
    /// did not complete (see [`Attempt::in_connect`]).
    pub in_connect: BTreeMap<&'static str, usize>,
    /// The first few failures, in full.
    pub examples: Vec<String>,
    /// Requests served by each PID.
    pub pids: BTreeMap<u32, usize>,
    pub elapsed: Duration,
    /// Every request, in completion order (when `record` was set).
    pub records: Vec<Record>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Failures after the handshake completed: requests a server had.
    pub fn failed_after_connect(&self) -> usize {
        self.failed() - self.in_connect.values().sum::<usize>()
    }
}

/// A worker's connection when keeping alive.
struct Worker {
    opts: Options,
    conn: Option<TcpStream>,
}

impl Worker {
    /// One request; with keep-alive, a request that fails on a reused
    /// connection before any answer is retried once on a new one (what
    /// HTTP clients do for idempotent requests: the server may close an
    /// idle connection at the same moment).
    fn request(&mut self) -> Attempt {
        if !self.opts.keepalive {
            return http::get_timed(self.opts.addr, &self.opts.path, self.opts.timeout);
        }
        let reused = self.conn.is_some();
        let first = self.keepalive_once();
        if reused && matches!(first.outcome, Outcome::Closed | Outcome::Reset) {
            return self.keepalive_once();
        }
        first
    }

    fn keepalive_once(&mut self) -> Attempt {
        let mut connect = Duration::ZERO;
        if self.conn.is_none() {
            let t = Instant::now();
            match http::connect(self.opts.addr, self.opts.timeout) {
                Ok(c) => self.conn = Some(c),
                Err(e) => return Attempt::connect_failed(&e, t.elapsed()),
            }
            connect = t.elapsed();
        }
        let conn = self.conn.as_mut().expect("connected above");
        let (outcome, detail) = match http::keepalive_get(conn, self.opts.addr, &self.opts.path) {
            Ok((outcome, keep)) => {
                if !keep {
                    self.conn = None;
                }
                (outcome, None)
            }
            Err(e) => {
                self.conn = None;
                (http::classify(&e), Some(e.to_string()))
            }
        };
        Attempt {
            outcome,
            connect,
            detail,
            in_connect: false,
        }
    }
}

/// Runs the load and returns what it saw. Stops by itself: after
/// `requests` requests or `duration`, each request bounded by `timeout`.
pub fn run(opts: &Options) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let live = opts.live.clone().unwrap_or_default();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let finished = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let progress = opts.progress.then(|| {
        let (done, failed, finished, total) = (
            done.clone(),
            failed.clone(),
            finished.clone(),
            opts.requests,
        );
        let duration = opts.duration;
        std::thread::spawn(move || progress_line(start, total, duration, &done, &failed, &finished))
    });
    let workers: Vec<_> = (0..opts.concurrency.max(1))
        .map(|_| {
            let (next, done, failed, report, live) = (
                next.clone(),
                done.clone(),
                failed.clone(),
                report.clone(),
                live.clone(),
            );
            let mut worker = Worker {
                opts: opts.clone(),
                conn: None,
            };
            std::thread::spawn(move || {
                let opts = worker.opts.clone();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let counted = i >= opts.requests
                        && live.servers.load(Ordering::Relaxed) >= opts.min_servers
                        && (!opts.until_failure || failed.load(Ordering::Relaxed) > 0);
                    if counted
                        || opts.duration.is_some_and(|d| start.elapsed() >= d)
                        || live.stop.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    // Open loop: wait for this request's instant, and count
                    // its time from then, however late we are.
                    let began = match opts.rate {
                        Some(rate) => {
                            let at = start + Duration::from_secs_f64(i as f64 / rate);
                            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            at
                        }
                        None => Instant::now(),
                    };
                    let Attempt {
                        outcome,
                        connect,
                        detail,
                        in_connect,
                    } = worker.request();
                    let total = began.elapsed();
                    let kind = outcome.kind();
                    done.fetch_add(1, Ordering::Relaxed);
                    let mut r = report.lock().unwrap();
                    live.done.fetch_add(1, Ordering::Relaxed);
                    let pid = match outcome {
                        Outcome::Ok(pid) => {
                            r.ok += 1;
                            *r.pids.entry(pid).or_default() += 1;
                            live.servers.store(r.pids.len(), Ordering::Relaxed);
                            Some(pid)
                        }
                        failure => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *r.failures.entry(failure.kind()).or_default() += 1;
                            if in_connect {
                                *r.in_connect.entry(failure.kind()).or_default() += 1;
                            }
                            if r.examples.len() < 5 {
                                let at_ms = (began - start).as_millis();
                                r.examples.push(format!(
                                    "{failure:?} at {at_ms} ms: {}",
                                    detail.unwrap_or_default()
                                ));
                            }
                            None
                        }
                    };
                    if opts.record {
                        r.records.push(Record {
                            start: began - start,
                            connect,
                            total,
                            pid,
                            outcome: kind,
                        });
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let mut r = std::mem::take(&mut *report.lock().unwrap());
    r.elapsed = start.elapsed();
    r.records.sort_by_key(|x| x.start);
    r
}

/// A progress line on stderr: redrawn in place on a terminal, every 10%
/// otherwise.
fn progress_line(
    start: Instant,
    total: usize,
    duration: Option<Duration>,
    done: &AtomicUsize,
    failed: &AtomicUsize,
    finished: &AtomicBool,
) {
    // Redraw in place only on a real terminal (a serial console has no TERM).
    let tty = std::io::stderr().is_terminal() && std::env::var_os("TERM").is_some();
    let mut last_decile = 0;
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(if tty { 200 } else { 500 }));
        let n = done.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let frac = match duration {
            Some(d) if total == usize::MAX => secs / d.as_secs_f64(),
            _ => n as f64 / total.max(1) as f64,
        }
        .min(1.0);
        let bar: String = (0..30)
            .map(|i| if (i as f64) < frac * 30.0 { '#' } else { '.' })
            .collect();
        let line = format!(
            "[{bar}] {:3.0}% {n} requests, {:.0}/s, {} failed",
            frac * 100.0,
            n as f64 / secs.max(1e-9),
            failed.load(Ordering::Relaxed)
        );
        if tty {
            eprint!("\r{line}");
        } else if (frac * 10.0) as u32 > last_decile {
            last_decile = (frac * 10.0) as u32;
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}
