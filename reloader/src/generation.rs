//! One generation of the server: a child we started, in a process group of
//! its own, or an orphan a killed predecessor left serving, which we adopt
//! through a pidfd.
//!
//! A child generation is its whole process group, not one PID: a launcher
//! that does not `exec` (`sh -c 'nginx ...; true'`, `npm start`), a prefork
//! master whose workers hold the sockets. Its listeners are those of any
//! member, `READY=1` may come from any member, the stop signal and SIGKILL go
//! to the group (as systemd's default `KillMode=control-group` sends to the
//! unit's processes), and it has exited only when no member is left. The
//! reloader is a child subreaper, so members whose parent exits stay ours
//! and are reaped here. A group is signalled only while it has members (a
//! process group ID is not reused while one exists); a member that leaves
//! the group (`setsid`, daemon mode) leaves the generation: run servers in
//! the foreground. Adopted processes are signalled through their pidfd
//! only, so a PID can never hit someone else.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::{Child, Command};

use crate::handoff::Handoff;

/// What a generation runs on: its process (or group), as the reloader
/// needs it. Two real ones, [`Group`] (a child we started, with its
/// process group) and [`Adopted`] (an orphan, by pidfd); the supervisor's
/// unit tests bring a scripted one.
pub trait Process: Send {
    /// Sends `sig` to the whole generation (`group`) or its leader alone.
    fn send(&mut self, sig: i32, group: bool);
    /// How it ended, once every process of it has exited.
    fn exited(&mut self) -> Option<Exit>;
    /// Waits until it has exited.
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = Option<Exit>> + Send + '_>>;
    /// Its live processes: the leader, then the other members.
    fn members(&self) -> Vec<u32>;
    /// Whether `pid` is one of its processes (one look, no walk).
    fn has(&self, pid: u32) -> bool;
    /// The socket inodes among its open files. One that has exited owns none.
    fn sockets(&self) -> std::io::Result<BTreeSet<u32>>;
    /// Which of `inodes` it holds: `sockets` ∩ `inodes`, looked up with
    /// less where it can (stopping once all are found).
    fn holding(&self, inodes: &BTreeSet<u32>) -> std::io::Result<BTreeSet<u32>> {
        Ok(self.sockets()?.intersection(inodes).copied().collect())
    }
}

/// A child we started, leading a process group of its own.
struct Group {
    pid: u32,
    child: Child,
    /// No process of its group was left at the last look: it is never
    /// looked for (nor signalled) again, as its ID is free for reuse.
    gone: bool,
}

/// Not our child: its pidfd (readable once it has exited).
struct Adopted {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
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
    proc: Box<dyn Process>,
    /// Inodes of its listening sockets on the served port (sock_diag ∩ its fds).
    pub listeners: BTreeSet<u32>,
    /// When it was told to stop (for the drain deadline).
    pub stopping_since: Option<Instant>,
}

