//! The reloader's gate protocol, both ends, for servers that want to be
//! checked before they get a single client.
//!
//! A server bound to a `SO_REUSEPORT` port joins the kernel's group at
//! `listen()`, and from then on new connections reach it. Under a
//! supervisor that sets [`ENV`], a server that follows the gate:
//!
//! 1. binds its served sockets (`SO_REUSEPORT`) **without** `listen()`;
//! 2. serves its health check on a private loopback address and says so
//!    with [`Gate::offer`] (`X_RELOADER_GATE=IP:PORT` on `NOTIFY_SOCKET`);
//! 3. on [`JOIN_SIGNAL`] (SIGUSR2), calls `listen()` on the served sockets
//!    and sends [`ready`] (`READY=1`); on SIGTERM before that, it exits: it
//!    never joined, so there is nothing to drain.
//!
//! A server that fails its check is stopped before step 3, so no client
//! ever reaches it. Without [`ENV`] (no such supervisor) a server binds and
//! listens as usual and may still send [`ready`] (systemd's protocol).
//!
//! ```no_run
//! # fn check_address() -> std::net::SocketAddr { "127.0.0.1:0".parse().unwrap() }
//! match gate::Gate::from_env() {
//!     Some(g) => {
//!         // bind without listen(), serve the check, then:
//!         g.offer(check_address()).expect("NOTIFY_SOCKET");
//!         // wait for gate::JOIN_SIGNAL, listen(), then:
//!         gate::ready().expect("NOTIFY_SOCKET");
//!     }
//!     None => { /* bind and listen(), then */ let _ = gate::ready(); }
//! }
//! ```
//!
//! The supervisor's end is [`Message::parse`]: each datagram counts only
//! for the process whose PID the kernel says sent it (SCM_CREDENTIALS),
//! which is the supervisor's to check.

use std::io;
use std::net::SocketAddr;

use sd_notify::NotifyState;

/// Set (to `1`) in a server's environment by a supervisor that speaks the
/// gate.
pub const ENV: &str = "RELOADER_GATE";

/// `X_RELOADER_GATE=IP:PORT`: bound, not listening, checked on IP:PORT.
pub const OFFER: &str = "X_RELOADER_GATE";

/// `X_RELOADER_DRAIN_CUT=N`: the drain timeout cut N connections (sent
/// before exiting, so the supervisor can warn and count them).
pub const DRAIN_CUT: &str = "X_RELOADER_DRAIN_CUT";

/// The signal that tells a server that passed its check to join.
pub const JOIN_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A supervisor that speaks the gate is ours.
#[derive(Debug)]
pub struct Gate(());

impl Gate {
    /// `Some` when our supervisor set [`ENV`] and gave us a `NOTIFY_SOCKET`.
    /// Removes [`ENV`] from our environment, so the processes we start do
    /// not take the offer for themselves.
    pub fn from_env() -> Option<Gate> {
        let set = std::env::var_os(ENV).is_some();
        std::env::remove_var(ENV);
        (set && std::env::var_os("NOTIFY_SOCKET").is_some()).then_some(Gate(()))
    }

    /// Step 2: our sockets are bound but not listening, and the check
    /// reaches us on `check`.
    pub fn offer(&self, check: SocketAddr) -> io::Result<()> {
        notify(&format!("{OFFER}={check}"))
    }
}

/// Our listeners accept (`READY=1`, with `MAINPID=`). Nothing is sent
/// when `NOTIFY_SOCKET` is unset.
pub fn ready() -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Ready, NotifyState::MainPid(std::process::id())])
}

/// Our drain timeout cut `n` connections.
pub fn drain_cut(n: usize) -> io::Result<()> {
    notify(&format!("{DRAIN_CUT}={n}"))
}

fn notify(var: &str) -> io::Result<()> {
    sd_notify::notify(&[
        NotifyState::Custom(var),
        NotifyState::MainPid(std::process::id()),
    ])
}

/// What a server said, as its supervisor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `READY=1`: its listeners are in the group.
    Ready,
    /// [`OFFER`]: bound, not listening, checked on this address.
    Offer(SocketAddr),
    /// [`DRAIN_CUT`]: its drain timeout cut this many connections.
    DrainCut(u64),
}

impl Message {
    /// Parses one datagram; `None` when it says nothing of the protocol.
    pub fn parse(text: &str) -> Option<Message> {
        let mut ready = None;
        for line in text.lines() {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            match key {
                "READY" if value == "1" => ready = Some(Message::Ready),
                OFFER => {
                    if let Ok(a) = value.trim().parse() {
                        return Some(Message::Offer(a));
                    }
                }
                DRAIN_CUT => {
                    if let Ok(n) = value.trim().parse() {
                        return Some(Message::DrainCut(n));
                    }
                }
                _ => {}
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_each_end_sends() {
        assert_eq!(
            Message::parse("READY=1\nMAINPID=42\n"),
            Some(Message::Ready)
        );
        assert_eq!(
            Message::parse(&format!("{OFFER}=127.0.0.1:4000\nMAINPID=42\n")),
            Some(Message::Offer("127.0.0.1:4000".parse().unwrap()))
        );
        assert_eq!(
            Message::parse(&format!("{DRAIN_CUT}=3\nMAINPID=42\n")),
            Some(Message::DrainCut(3))
        );
        assert_eq!(Message::parse(&format!("{OFFER}=nonsense\n")), None);
        assert_eq!(Message::parse("READY=0\nSTATUS=x\n"), None);
        assert_eq!(Message::parse("MAINPID=42\n"), None);
    }
}
