//! The accept loops, the HTTP service and the drain.
//!
//! The drain is where a reload loses requests if it is careless, so its rules
//! are spelled out here:
//!
//! 1. On shutdown, every accept loop stops, then accepts (without waiting)
//!    whatever the kernel has already queued on its listener, and only then
//!    closes it: a connection left in the accept queue at close is reset.
//! 2. A connection that has not sent its first request yet is *not* shut down:
//!    hyper's graceful shutdown would close it as idle, and its client would
//!    see an error. We wait for that request and answer it.
//! 3. Once a connection has started a request, hyper's graceful shutdown lets
//!    in-flight requests finish and closes it; responses sent while draining
//!    carry `Connection: close` (HTTP/1) so the client does not reuse it.
//!    A kept-alive connection that is idle when the drain begins is not
//!    closed at once either: its client may be sending the next request at
//!    that instant, and a close would reset it (a host test shows it). It
//!    gets `IDLE_GRACE` to send one, answered with
//!    `Connection: close`; only a connection idle for that long is closed.
//! 4. The drain ends when every connection is done, or at the drain timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::listen::Listener;

/// How long a kept-alive connection idle at the drain may take to send its
/// next request (answered, with `Connection: close`) before it is closed.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// `/delay/<ms>` never sleeps longer than this.
const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long the drain may take before remaining connections are cut.
    pub drain_timeout: Duration,
    /// The status every response carries (200; others only to test health
    /// gates).
    pub status: u16,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            drain_timeout: Duration::from_secs(30),
            status: 200,
        }
    }
}

/// What the drain did.
#[derive(Debug, Clone)]
pub struct DrainReport {
    /// Connections open at shutdown plus those taken from the accept queues.
    pub connections: usize,
    /// Of those, the ones taken from the accept queues before closing.
    pub from_queue: usize,
    /// Connections still open when the drain timeout cut them.
    pub cut: usize,
    /// Of those, the ones whose client had sent no request (nothing of
    /// theirs was lost: a client that connects and waits, as ab's surplus
    /// connections at the end of a run do)...
    pub cut_unasked: usize,
    /// ...and the ones with a request in flight (a lost request). The rest
    /// were kept-alive connections idle between requests.
    pub cut_busy: usize,
    pub elapsed: Duration,
}

/// Shared between the accept loops, the connections and the drain.
struct Shared {
    pid: String,
    status: StatusCode,
    draining: AtomicBool,
    open: AtomicUsize,
    /// Open connections that have not started a request yet.
    unasked: AtomicUsize,
    /// Requests whose response is not built yet, over all connections.
    busy: AtomicUsize,
    all_closed: Notify,
}

/// Serves `listeners` until `shutdown` resolves, then drains (see the module
/// docs) and returns what the drain did. `on_drain` gets what `shutdown`
/// resolved to once the drain has begun (every response from then on says
/// `Connection: close`), so a log line it writes announces a state that
/// holds. Must run inside a tokio runtime.
pub async fn serve<S>(
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = S>,
    on_drain: impl FnOnce(S),
    opts: ServeOptions,
) -> io::Result<DrainReport> {
    let shared = Arc::new(Shared {
        pid: std::process::id().to_string(),
        status: StatusCode::from_u16(opts.status).unwrap_or(StatusCode::OK),
        draining: AtomicBool::new(false),
        open: AtomicUsize::new(0),
        unasked: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        all_closed: Notify::new(),
    });
    let (drain_tx, drain_rx) = watch::channel(false);

    let mut loops = Vec::new();
    for l in listeners {
        l.socket.set_nonblocking(true)?;
        let listener = TcpListener::from_std(l.socket)?;
        loops.push(tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            drain_rx.clone(),
        )));
    }

    let why = shutdown.await;
    let start = Instant::now();
    shared.draining.store(true, Ordering::SeqCst);
    on_drain(why);
    let open_at_shutdown = shared.open.load(Ordering::SeqCst);
    let _ = drain_tx.send(true);
    let mut from_queue = 0;
    for l in loops {
        from_queue += l.await.unwrap_or(0);
    }

    let all_done = async {
        loop {
            let notified = shared.all_closed.notified();
            if shared.open.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(opts.drain_timeout, all_done).await;
    Ok(DrainReport {
        connections: open_at_shutdown + from_queue,
        from_queue,
        cut: shared.open.load(Ordering::SeqCst),
        cut_unasked: shared.unasked.load(Ordering::SeqCst),
        cut_busy: shared.busy.load(Ordering::SeqCst),
        elapsed: start.elapsed(),
    })
}

/// Accepts until the drain starts, then empties the accept queue and closes
/// the listener. Returns how many connections it took from the queue.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) -> usize {
    let for_connections = drain.clone();
    loop {
        tokio::select! {
            biased;
            _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => spawn_connection(stream, &shared, &for_connections),
                // EMFILE, ECONNABORTED and the like concern one connection or a
                // moment; the listener itself is fine.
                Err(e) => {
                    crate::say!("{}: accept: {e}", crate::log_prefix());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    // Out of the reactor, so accept() below asks the kernel directly and sees
    // exactly what is queued now, not what epoll last reported.
    let Ok(std_listener) = listener.into_std() else {
        return 0;
    };
    let queued = take_queued(&std_listener, &shared, &for_connections);
    drop(std_listener); // closes the listening socket
    queued
}

fn take_queued(
    listener: &StdListener,
    shared: &Arc<Shared>,
    drain: &watch::Receiver<bool>,
) -> usize {
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let spawned = stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream));
                if let Ok(stream) = spawned {
                    spawn_connection(stream, shared, drain);
                    n += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(_) => return n, // WouldBlock: the queue is empty
        }
    }
}