impl Generation {
    /// A generation of `pid` running on `proc` (a unit test's scripted one).
    #[cfg(test)]
    pub fn on(number: u64, pid: u32, proc: Box<dyn Process>) -> Generation {
        Generation {
            number,
            pid,
            proc,
            listeners: BTreeSet::new(),
            stopping_since: None,
        }
    }

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
                c.args(&argv[1..]).env(gate::ENV, "1");
                c
            }
            Some(h) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("exec-listen").arg("--").args(argv);
                // A server that speaks the gate is checked on it before it
                // takes a connection from the shared sockets.
                c.env(gate::ENV, "1");
                h.apply(&mut c);
                c
            }
        };
        let child = cmd
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            // Its own process group, led by it: the generation (see above).
            .process_group(0)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        Ok(Generation {
            number,
            pid,
            proc: Box::new(Group {
                pid,
                child,
                gone: false,
            }),
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
            proc: Box::new(Adopted {
                pid,
                // SAFETY: `owned` is a valid pidfd that the AsyncFd owns from now on.
                fd: unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            }),
            listeners,
            stopping_since: None,
        })
    }

    /// Sends `sig` to the generation if it is still ours to signal (a
    /// child's whole process group while it has a member).
    pub fn signal(&mut self, sig: i32) {
        self.proc.send(sig, true);
    }

    /// SIGTERM, remembering when (the drain deadline counts from here).
    pub fn stop(&mut self, sig: i32) {
        self.signal(sig);
        self.stopping_since.get_or_insert_with(Instant::now);
    }

    /// Whether it has exited: every member of a child's group (reaping
    /// them; the leader's status is the one kept).
    pub fn exited(&mut self) -> Option<Exit> {
        self.proc.exited()
    }

    /// Waits until it has exited.
    pub async fn wait(&mut self) -> Option<Exit> {
        self.proc.wait().await
    }

    /// The socket inodes among its open files (`/proc/PID/fd` of the
    /// leader and, for a child, of every member of its group). A process
    /// that has exited owns none.
    pub fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
        self.proc.sockets()
    }

    /// Which of `inodes` it holds (as `sockets`, but its leader's fds are
    /// read only until all are found, and its other members only if the
    /// leader lacks some).
    pub fn holding(&self, inodes: &BTreeSet<u32>) -> std::io::Result<BTreeSet<u32>> {
        self.proc.holding(inodes)
    }

    /// Where its processes hold each of `inodes`: one (PID, fd) per socket
    /// (the first member found holding it), for `pidfd_getfd`.
    pub fn fds_of(&self, inodes: &BTreeSet<u32>) -> std::io::Result<Vec<(u32, i32)>> {
        let pids = self.proc.members();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for pid in pids {
            let fds = match crate::privs::inspecting(|| read_socket_fds(pid)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && pid != self.pid => {
                    continue; // see `sockets`
                }
                Err(e) => return Err(e),
            };
            for (fd, inode) in fds {
                if inodes.contains(&inode) && seen.insert(inode) {
                    out.push((pid, fd));
                }
            }
        }
        Ok(out)
    }

    /// Sends `sig` to the one member `pid` (the leader, or a live member of
    /// a child's group), not the whole generation.
    pub fn signal_member(&mut self, pid: u32, sig: i32) {
        if pid == self.pid {
            self.proc.send(sig, false);
        } else if self.proc.members().contains(&pid) {
            // SAFETY: kill(2) on a live member of our own process group,
            // just seen among our descendants.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }

    /// Whether `pid` is of this generation (its leader, or a member of a
    /// child's group): whose `READY=1` counts.
    pub fn has(&self, pid: u32) -> bool {
        self.proc.has(pid)
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

impl Process for Group {
    fn send(&mut self, sig: i32, group: bool) {
        let leader_alive = self.leader_exit().is_none();
        if group && (leader_alive || self.alive()) {
            // SAFETY: kill(2) on the process group we created: its ID
            // stays reserved while the leader is unreaped or any member
            // exists, both just seen.
            if unsafe { libc::kill(-(self.pid as libc::pid_t), sig) } != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!(
                    event = "signal_failed",
                    pid = self.pid,
                    "cannot signal every process of PID {}'s group ({e}): one runs as another user; run the reloader as root with --server-caps, which keeps CAP_KILL for this",
                    self.pid
                );
            }
        } else if leader_alive {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }

    fn exited(&mut self) -> Option<Exit> {
        let status = self.leader_exit()?;
        (!self.alive()).then_some(Exit::Status(status))
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = Option<Exit>> + Send + '_>> {
        Box::pin(async move {
            let status = self.child.wait().await.ok().map(Exit::Status);
            // Members that outlive the leader are polled: they are not our
            // children until their parent exits, so no wait(2) sees them all.
            while self.alive() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            status
        })
    }

    fn members(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(
            group_members(self.pid)
                .into_iter()
                .filter(|p| *p != self.pid),
        );
        pids
    }

    fn has(&self, pid: u32) -> bool {
        pid == self.pid || stat_state_group(pid).is_some_and(|(_, g)| g == self.pid)
    }

    fn holding(&self, inodes: &BTreeSet<u32>) -> std::io::Result<BTreeSet<u32>> {
        let found = crate::privs::inspecting(|| find_sockets(self.pid, inodes))?;
        if found.len() == inodes.len() {
            return Ok(found);
        }
        Ok(self.sockets()?.intersection(inodes).copied().collect())
    }

    fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
        let mut all = owned_sockets(self.pid)?;
        for pid in group_members(self.pid) {
            match owned_sockets(pid) {
                _ if pid == self.pid => {}
                Ok(s) => all.extend(s),
                // A member that switched to another user (nginx's workers)
                // hides its fds from us; its parent, which made the
                // sockets, still holds them.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }
}

impl Group {
    /// The leader's exit status once it has exited (and is reaped), asked
    /// of its pidfd's last readiness: tokio's wait, polled once without a
    /// waker, calls wait(2) only when the pidfd said it exited, where
    /// `try_wait` would call it on every look. The answer may trail the
    /// exit by one turn of the runtime; until it is reaped the leader's
    /// PID and group ID stay reserved, so a late "alive" signals no one else.
    fn leader_exit(&mut self) -> Option<ExitStatus> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(self.child.wait()).poll(&mut cx) {
            std::task::Poll::Ready(Ok(status)) => Some(status),
            _ => None,
        }
    }

    /// Once the leader is reaped: whether any process of its group is
    /// left, reaping the members that are our zombie children first (see
    /// `group_members`). Two system calls, no walk of `/proc`: kill(2) with
    /// signal 0 finds a group while any process is in it (a zombie whose
    /// parent lives is in it still, as in `group_members` its live parent
    /// is). The group's ID stays reserved while one is, so a live answer
    /// is about our group; the first dead one is kept (`gone`).
    fn alive(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let pgid = self.pid as libc::pid_t;
        // SAFETY: waitpid on our own children of group `pgid`, without
        // waiting; the leader is reaped already (by tokio), so this never
        // takes its status.
        while unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 sends nothing; it asks whether the group exists.
        let found = unsafe { libc::kill(-pgid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        self.gone = !found;
        found
    }
}

impl Process for Adopted {
    fn send(&mut self, sig: i32, _group: bool) {
        // SAFETY: pidfd_send_signal on our pidfd; the kernel refuses (ESRCH)
        // once the process has exited, never hits another.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    fn exited(&mut self) -> Option<Exit> {
        let mut p = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        (n > 0).then_some(Exit::Gone)
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = Option<Exit>> + Send + '_>> {
        Box::pin(async move {
            // A pidfd becomes readable when its process exits.
            let _ = self.fd.readable().await.map(|mut g| g.retain_ready());
            Some(Exit::Gone)
        })
    }

    fn members(&self) -> Vec<u32> {
        vec![self.pid]
    }

    fn has(&self, pid: u32) -> bool {
        pid == self.pid
    }

    fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
        owned_sockets(self.pid)
    }

    fn holding(&self, inodes: &BTreeSet<u32>) -> std::io::Result<BTreeSet<u32>> {
        crate::privs::inspecting(|| find_sockets(self.pid, inodes))
    }
}

/// The live members of process group `pgid` among our descendants (the
/// group's leader's descendants, and our own children: members whose parent
/// exited are reparented to us, the subreaper). Zombie members that are our
/// children are reaped on the way (never the leader: tokio reaps it).
/// Other generations' processes are not walked: among our own children,
/// only the group's are descended into.
fn group_members(pgid: u32) -> Vec<u32> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    let mut todo = vec![me];
    let mut members = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        for child in children(pid) {
            let Some((state, group)) = stat_state_group(child) else {
                continue; // gone meanwhile
            };
            if pid == me && group != pgid {
                continue; // another generation (or its leader's zombie)
            }
            if group == pgid {
                if state == 'Z' && pid == me && child != pgid {
                    // SAFETY: waitpid on our own zombie child, not the
                    // leader (whose status tokio collects).
                    unsafe {
                        libc::waitpid(child as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG)
                    };
                    continue;
                }
                if state != 'Z' {
                    members.push(child);
                }
            }
            todo.push(child);
        }
    }
    members
}

/// The children of `pid`, from `/proc/PID/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(list) = read_proc(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// State and process group of `pid`, from `/proc/PID/stat` (fields 3 and
/// 5; the command name before them may hold spaces and parentheses).
fn stat_state_group(pid: u32) -> Option<(char, u32)> {
    let stat = read_proc(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    Some((state, f.next()?.parse().ok()?))
}

/// A `/proc` file, read whole in one call where it fits (they report no
/// size, so `read_to_string` would start with a small probe read).
fn read_proc(path: impl AsRef<Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = String::with_capacity(1024);
    std::fs::File::open(path)?.read_to_string(&mut buf)?;
    Ok(buf)
}

/// Socket inodes open in process `pid`, read from `/proc/PID/fd` links
/// (`socket:[INODE]`). A vanished process has none; any other failure is an
/// error.
pub fn owned_sockets(pid: u32) -> std::io::Result<BTreeSet<u32>> {
    crate::privs::inspecting(|| read_sockets(pid))
}

fn read_sockets(pid: u32) -> std::io::Result<BTreeSet<u32>> {
    Ok(read_socket_fds(pid)?.into_iter().map(|(_, i)| i).collect())
}

/// Which of `want` process `pid` holds, reading its fds only until all are
/// found.
fn find_sockets(pid: u32, want: &BTreeSet<u32>) -> std::io::Result<BTreeSet<u32>> {
    let mut found = BTreeSet::new();
    if want.is_empty() {
        return Ok(found);
    }
    for (_, inode) in socket_fds(pid)? {
        if want.contains(&inode) && found.insert(inode) && found.len() == want.len() {
            break;
        }
    }
    Ok(found)
}

/// `pid`'s open sockets: (fd, inode).
fn read_socket_fds(pid: u32) -> std::io::Result<Vec<(i32, u32)>> {
    Ok(socket_fds(pid)?.collect())
}

/// `pid`'s open sockets, (fd, inode), read from `/proc/PID/fd` links
/// (`socket:[INODE]`) as they are asked for. A vanished process has none.
fn socket_fds(pid: u32) -> std::io::Result<impl Iterator<Item = (i32, u32)>> {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(dir.into_iter().flatten().flatten().filter_map(|entry| {
        // An fd closed while we read is simply gone.
        let target = std::fs::read_link(entry.path()).ok()?;
        let t = target.to_string_lossy();
        let inode = t
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((entry.file_name().to_str()?.parse().ok()?, inode))
    }))
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
