//! The receiving end of `NOTIFY_SOCKET`. Every datagram's sender is known
//! from the kernel (SCM_CREDENTIALS), never from what it claims, so a
//! message counts only for the generation whose PID sent it. What the
//! messages say is the gate protocol's (`gate::Message`): `READY=1`, a
//! cooperative server's offer to be checked before it joins, a drain cut.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use gate::Message;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// A bound notify socket; its path goes into each server's environment.
pub struct Notify {
    pub path: PathBuf,
    /// (sender PID from the kernel, message).
    notes: mpsc::UnboundedReceiver<(u32, Message)>,
    /// Received while a wait slept (`arrived`), not yet read.
    pending: VecDeque<(u32, Message)>,
}

impl Notify {
    /// The next message already received, if any.
    pub fn try_next(&mut self) -> Option<(u32, Message)> {
        self.pending
            .pop_front()
            .or_else(|| self.notes.try_recv().ok())
    }

    /// Returns once a message has arrived, keeping it for `try_next`: a
    /// wait that sleeps between looks at the kernel wakes on a server's
    /// word at once.
    pub async fn arrived(&mut self) {
        match self.notes.recv().await {
            Some(note) => self.pending.push_back(note),
            None => std::future::pending().await, // no sender left: nothing will arrive
        }
    }

    /// A receiver fed by `notes` (the supervisor's unit tests).
    #[cfg(test)]
    pub fn from_channel(path: PathBuf, notes: mpsc::UnboundedReceiver<(u32, Message)>) -> Notify {
        Notify {
            path,
            notes,
            pending: VecDeque::new(),
        }
    }

    /// Forgets every message received so far (stale for a new generation).
    pub fn clear(&mut self) {
        self.pending.clear();
        while self.notes.try_recv().is_ok() {}
    }

    /// Binds `path` (replacing a stale socket) and starts forwarding.
    /// Drain cuts go to `on_cut(pid, n)` at once rather than down the channel,
    /// whose readers look for one generation's word and drop the rest.
    pub fn bind(path: &Path, on_cut: impl Fn(u32, u64) + Send + 'static) -> io::Result<Notify> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our own open socket with a correctly sized int.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let (tx, notes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let got = sock
                    .async_io(Interest::READABLE, || recv_with_pid(&sock, &mut buf))
                    .await;
                let Ok((n, pid)) = got else { break };
                let Some(pid) = pid else { continue }; // no credentials: ignored
                match Message::parse(&String::from_utf8_lossy(&buf[..n])) {
                    Some(Message::DrainCut(n)) => on_cut(pid, n),
                    Some(note) if tx.send((pid, note.clone())).is_err() => break,
                    _ => {}
                }
            }
        });
        Ok(Notify {
            path: path.to_owned(),
            notes,
            pending: VecDeque::new(),
        })
    }
}

/// One `recvmsg` with the sender's credentials (SO_PASSCRED makes the kernel
/// attach them to every datagram).
fn recv_with_pid(sock: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Option<u32>)> {
    // Room for one cmsg carrying a `struct ucred`, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg on our own socket into buffers we own.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: walking the control buffer the kernel filled, with its own macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::ucred);
                pid = u32::try_from(cred.pid).ok().filter(|p| *p != 0);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PID comes from the kernel, not from MAINPID=.
    #[tokio::test]
    async fn the_sender_pid_comes_from_the_kernel() {
        let dir = tempfile::Builder::new()
            .prefix("notify-test-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let mut n = Notify::bind(&path, |_, _| {}).unwrap();
        let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
        s.send_to(b"READY=1\nMAINPID=1\n", &path).unwrap();
        n.arrived().await;
        let (pid, note) = n.try_next().unwrap();
        assert_eq!(note, Message::Ready);
        assert_eq!(pid, std::process::id());
    }
}
