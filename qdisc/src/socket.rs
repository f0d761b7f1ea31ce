//! The one place that owns netlink sockets: sequence numbers, sending,
//! waiting for the ACK or error of our request, collecting dumps, and
//! sending nf_tables batches. Synchronous, one round trip per request.

use std::fmt;
use std::io;

use netlink_sys::{protocols, Socket as NlSocket, SocketAddr};

use crate::error::{Error, Object, Result};
use crate::wire::{self, Message, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK};

/// Receive buffer size: a dump part is at most a page or 32 KiB.
const RECV_BUF: usize = 64 * 1024;

pub struct Socket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// Names an operation for an error message, lazily (the hot path pays nothing).
type Describe<'a> = &'a dyn Fn() -> (String, Object);

/// A request that says what it is: its message, the operation (as
/// `format_args!`, formatted only for an error) and the object it acts on,
/// which an error names.
pub struct Request<'a> {
    msg: Message,
    object: Object,
    op: Option<fmt::Arguments<'a>>,
}

impl<'a> Request<'a> {
    pub fn new(msg: Message, object: Object, op: fmt::Arguments<'a>) -> Request<'a> {
        Request {
            msg,
            object,
            op: Some(op),
        }
    }

    /// A request whose failure nobody reads (an undo, a probe's cleanup).
    pub fn unnamed(msg: Message) -> Request<'a> {
        Request {
            msg,
            object: Object::Other,
            op: None,
        }
    }

    /// The message, and what an error would say of it.
    fn split(self) -> (Message, impl Fn() -> (String, Object) + 'a) {
        let Request { msg, object, op } = self;
        (msg, move || {
            (op.map(|a| a.to_string()).unwrap_or_default(), object)
        })
    }
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Some(op) => f.write_fmt(op),
            None => Ok(()),
        }
    }
}

impl Socket {
    /// A NETLINK_ROUTE socket (traffic control).
    pub fn route() -> Result<Socket> {
        Socket::open(protocols::NETLINK_ROUTE, Object::Other)
    }

    /// A NETLINK_NETFILTER socket (nf_tables).
    pub fn netfilter() -> Result<Socket> {
        Socket::open(protocols::NETLINK_NETFILTER, Object::NfTables)
    }

    fn open(protocol: isize, object: Object) -> Result<Socket> {
        let fail = |source: io::Error| match source.raw_os_error() {
            Some(errno @ (libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)) => Error::Kernel {
                op: "open a netlink socket".into(),
                object,
                errno,
                text: None,
            },
            _ => Error::Io {
                op: "open a netlink socket".into(),
                source,
            },
        };
        let mut sock = NlSocket::new(protocol).map_err(fail)?;
        sock.bind_auto().map_err(fail)?;
        // The kernel's own error text, and errors that echo only our header.
        // Both are best effort: kernels before 4.12 lack them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Socket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, bytes: &[u8], describe: Describe<'_>) -> Result<()> {
        self.sock
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| Error::Io {
                op: describe().0,
                source,
            })?;
        Ok(())
    }

    fn recv(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.buf.clear();
        self.sock.recv(&mut self.buf, flags).map(|_| ())
    }

    /// Sends `msg` with an ACK requested and waits for that ACK. Replies that
    /// are not ours (another sequence number) are ignored.
    pub fn request(&mut self, req: Request<'_>) -> Result<()> {
        self.exchange(req, |_| {})
    }

    /// Like [`request`](Self::request), also returning the payloads of the
    /// replies that came before the ACK (for NLM_F_ECHO and GET requests).
    pub fn request_replies(&mut self, req: Request<'_>) -> Result<Vec<Vec<u8>>> {
        let mut replies = Vec::new();
        self.exchange(req, |p| replies.push(p.to_vec()))?;
        Ok(replies)
    }

    fn exchange(&mut self, req: Request<'_>, on_reply: impl FnMut(&[u8])) -> Result<()> {
        let (mut msg, describe) = req.split();
        msg.set_flags(msg.flags() | NLM_F_ACK);
        self.converse(msg, &describe, on_reply)
    }

    /// Sends a dump request and collects every reply payload until DONE.
    pub fn dump(&mut self, req: Request<'_>) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let (msg, describe) = req.split();
        self.converse(msg, &describe, |p| out.push(p.to_vec()))?;
        Ok(out)
    }

    /// Sends `msg` and hands each reply of ours to `on_reply` until the
    /// kernel ends the conversation: an ACK or error, or a dump's DONE.
    /// Replies to other sequence numbers are ignored.
    fn converse(
        &mut self,
        mut msg: Message,
        describe: Describe<'_>,
        mut on_reply: impl FnMut(&[u8]),
    ) -> Result<()> {
        let seq = self.next_seq();
        msg.set_seq(seq);
        self.send(msg.bytes(), describe)?;
        loop {
            self.recv(0).map_err(|source| Error::Io {
                op: describe().0,
                source,
            })?;
            for m in wire::messages(&self.buf) {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let e = wire::parse_error(&m)
                            .ok_or_else(|| Error::Protocol("short error message".into()))?;
                        return kernel_result(e, describe);
                    }
                    _ => on_reply(m.payload),
                }
            }
        }
    }

    /// Sends an nf_tables batch as one datagram, then a fenced request whose
    /// ACK proves the batch was processed. An error names the message that
    /// failed (the whole batch is rolled back by the kernel).
    pub fn batch(
        &mut self,
        msgs: Vec<Message>,
        fence: Message,
        describe: &dyn Fn(usize) -> (String, Object),
    ) -> Result<()> {
        let first = self.seq.wrapping_add(1);
        let mut bytes = Vec::new();
        for mut m in msgs {
            let seq = self.next_seq();
            m.set_seq(seq);
            bytes.extend_from_slice(m.bytes());
        }
        let last = self.seq;
        self.send(&bytes, &|| describe(0))?;
        // Errors for the batch arrive before the fence's answer: the kernel
        // handles our messages in order.
        let fence_seq = self.next_seq();
        let mut fence = fence;
        fence.set_seq(fence_seq);
        self.send(fence.bytes(), &|| describe(0))?;
        let mut failure = None;
        loop {
            self.recv(0).map_err(|source| Error::Io {
                op: describe(0).0,
                source,
            })?;
            for m in wire::messages(&self.buf) {
                if m.msg_type != NLMSG_ERROR {
                    continue;
                }
                let Some(e) = wire::parse_error(&m) else {
                    continue;
                };
                if m.seq == fence_seq {
                    return match failure {
                        Some(err) => Err(err),
                        None => Ok(()),
                    };
                }
                if e.errno != 0 && failure.is_none() && (first..=last).contains(&m.seq) {
                    let index = m.seq.wrapping_sub(first) as usize;
                    failure = Some(kernel_result(e, &|| describe(index)).unwrap_err());
                }
            }
        }
    }
}

fn kernel_result(e: wire::ErrorMsg, describe: Describe<'_>) -> Result<()> {
    if e.errno == 0 {
        return Ok(());
    }
    let (op, object) = describe();
    Err(Error::Kernel {
        op,
        object,
        errno: e.errno,
        text: e.text,
    })
}
