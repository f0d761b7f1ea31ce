//! One generation of the server, known by its PID: a child we started, or
//! an orphan a killed predecessor left serving, which we adopt through a
//! pidfd. Only our own unreaped children, and adopted processes through
//! their pidfd, are ever signalled, so a PID can never hit someone else.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::{Child, Command};

use crate::handoff::Handoff;
use crate::notify::GATE_ENV;

enum Proc {
    Child(Child),
    /// Not our child: its pidfd (readable once it has exited).
    Adopted(AsyncFd<OwnedFd>),
    /// A process played by a unit test (see `Script`).
    #[cfg(test)]
    Scripted(std::sync::Arc<std::sync::Mutex<Script>>),
}

/// A fake process for the supervisor's unit tests: what it owns, the
/// signals it got, and when it exits.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Script {
    pub sockets: BTreeSet<u32>,
    /// Its wait status once it has exited (`exit(3)` code).
    pub exit_code: Option<i32>,
    pub signals: Vec<i32>,
    /// It exits (code 0, its sockets closed) on this signal; SIGKILL always.
    pub exits_on: Option<i32>,
}

#[cfg(test)]
impl Generation {
    pub fn scripted(
        number: u64,
        pid: u32,
        script: std::sync::Arc<std::sync::Mutex<Script>>,
    ) -> Generation {
        Generation {
            number,
            pid,
            proc: Proc::Scripted(script),
            listeners: BTreeSet::new(),
            stopping_since: None,
        }
    }
}

/// How a generation ended.
#[derive(Debug)]
pub enum Exit {
    Status(ExitStatus),
    /// An adopted process: its parent (not us) collects the status.
    Gone,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Status(s) => write!(f, "{s}"),
            Exit::Gone => write!(f, "gone (adopted: status not ours to collect)"),
        }
    }
}

pub struct Generation {
    pub number: u64,
    pub pid: u32,
    proc: Proc,
    /// Inodes of its listening sockets on the served port (sock_diag ∩ its fds).
    pub listeners: BTreeSet<u32>,
    /// When it was told to stop (for the drain deadline).
    pub stopping_since: Option<Instant>,
}

impl Generation {
    /// Starts `argv` directly (no shell), with `NOTIFY_SOCKET` set, and
    /// either the join gate offered or (`handoff`) our listening sockets
    /// handed over through the `exec-listen` trampoline.
    pub fn spawn(
        number: u64,
        argv: &[String],
        notify: &Path,
        handoff: Option<&Handoff>,
    ) -> std::io::Result<Generation> {
        let mut cmd = match handoff {
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]).env(GATE_ENV, "1");
                c
            }
            Some(h) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("exec-listen").arg("--").args(argv);
                h.apply(&mut c);
                c
            }
        };
        let child = cmd
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok(Generation {
            number,
            pid,
            proc: Proc::Child(child),
            listeners: BTreeSet::new(),
            stopping_since: None,
        })
    }

    /// Adopts process `pid` (a server a killed reloader left running) by a
    /// pidfd, so later signals reach that process and no other.
    pub fn adopt(number: u64, pid: u32, listeners: BTreeSet<u32>) -> std::io::Result<Generation> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned to us by the kernel and is ours alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Generation {
            number,
            pid,
            // SAFETY: `owned` is a valid pidfd that the AsyncFd owns from now on.
            proc: Proc::Adopted(
                unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
            listeners,
            stopping_since: None,
        })
    }

    /// Sends `sig` if the process is still ours to signal.
    pub fn signal(&mut self, sig: i32) {
        match &mut self.proc {
            Proc::Child(child) => {
                if let Ok(None) = child.try_wait() {
                    if let Some(pid) = child.id() {
                        // SAFETY: kill(2) on our own unreaped child: the PID is still its.
                        unsafe { libc::kill(pid as libc::pid_t, sig) };
                    }
                }
            }
            #[cfg(test)]
            Proc::Scripted(s) => {
                let mut s = s.lock().unwrap();
                s.signals.push(sig);
                if s.exit_code.is_none() && (sig == libc::SIGKILL || s.exits_on == Some(sig)) {
                    s.exit_code = Some(0);
                    s.sockets.clear();
                }
            }
            Proc::Adopted(fd) => {
                // SAFETY: pidfd_send_signal on our pidfd; the kernel refuses
                // (ESRCH) once the process has exited, never hits another.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.get_ref().as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
        }
    }

    /// SIGTERM, remembering when (the drain deadline counts from here).
    pub fn stop(&mut self, sig: i32) {
        self.signal(sig);
        self.stopping_since.get_or_insert_with(Instant::now);
    }

    /// Whether it has exited (reaping it if it is our child).
    pub fn exited(&mut self) -> Option<Exit> {
        match &mut self.proc {
            Proc::Child(child) => child.try_wait().ok().flatten().map(Exit::Status),
            Proc::Adopted(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.get_ref().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd, no wait.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                (n > 0).then_some(Exit::Gone)
            }
            #[cfg(test)]
            Proc::Scripted(s) => s.lock().unwrap().exit_code.map(|c| {
                use std::os::unix::process::ExitStatusExt;
                Exit::Status(ExitStatus::from_raw(c << 8))
            }),
        }
    }

    /// Waits until it has exited.
    pub async fn wait(&mut self) -> Option<Exit> {
        match &mut self.proc {
            Proc::Child(child) => child.wait().await.ok().map(Exit::Status),
            Proc::Adopted(fd) => {
                // A pidfd becomes readable when its process exits.
                let _ = fd.readable().await.map(|mut g| g.retain_ready());
                Some(Exit::Gone)
            }
            #[cfg(test)]
            Proc::Scripted(_) => loop {
                if let Some(e) = self.exited() {
                    return Some(e);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            },
        }
    }

    /// The socket inodes among its open files (`/proc/PID/fd`). A process
    /// that has exited owns none.
    pub fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
        #[cfg(test)]
        if let Proc::Scripted(s) = &self.proc {
            return Ok(s.lock().unwrap().sockets.clone());
        }
        owned_sockets(self.pid)
    }

    /// Waits for it to exit; SIGKILL at `deadline`. Returns the status and
    /// whether it had to be killed.
    pub async fn wait_or_kill(&mut self, deadline: Duration) -> (Option<Exit>, bool) {
        match tokio::time::timeout(deadline, self.wait()).await {
            Ok(status) => (status, false),
            Err(_) => {
                self.signal(libc::SIGKILL);
                (self.wait().await, true)
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

/// The processes of our own user that own any of `listeners`, with the
/// listeners each owns: the generations a killed reloader left serving.
/// Processes we may not inspect (another user's) are skipped; they cannot
/// share a SO_REUSEPORT group with ours anyway (the kernel requires one uid).
pub fn owners_of(listeners: &BTreeSet<u32>) -> std::io::Result<Vec<(u32, BTreeSet<u32>)>> {
    // SAFETY: getuid/getpid have no preconditions.
    let (uid, me) = unsafe { (libc::getuid(), libc::getpid() as u32) };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || process_uid(pid) != Some(uid) {
            continue;
        }
        let Ok(own) = owned_sockets(pid) else {
            continue; // gone, or not ours to read
        };
        let hit: BTreeSet<u32> = own.intersection(listeners).copied().collect();
        if !hit.is_empty() {
            out.push((pid, hit));
        }
    }
    Ok(out)
}

/// The real uid of `pid`, from `/proc/PID/status`.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
