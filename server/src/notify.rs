//! Readiness for supervisors: the `sd_notify` protocol, through the
//! `sd-notify` crate. Nothing is sent when `NOTIFY_SOCKET` is unset.

use std::io;

use sd_notify::NotifyState;

/// Sends `READY=1` (with `MAINPID=`) once every listener accepts.
pub fn ready() -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Ready, NotifyState::MainPid(std::process::id())])
}

/// Tells a supervisor that speaks the gate (`RELOADER_GATE` set) that our
/// sockets are bound but not yet listening, and that the health check can
/// reach us on `check`. We join the SO_REUSEPORT group on SIGUSR2.
pub fn gate(check: std::net::SocketAddr) -> io::Result<()> {
    let var = format!("X_RELOADER_GATE={check}");
    sd_notify::notify(&[
        NotifyState::Custom(&var),
        NotifyState::MainPid(std::process::id()),
    ])
}

/// Tells the supervisor that the drain timeout cut `n` connections (sent
/// before we exit, so it can warn and count them).
pub fn drain_cut(n: usize) -> io::Result<()> {
    let var = format!("X_RELOADER_DRAIN_CUT={n}");
    sd_notify::notify(&[
        NotifyState::Custom(&var),
        NotifyState::MainPid(std::process::id()),
    ])
}