/// Decrements the open-connection count (and the unasked one, if no request
/// ever started) however the connection task ends.
struct OpenGuard(Arc<Shared>, Arc<ConnState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.1.requests.load(Ordering::SeqCst) == 0 {
            self.0.unasked.fetch_sub(1, Ordering::SeqCst);
        }
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Per-connection state the service shares with the connection task.
#[derive(Default)]
struct ConnState {
    /// Requests started on the connection.
    requests: AtomicUsize,
    /// Requests whose response is not built yet.
    in_flight: AtomicUsize,
    /// Signalled when a request starts.
    started: Notify,
}

impl ConnState {
    /// Waits until more than `seen` requests have started.
    async fn started_after(&self, seen: usize) {
        loop {
            let notified = self.started.notified();
            if self.requests.load(Ordering::SeqCst) > seen {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a request as in flight until its response is built.
struct InFlight(Arc<ConnState>, Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.1.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>, drain: &watch::Receiver<bool>) {
    shared.open.fetch_add(1, Ordering::SeqCst);
    shared.unasked.fetch_add(1, Ordering::SeqCst);
    let conn_state = Arc::new(ConnState::default());
    let guard = OpenGuard(shared.clone(), conn_state.clone());
    let mut drain = drain.clone();
    tokio::spawn(async move {
        let shared = guard.0.clone();
        let svc_state = conn_state.clone();
        let service = hyper::service::service_fn(move |req| {
            svc_state.in_flight.fetch_add(1, Ordering::SeqCst);
            shared.busy.fetch_add(1, Ordering::SeqCst);
            let in_flight = InFlight(svc_state.clone(), shared.clone());
            if svc_state.requests.fetch_add(1, Ordering::SeqCst) == 0 {
                shared.unasked.fetch_sub(1, Ordering::SeqCst);
            }
            svc_state.started.notify_one();
            let shared = shared.clone();
            async move {
                let response = respond(req, shared).await;
                drop(in_flight);
                response
            }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let shutdown_when_started = async {
            let _ = drain.wait_for(|d| *d).await;
            let seen = conn_state.requests.load(Ordering::SeqCst);
            if seen == 0 {
                // Rule 2: a new connection's first request is on its way.
                conn_state.started_after(0).await;
            } else if conn_state.in_flight.load(Ordering::SeqCst) == 0 {
                // Rule 3: idle between requests; its next one may be on the
                // wire. Answer it if it comes within the grace.
                let _ = tokio::time::timeout(IDLE_GRACE, conn_state.started_after(seen)).await;
            }
        };
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown_when_started => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(guard);
    });
}

async fn respond(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut status = shared.status;
    let mut body = Bytes::from(shared.pid.clone());
    if let Some(ms) = req.uri().path().strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await,
            Err(_) => {
                status = StatusCode::BAD_REQUEST;
                body = Bytes::from(format!(
                    "/delay/{ms}: want a whole number of milliseconds\n"
                ));
            }
        }
    }
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&shared.pid) {
        headers.insert("x-server-pid", v);
    }
    // Checked after the work: a request that began before the drain and ends
    // during it must still tell its client not to reuse the connection.
    // (HTTP/2 has no Connection header; GOAWAY does that job there.)
    if shared.draining.load(Ordering::SeqCst) && req.version() <= Version::HTTP_11 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}
