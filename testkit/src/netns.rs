//! Private network namespaces for tests.
//!
//! `unshare(CLONE_NEWNET)` applies to the calling thread only, so each test
//! body runs on a thread of its own; processes and threads it starts inherit
//! the namespace. The new namespace has only `lo`, down: we bring it up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Runs `f` on a new thread inside a new network namespace with `lo` up.
/// `Err` means the namespace could not be made (the caller should skip).
pub fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let handle = std::thread::spawn(move || -> Result<T, String> {
        enter().map_err(|e| format!("needs a private network namespace (CAP_SYS_ADMIN): {e}"))?;
        let ns = namespace().map_err(|e| format!("reading our network namespace: {e}"))?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // A failed test leaves what it started (a server a killed reloader
        // orphaned, say): the namespace is ours, so is everything in it.
        end_processes_in(&ns);
        out.map_err(|panic| std::panic::resume_unwind(panic))
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The calling thread's network namespace, as `/proc` names it.
fn namespace() -> io::Result<std::path::PathBuf> {
    std::fs::read_link("/proc/thread-self/ns/net")
}

/// SIGKILLs every process (other than ours) in network namespace `ns`.
fn end_processes_in(ns: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Held by a pidfd, then checked: a PID reused meanwhile is not
        // signalled. A process gone meanwhile has no pidfd: nothing to end.
        // SAFETY: pidfd_open takes a PID and flags; the result is a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a new fd that nothing else owns.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        if std::fs::read_link(entry.path().join("ns/net")).is_ok_and(|l| l == ns) {
            // SAFETY: pidfd_send_signal takes a pidfd, a signal, no info, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// Moves the calling thread into a new network namespace and brings `lo` up.
pub fn enter() -> io::Result<()> {
    // SAFETY: unshare takes flags only; it changes this thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    set_up("lo")
}

/// Writes a sysctl of the current network namespace, for example
/// `set_sysctl("net/ipv4/tcp_migrate_req", "1")`. /proc/sys/net resolves to
/// the namespace of the thread that opens it.
pub fn set_sysctl(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{name}"), value)
}

/// One `TcpExt` counter of the calling thread's network namespace (the
/// names `nstat` shows, without the prefix: `TCPMigrateReqSuccess`). The
/// file is two lines per group, names then values; too small a format to
/// take a procfs crate for. A counter this kernel does not have is an error.
pub fn tcp_ext_counter(name: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
            (names.split_once(": "), values.split_once(": "))
        else {
            continue;
        };
        if let Some((_, v)) = names
            .split(' ')
            .zip(values.split(' '))
            .find(|(n, _)| *n == name)
        {
            return v.parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TcpExt {name} = {v:?}: {e}"),
                )
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("this kernel has no TcpExt counter {name} in /proc/net/netstat"),
    ))
}

fn set_up(ifname: &str) -> io::Result<()> {
    // SAFETY: a plain socket() call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `ifr` is a valid ifreq for both ioctls, which read and write
    // only the name and the flags union member.
    let res = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: fd came from socket() above and is not used after this.
    unsafe { libc::close(fd) };
    if res < 0 {
        Err(err)
    } else {
        Ok(())
    }
}
