//! Listening sockets: bound here with SO_REUSEPORT, or inherited from a
//! supervisor the systemd way (`LISTEN_FDS`).
//!
//! Every error is one line that names the address or fd and what to do;
//! `main` turns it into exit code 2. Binding is all or nothing: a failure
//! drops (closes) whatever was already bound.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The first inherited fd, by the systemd convention (0-2 are stdio).
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket ready to be served, and where it came from.
#[derive(Debug)]
pub struct Listener {
    pub socket: TcpListener,
    pub addr: SocketAddr,
    /// `None` when we bound it; the fd and its `LISTEN_FDNAMES` name when inherited.
    pub inherited: Option<(RawFd, Option<String>)>,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inherited {
            None => write!(f, "{}", self.addr),
            Some((fd, None)) => write!(f, "{} (inherited fd {fd})", self.addr),
            Some((fd, Some(name))) => write!(f, "{} (inherited fd {fd}, {name})", self.addr),
        }
    }
}

#[derive(Debug)]
pub enum ListenError {
    /// `--listen` could not be parsed as an address.
    BadAddress { input: String },
    /// The port is held by a socket that did not set SO_REUSEPORT (or by another user).
    InUse { addr: SocketAddr },
    /// Any other failure to create, bind or listen.
    Bind { addr: SocketAddr, source: io::Error },
    /// `LISTEN_FDS` and friends are malformed or name something unusable.
    Inherited { what: String },
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::BadAddress { input } => write!(
                f,
                "--listen {input:?} is not an address: use IP:PORT, e.g. 127.0.0.1:7000 or [::1]:7000"
            ),
            ListenError::InUse { addr } => write!(
                f,
                "cannot bind {addr}: the port is in use by a socket without SO_REUSEPORT \
                 (or owned by another user); stop that process or pick another port"
            ),
            ListenError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ListenError::Inherited { what } => write!(f, "inherited listeners: {what}"),
        }
    }
}

impl std::error::Error for ListenError {}

/// Parses one `--listen` value. IPv6 addresses need brackets: `[::1]:7000`.
pub fn parse_listen(input: &str) -> Result<SocketAddr, ListenError> {
    input.parse().map_err(|_| ListenError::BadAddress {
        input: input.to_owned(),
    })
}

/// The seed's backlog: `max(2048, SOMAXCONN)`. The kernel caps it at
/// `net.core.somaxconn` anyway.
pub fn default_backlog() -> i32 {
    2048.max(libc::SOMAXCONN)
}

/// Binds every address with SO_REUSEADDR, SO_REUSEPORT and TCP_NODELAY, or
/// none of them, and listens on each.
pub fn bind_all(addrs: &[SocketAddr], backlog: i32) -> Result<Vec<Listener>, ListenError> {
    bind_all_as(addrs, Some(backlog))
}

/// As `bind_all`, but without `listen()`: the sockets hold the port yet are
/// not in its SO_REUSEPORT group (a socket joins at `listen()`), so no client
/// is sent to them until `join`.
pub fn bind_all_unjoined(addrs: &[SocketAddr]) -> Result<Vec<Listener>, ListenError> {
    bind_all_as(addrs, None)
}

/// Joins the SO_REUSEPORT group: `listen()` on sockets from `bind_all_unjoined`.
pub fn join(listeners: &[Listener], backlog: i32) -> Result<(), ListenError> {
    // Inherited ones listen already, with their owner's backlog.
    for l in listeners.iter().filter(|l| l.inherited.is_none()) {
        SockRef::from(&l.socket)
            .listen(backlog)
            .map_err(|source| ListenError::Bind {
                addr: l.addr,
                source,
            })?;
    }
    Ok(())
}

