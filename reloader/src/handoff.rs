//! `--strategy handoff`: the reloader opens the listening sockets once and
//! gives every generation the same ones, systemd's way (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`; fds 3 onward). The kernel's set of
//! listeners never changes, so nothing is ever reset and nothing needs
//! holding: an old generation just stops accepting and drains, and the
//! sockets' queues stay open in the new one. It needs no CAP_NET_ADMIN
//! (only CAP_NET_BIND_SERVICE for a port below 1024).
//!
//! libsystemd's `sd_listen_fds()` ignores the sockets unless `LISTEN_PID`
//! is the receiving process's own PID, which the parent cannot know before
//! fork. So the child is this binary first (`reloader exec-listen -- CMD`):
//! it sets `LISTEN_PID` to its own PID and execs CMD, which keeps that PID.
//!
//! Socket activation: when the reloader itself is started with sockets
//! (`LISTEN_FDS` for its own PID: a systemd `.socket` unit), those are the
//! sockets handed over, and the reloader binds nothing and needs no
//! capability at all, whatever the port.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;

use socket2::{Domain, Protocol, Socket, Type};

/// The first fd of the handed-over sockets (0-2 are stdio).
const LISTEN_FDS_START: RawFd = 3;
/// Our own copies live at or above this fd, clear of 3.. in the child.
/// They are inheritable (no FD_CLOEXEC): every child of ours is a
/// generation started through `exec-listen`, which moves them to 3.. and
/// closes these, so the spawn needs no code between fork and exec (and
/// the C library can use posix_spawn, no fork of our address space).
const HIGH_FD: RawFd = 100;

/// Where `exec-listen` finds the sockets to move to 3..: their fds, in order.
const FDS_ENV: &str = "RELOADER_HANDOFF_FDS";

pub struct Handoff {
    pub addrs: Vec<SocketAddr>,
    fds: Vec<OwnedFd>,
}

impl Handoff {
    /// Binds and listens on every address (SO_REUSEADDR; SO_REUSEPORT too,
    /// so a reloader that replaces a killed one can bind beside the
    /// sockets its orphans still hold; IPv6 v6-only).
    pub fn open(addrs: &[SocketAddr], backlog: i32) -> io::Result<Handoff> {
        let mut fds = Vec::new();
        for &addr in addrs {
            let err = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .map_err(err)?;
            if addr.is_ipv6() {
                s.set_only_v6(true).map_err(err)?;
            }
            s.set_reuse_address(true).map_err(err)?;
            s.set_reuse_port(true).map_err(err)?;
            s.bind(&addr.into()).map_err(err)?;
            s.listen(backlog).map_err(err)?;
            // SAFETY: F_DUPFD on our own open socket returns a new fd or -1.
            let high = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD, HIGH_FD) };
            if high < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            // SAFETY: `high` was just returned to us and is owned by nothing else.
            fds.push(unsafe { OwnedFd::from_raw_fd(high) });
        }
        Ok(Handoff {
            addrs: addrs.to_vec(),
            fds,
        })
    }

    /// The listening sockets our own supervisor passed us (`LISTEN_FDS`
    /// and `LISTEN_PID` = our PID), or `None` when it passed none. Each must
    /// be a listening TCP socket; anything else is an error naming the fd.
    pub fn inherited() -> io::Result<Option<Handoff>> {
        if !activated() {
            return Ok(None);
        }
        let n: RawFd = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..64).contains(n))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "LISTEN_FDS is not a number of sockets between 1 and 63",
                )
            })?;
        let (mut addrs, mut fds) = (Vec::new(), Vec::new());
        for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
            let bad = |why: String| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("LISTEN_FDS: fd {fd} {why}"),
                )
            };
            // SAFETY: F_DUPFD on an fd the supervisor passed us; -1 (EBADF)
            // if it is not open.
            let high = unsafe { libc::fcntl(fd, libc::F_DUPFD, HIGH_FD) };
            if high < 0 {
                return Err(bad(format!("is not open: {}", io::Error::last_os_error())));
            }
            // SAFETY: `high` is a new fd that nothing else owns.
            let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(high) });
            // SAFETY: fd was passed to us and is now duplicated above; the
            // low copy would otherwise leak into every generation.
            unsafe { libc::close(fd) };
            let listening = socket
                .is_listener()
                .map_err(|e| bad(format!("is not a socket: {e}")))?;
            let addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .filter(|_| socket.r#type().ok() == Some(Type::STREAM));
            match (listening, addr) {
                (true, Some(addr)) => {
                    addrs.push(addr);
                    fds.push(OwnedFd::from(socket));
                }
                _ => return Err(bad("is not a listening TCP socket".into())),
            }
        }
        Ok(Some(Handoff { addrs, fds }))
    }

    /// `LISTEN_FDNAMES`: one name per socket, no colons (`tcp4-7000`).
    /// The inodes of the handed-over sockets (a server's listener that is
    /// not one of them is a socket of its own).
    pub fn inodes(&self) -> io::Result<std::collections::BTreeSet<u32>> {
        self.fds
            .iter()
            .map(|fd| {
                // SAFETY: fstat on an fd we own, into a zeroed struct.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                match unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } {
                    0 => Ok(st.st_ino as u32),
                    _ => Err(io::Error::last_os_error()),
                }
            })
            .collect()
    }

    pub fn names(&self) -> String {
        self.addrs
            .iter()
            .map(|a| format!("tcp{}-{}", if a.is_ipv4() { 4 } else { 6 }, a.port()))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Makes `cmd` (the trampoline) start with our sockets at fds 3.. and
    /// the variables set (`LISTEN_PID` is the trampoline's to set).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let raw: Vec<String> = self.fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
        cmd.env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", self.names())
            .env(FDS_ENV, raw.join(","))
            .env_remove("LISTEN_PID");
    }
}

/// Whether our own supervisor passed us sockets (`LISTEN_PID` is our PID).
pub fn activated() -> bool {
    std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var_os("LISTEN_FDS").is_some()
}

/// `reloader exec-listen -- CMD...`: sets `LISTEN_PID` to our own PID and
/// becomes CMD (same PID). Returns only on failure.
pub fn exec_listen(argv: &[String]) -> io::Error {
    let Some((prog, args)) = argv.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no command");
    };
    let fds: Vec<RawFd> = match std::env::var(FDS_ENV) {
        Ok(list) => match list.split(',').map(str::parse).collect() {
            Ok(fds) => fds,
            Err(_) => {
                return io::Error::new(io::ErrorKind::InvalidInput, format!("{FDS_ENV}={list}"))
            }
        },
        Err(_) => Vec::new(),
    };
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: dup2 of an fd we inherited onto 3.., then the inherited
        // copy closed: the command sees its sockets at 3.. only. dup2's
        // copy has no FD_CLOEXEC, so it survives the exec.
        unsafe {
            if libc::dup2(*fd, LISTEN_FDS_START + i as RawFd) < 0 {
                return io::Error::last_os_error();
            }
            libc::close(*fd);
        }
    }
    std::process::Command::new(prog)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .env_remove(FDS_ENV)
        .exec()
}
