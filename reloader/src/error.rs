//! The reloader's errors, typed. `Error` is a failure of the system under
//! us (the kernel, /proc, a spawn); `Refusal` is why a new generation was
//! not taken (the old one keeps serving). Decisions are taken on variants,
//! never on message text.

use std::io;
use std::time::Duration;

use crate::listeners::DiagError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} (the kernel needs inet_diag and tcp_diag: modprobe tcp_diag)")]
    Diag(#[from] DiagError),
    #[error(transparent)]
    Plug(#[from] qdisc::Error),
    #[error(transparent)]
    Steer(#[from] crate::steer::Error),
    #[error("reading /proc/{pid}/fd: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("reading /proc/net/softnet_stat: {0}")]
    Softnet(#[source] io::Error),
    #[error("reading net.ipv4.tcp_migrate_req: {0}")]
    Sysctl(#[source] io::Error),
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("finding the owners of listeners on our port: {0}")]
    Owners(#[source] io::Error),
    #[error("adopting PID {pid} (pidfd_open): {source}")]
    Adopt {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("listener inode {inode} on our port belongs to no process of ours; stop whatever else listens there")]
    Stray { inode: u32 },
    #[error("the first server never became healthy: {0}")]
    FirstUnhealthy(Box<Refusal>),
}

/// Why a new generation was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("new server PID {pid} exited ({status})")]
    Exited { pid: u32, status: String },
    #[error("new server PID {pid} did not listen on ports {ports:?} within {within:?}")]
    NoBind {
        pid: u32,
        ports: Vec<u16>,
        within: Duration,
    },
    #[error("new server PID {pid} not healthy within {within:?}: {why}")]
    Unhealthy {
        pid: u32,
        within: Duration,
        why: String,
    },
    #[error("new server PID {pid} passed its check but did not join within {within:?}")]
    NoJoin { pid: u32, within: Duration },
    #[error("new server PID {pid} listens on sockets of its own (inodes {own:?}) beside the handed-over ones: it ignores LISTEN_FDS, and clients queued on ours would never be accepted; run it with --strategy plug")]
    OwnListeners { pid: u32, own: Vec<u32> },
    #[error(transparent)]
    System(#[from] Error),
}

/// A reload that did not replace the serving generation.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reload #{number}: rolled back: {why}; PID {old} keeps serving (held {})", crate::logging::opt_ms(*held))]
    RolledBack {
        number: u64,
        pid: u32,
        why: Refusal,
        old: u32,
        held: Option<Duration>,
    },
    #[error("reload #{number}: {source}")]
    Failed {
        number: u64,
        #[source]
        source: Error,
    },
}