/// A plain listener on an ephemeral loopback port of `like`'s family, for a
/// supervisor's health check before we join the group.
pub fn check_listener(like: SocketAddr) -> Result<Listener, ListenError> {
    let ip: std::net::IpAddr = match like {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let want = SocketAddr::new(ip, 0);
    let socket =
        TcpListener::bind(want).map_err(|source| ListenError::Bind { addr: want, source })?;
    let addr = socket
        .local_addr()
        .map_err(|source| ListenError::Bind { addr: want, source })?;
    Ok(Listener {
        socket,
        addr,
        inherited: None,
    })
}

fn bind_all_as(addrs: &[SocketAddr], backlog: Option<i32>) -> Result<Vec<Listener>, ListenError> {
    addrs
        .iter()
        .map(|&addr| {
            bind_one(addr, backlog).map(|socket| Listener {
                socket,
                addr,
                inherited: None,
            })
        })
        .collect()
}

fn bind_one(addr: SocketAddr, backlog: Option<i32>) -> Result<TcpListener, ListenError> {
    let err = |source: io::Error| {
        if source.raw_os_error() == Some(libc::EADDRINUSE) {
            ListenError::InUse { addr }
        } else {
            ListenError::Bind { addr, source }
        }
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        // v6-only, so `[::]:7000` and `0.0.0.0:7000` can be listed side by side.
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    // Inherited by every accepted socket on Linux.
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    if let Some(backlog) = backlog {
        socket.listen(backlog).map_err(err)?;
    }
    Ok(socket.into())
}

/// Adopts the listeners a supervisor passed by the systemd convention:
/// `LISTEN_FDS=n` means fds 3..3+n; `LISTEN_PID`, when set, must be ours
/// (it is accepted when absent, since `std::process::Command` cannot set
/// it); `LISTEN_FDNAMES` is a `:`-separated list of names.
///
/// Returns `Ok(None)` when `LISTEN_FDS` is not set.
pub fn inherited() -> Result<Option<Vec<Listener>>, ListenError> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let bad = |what: String| ListenError::Inherited { what };
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.trim() != std::process::id().to_string() {
            // Meant for another process (we were started by the one it was
            // meant for): ignore it, as sd_listen_fds does.
            return Ok(None);
        }
    }
    let count: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "LISTEN_FDS={count:?} is not a count between 1 and 1024"
            ))
        })?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();

    // Check every fd before taking ownership of any, so an error closes nothing
    // that is not ours.
    let mut addrs = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        addrs.push(check_listening_fd(fd).map_err(|why| bad(format!("fd {fd} {why}")))?);
    }
    let listeners = addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            let fd = LISTEN_FDS_START + i as RawFd;
            // SAFETY: `check_listening_fd` showed `fd` is an open socket, and
            // by the LISTEN_FDS convention it was handed to us to own; nothing
            // else in this process refers to it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let socket = Socket::from(owned);
            // Do not leak the listener into processes we might start.
            let _ = socket.set_cloexec(true);
            let name = names.get(i).filter(|n| !n.is_empty()).cloned();
            Listener {
                socket: socket.into(),
                addr,
                inherited: Some((fd, name)),
            }
        })
        .collect();
    // The variables describe our fds; a child must not believe they are its own.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    Ok(Some(listeners))
}

/// Says why `fd` is not a listening TCP socket, or returns its address.
fn check_listening_fd(fd: RawFd) -> Result<SocketAddr, String> {
    // SAFETY: F_GETFD only reads the descriptor table; an unused fd gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err("is not open".into());
    }
    // SAFETY: the fd is open (checked just above) and stays open for the
    // borrow, which ends with this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = SockRef::from(&borrowed);
    let ty = sock
        .r#type()
        .map_err(|e| format!("is not a socket ({e})"))?;
    if ty != Type::STREAM {
        return Err("is not a stream socket".into());
    }
    let addr = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("is not an IPv4/IPv6 socket")?;
    match sock.is_listener() {
        Ok(true) => Ok(addr),
        Ok(false) => Err(format!("({addr}) is not listening")),
        Err(e) => Err(format!("({addr}): cannot query SO_ACCEPTCONN: {e}")),
    }
}
