//! No hold outlives its bound, even if its holder is SIGKILLed: a small
//! process forked before anything else (while the holder has one thread)
//! that keeps only CAP_NET_ADMIN and does nothing but wait. The holder
//! tells it over a pipe when a hold begins and ends; the watchdog releases
//! the plugs itself when a hold outlasts its bound, or when the pipe
//! closes mid-hold (the kernel closes it when the holder dies, however it
//! dies). It also puts back `net.ipv4.tcp_migrate_req` if the holder
//! changed it and did not restore it.
//!
//! It ignores SIGINT, SIGTERM and SIGHUP (a terminal's or a unit's stop
//! goes to the holder, who releases on its own); it exits when the pipe
//! closes. A user who SIGKILLs both processes of theirs can still leave
//! a plug of theirs buffering: the policy grants only their own ports, and
//! the next `reloader run` on that path releases it at start.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::control::Plug;

const HOLD: u8 = b'H';
const RELEASED: u8 = b'R';
const MIGRATE_WAS_0: u8 = b'0';
const MIGRATE_WAS_1: u8 = b'1';
const MIGRATE_RESTORED: u8 = b'M';

/// The holder's end.
pub struct Watchdog {
    pipe: Option<std::fs::File>,
    pid: u32,
}

impl Watchdog {
    /// Forks the watchdog for the plugs on `devs` (opened only when it has
    /// to release them), each hold bounded by `bound`. Call it while the
    /// process has a single thread.
    pub fn spawn(devs: Vec<String>, bound: Duration) -> std::io::Result<Watchdog> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork with one thread; the child runs only our own code
        // and exits, never returning into the caller.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(w);
                watch(std::fs::File::from(r), &devs, bound);
                // SAFETY: _exit ends the child without running the parent's
                // atexit handlers or destructors.
                unsafe { libc::_exit(0) }
            }
            pid => {
                drop(r);
                Ok(Watchdog {
                    pipe: Some(std::fs::File::from(w)),
                    pid: pid as u32,
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn say(&mut self, b: u8) {
        // A watchdog that died cannot be helped; the holder goes on.
        if let Some(p) = &mut self.pipe {
            let _ = p.write_all(&[b]);
        }
    }

    /// A hold begins now.
    pub fn holding(&mut self) {
        self.say(HOLD);
    }

    /// The hold ended.
    pub fn released(&mut self) {
        self.say(RELEASED);
    }

    /// `tcp_migrate_req` was `was` before we set it: put it back if we die.
    pub fn migrate_changed(&mut self, was: bool) {
        self.say(if was { MIGRATE_WAS_1 } else { MIGRATE_WAS_0 });
    }

    /// We put `tcp_migrate_req` back ourselves.
    pub fn migrate_restored(&mut self) {
        self.say(MIGRATE_RESTORED);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the pipe ends the watchdog; reap it so no zombie stays.
        drop(self.pipe.take());
        // SAFETY: waitpid on our own child.
        unsafe {
            libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "watchdog: {line}");
}

/// The child: keeps CAP_NET_ADMIN only, then waits.
fn watch(mut pipe: std::fs::File, devs: &[String], bound: Duration) {
    // SAFETY: setting dispositions to SIG_IGN in our own process.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::prctl(
            libc::PR_SET_NAME,
            c"reloader-watch".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    keep_only_net_admin();
    let mut since: Option<Instant> = None;
    let mut migrate_was: Option<bool> = None;
    loop {
        let timeout = since.map(|t| (t + bound).saturating_duration_since(Instant::now()));
        match wait_byte(&mut pipe, timeout) {
            Some(Some(HOLD)) => since = since.or(Some(Instant::now())),
            Some(Some(RELEASED)) => since = None,
            Some(Some(MIGRATE_WAS_0)) => migrate_was = Some(false),
            Some(Some(MIGRATE_WAS_1)) => migrate_was = Some(true),
            Some(Some(MIGRATE_RESTORED)) => migrate_was = None,
            Some(Some(_)) => {}
            Some(None) => {
                // The holder is gone.
                if let Some(t) = since {
                    release_all(devs);
                    say(&format!(
                        "the holder died {:?} into a hold: released the plug(s) on {}",
                        t.elapsed(),
                        devs.join(", ")
                    ));
                }
                if let Some(was) = migrate_was {
                    restore_migrate(was);
                }
                return;
            }
            None => {
                // The hold outlasted its bound.
                release_all(devs);
                say(&format!(
                    "a hold outlasted its bound ({bound:?}): released the plug(s) on {}",
                    devs.join(", ")
                ));
                since = None;
            }
        }
    }
}

/// `Some(Some(b))`: a byte; `Some(None)`: the pipe closed; `None`: timed out.
fn wait_byte(pipe: &mut std::fs::File, timeout: Option<Duration>) -> Option<Option<u8>> {
    let mut pfd = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: one pollfd we own, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 0 {
        return None;
    }
    let mut b = [0u8];
    match pipe.read(&mut b) {
        Ok(1) => Some(Some(b[0])),
        Ok(_) => Some(None),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Some(Some(0)),
        Err(_) => Some(None),
    }
}

fn release_all(devs: &[String]) {
    for d in devs {
        match Plug::open(d).and_then(|mut p| p.release().map(|_| ())) {
            Ok(()) => {}
            Err(e) => say(&format!("cannot release the plug on {d}: {e}")),
        }
    }
}

fn restore_migrate(was: bool) {
    let v = if was { "1\n" } else { "0\n" };
    match std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", v) {
        Ok(()) => say(&format!("restored net.ipv4.tcp_migrate_req={}", v.trim())),
        Err(e) => say(&format!("cannot restore net.ipv4.tcp_migrate_req: {e}")),
    }
}

/// Every capability but CAP_NET_ADMIN goes, from every set.
fn keep_only_net_admin() {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet =
        match caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_ADMIN) {
            Ok(true) => [Capability::CAP_NET_ADMIN].into_iter().collect(),
            _ => caps::CapsHashSet::new(),
        };
    let _ = caps::clear(None, CapSet::Ambient);
    let _ = caps::clear(None, CapSet::Inheritable);
    let _ = caps::set(None, CapSet::Effective, &keep);
    let _ = caps::set(None, CapSet::Permitted, &keep);
}
