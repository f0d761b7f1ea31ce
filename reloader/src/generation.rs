//! One generation of the server: the child we started, known by its PID.
//! Only our own children are ever signalled, and only while we have not
//! reaped them (so the PID cannot belong to anyone else).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Generation {
    pub pid: u32,
    pub child: Child,
    /// Inodes of its listening sockets, as sock_diag reported them.
    pub listeners: BTreeSet<u32>,
}

impl Generation {
    /// Starts `argv` directly (no shell), with `NOTIFY_SOCKET` set.
    pub fn spawn(argv: &[String], notify: &Path) -> std::io::Result<Generation> {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok(Generation {
            pid,
            child,
            listeners: BTreeSet::new(),
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

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
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
