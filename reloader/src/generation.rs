//! One generation of the server: the child we started, known by its PID.
//! Only our own children are ever signalled, and only while we have not
//! reaped them (so the PID cannot belong to anyone else).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::notify::GATE_ENV;

pub struct Generation {
    pub number: u64,
    pub pid: u32,
    pub child: Child,
    /// Inodes of its listening sockets on the served port (sock_diag ∩ its fds).
    pub listeners: BTreeSet<u32>,
    /// When it was told to stop (for the drain deadline).
    pub stopping_since: Option<Instant>,
}

impl Generation {
    /// Starts `argv` directly (no shell), with `NOTIFY_SOCKET` set and the
    /// join gate offered.
    pub fn spawn(number: u64, argv: &[String], notify: &Path) -> std::io::Result<Generation> {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", notify)
            .env(GATE_ENV, "1")
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok(Generation {
            number,
            pid,
            child,
            listeners: BTreeSet::new(),
            stopping_since: None,
        })
    }

    /// Sends `sig` if the process is still ours (not yet reaped).
    pub fn signal(&mut self, sig: i32) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.id() {
                // SAFETY: kill(2) on our own unreaped child: the PID is still its.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
        }
    }

    /// SIGTERM, remembering when (the drain deadline counts from here).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        self.stopping_since.get_or_insert_with(Instant::now);
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The socket inodes among its open files (`/proc/PID/fd`). A process
    /// that has exited owns none.
    pub fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
        owned_sockets(self.pid)
    }

    /// Waits for it to exit; SIGKILL at `deadline`. Returns the status and
    /// whether it had to be killed.
    pub async fn wait_or_kill(&mut self, deadline: Duration) -> (Option<ExitStatus>, bool) {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => (status.ok(), false),
            Err(_) => {
                self.signal(libc::SIGKILL);
                (self.child.wait().await.ok(), true)
            }
        }
    }
}

/// Socket inodes open in process `pid`, read from `/proc/PID/fd` links
/// (`socket:[INODE]`). A vanished process has none; any other failure is an
/// error.
pub fn owned_sockets(pid: u32) -> std::io::Result<BTreeSet<u32>> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeSet::new();
    for entry in dir.flatten() {
        // An fd closed while we read is simply gone.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(n) = t
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            out.insert(n);
        }
    }
    Ok(out)
}
