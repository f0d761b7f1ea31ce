//! Readiness for supervisors: the `sd_notify` protocol.
//!
//! When `NOTIFY_SOCKET` names a unix datagram socket (a path, or `@name` for
//! the abstract namespace), we send `READY=1` and `MAINPID=<pid>` once every
//! listener accepts. A supervisor can then stop waiting without polling.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `READY=1` if `NOTIFY_SOCKET` is set. Returns whether it sent.
pub fn ready() -> io::Result<bool> {
    send("READY=1")
}

/// Tells a supervisor that speaks the gate (`RELOADER_GATE` set) that our
/// sockets are bound but not yet listening, and that the health check can
/// reach us on `check`. We join the SO_REUSEPORT group on SIGUSR2.
pub fn gate(check: std::net::SocketAddr) -> io::Result<bool> {
    send(&format!("X_RELOADER_GATE={check}"))
}

/// Sends `state` (with `MAINPID=`) if `NOTIFY_SOCKET` is set.
pub fn send(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    let msg = format!("{state}\nMAINPID={}\n", std::process::id());
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(true)
}
