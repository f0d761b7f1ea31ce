//! Which TCP sockets listen on a port, asked of the kernel with sock_diag
//! (the netlink interface `ss` uses). Each listener is known by its inode,
//! so the supervisor can tell "the new server's listener joined the
//! SO_REUSEPORT group" and "the old server's listener left it" without
//! guessing or sleeping. A failed query is an error, never an empty answer.
//!
//! Every query is one dump of both families: the kernel walks its whole
//! listening (or established) hash table, bucket by bucket, for each dump,
//! and a large host's tables have tens of thousands of buckets, so asking
//! per family (`SOCK_DIAG_BY_FAMILY`, which names one) would walk them
//! twice. The request is inet_diag's own message (`TCPDIAG_GETSOCK`, see
//! [`Dump`]), which the kernel answers for IPv4 and IPv6 in one walk; its
//! replies are the same `inet_diag_msg` that netlink-packet-sock-diag
//! parses.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, Parseable, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{InetResponse, SocketId};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// A request socket: a SYN was answered, the handshake's last ACK has not
/// arrived. (The kernel reports these with inode 0: they belong to no file,
/// so they cannot be told apart by listener.)
const TCP_NEW_SYN_RECV: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a sock_diag socket: {0}")]
    Open(#[source] io::Error),
    #[error("sock_diag: {0}")]
    Io(#[source] io::Error),
    #[error("the kernel refused the sock_diag query: {0}")]
    Kernel(#[source] io::Error),
    #[error("sock_diag: unreadable reply: {0}")]
    Decode(String),
}

/// A sock_diag socket, reused for every query.
pub struct Listeners {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Listeners {
    pub fn open() -> Result<Listeners, DiagError> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Open)?;
        sock.bind_auto().map_err(DiagError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(DiagError::Open)?;
        Ok(Listeners {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The TCP sockets listening on any of `ports` (IPv4 and IPv6): inode
    /// and port.
    pub fn on_ports(&mut self, ports: &[u16]) -> Result<BTreeMap<u32, u16>, DiagError> {
        Ok(self
            .on_any(ports, TCP_LISTEN)?
            .into_iter()
            .map(|(port, inode, _)| (inode, port))
            .collect())
    }

    /// Each listener on any of `ports` with the connections waiting in its
    /// accept queue (established, not yet accepted: closing the listener
    /// now would reset them). One walk of the listening hash however many
    /// ports: the kernel filters one port, we filter several (a host has
    /// few listeners, so all of them cost less than a walk per port).
    pub fn accept_queues(&mut self, ports: &[u16]) -> Result<Vec<(u32, u32)>, DiagError> {
        Ok(self
            .on_any(ports, TCP_LISTEN)?
            .into_iter()
            .map(|(_, inode, queued)| (inode, queued))
            .collect())
    }

    /// How many handshakes to any of `ports` are half done (SYN answered,
    /// final ACK not yet in). A listener closed now would drop them, and
    /// their clients would be reset. One walk of the established hash
    /// however many ports (half-open requests are few: each listener's
    /// backlog bounds them).
    pub fn half_open(&mut self, ports: &[u16]) -> Result<usize, DiagError> {
        Ok(self.on_any(ports, TCP_NEW_SYN_RECV)?.len())
    }

    /// Our ports' TCP sockets in `state`: port, inode and receive queue.
    /// One dump: the kernel filters one port, we filter several.
    fn on_any(&mut self, ports: &[u16], state: u32) -> Result<Vec<(u16, u32, u32)>, DiagError> {
        let mut out = Vec::new();
        let filter = match ports {
            [one] => Some(*one),
            _ => None,
        };
        self.query_into(filter, state, &mut out)?;
        out.retain(|(port, _, _)| ports.contains(port));
        Ok(out)
    }

    /// Inodes of established connections to `port` (0 for one still in an
    /// accept queue: no process owns it yet).
    pub fn established(&mut self, port: u16) -> Result<Vec<u32>, DiagError> {
        Ok(self
            .query(port, TCP_ESTABLISHED)?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    /// Every listening TCP socket on any port (both families): port and
    /// inode, to tell which ports a server listens on.
    pub fn all_listening(&mut self) -> Result<Vec<(u16, u32)>, DiagError> {
        let mut out = Vec::new();
        self.query_into(None, TCP_LISTEN, &mut out)?;
        Ok(out
            .into_iter()
            .map(|(port, inode, _)| (port, inode))
            .collect())
    }

    /// Our port's TCP sockets in `state`, both families: inode and receive
    /// queue (for a listener, its accept queue's length).
    fn query(&mut self, port: u16, state: u32) -> Result<Vec<(u32, u32)>, DiagError> {
        let mut out = Vec::new();
        self.query_into(Some(port), state, &mut out)?;
        Ok(out.into_iter().map(|(_, inode, q)| (inode, q)).collect())
    }

    /// TCP sockets in `state` on `port` (or any), both families: port,
    /// inode and receive queue.
    fn query_into(
        &mut self,
        port: Option<u16>,
        state: u32,
        out: &mut Vec<(u16, u32, u32)>,
    ) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(Dump::Request {
                // The kernel skips other ports' sockets itself: a busy
                // host's thousands of connections are never copied to us.
                port: port.unwrap_or(0),
                states: 1 << state,
            }),
        );
        req.finalize();
        let mut bytes = vec![0; req.buffer_len()];
        req.serialize(&mut bytes);
        self.sock.send(&bytes, 0).map_err(DiagError::Io)?;
        self.collect(port, out)
    }

    /// Reads replies to the current request until DONE.
    fn collect(
        &mut self,
        port: Option<u16>,
        out: &mut Vec<(u16, u32, u32)>,
    ) -> Result<(), DiagError> {
        loop {
            let size = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(DiagError::Io)?;
            let mut offset = 0;
            while offset < size {
                let msg = NetlinkMessage::<Dump>::deserialize(&self.buf[offset..size])
                    .map_err(|e| DiagError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(DiagError::Kernel(e.to_io()))
                        }
                        NetlinkPayload::InnerMessage(Dump::Socket(r))
                            if port.is_none_or(|p| r.header.socket_id.source_port == p) =>
                        {
                            out.push((
                                r.header.socket_id.source_port,
                                r.header.inode,
                                r.header.recv_queue,
                            ));
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// `TCPDIAG_GETSOCK` in `<linux/inet_diag.h>`: inet_diag's message type,
/// which `sock_diag` still routes to it. Its dump covers every family
/// (`AF_UNSPEC`), where `SOCK_DIAG_BY_FAMILY` takes one.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, two address lengths and the extensions
/// (one byte each), the socket id, then the states and an unused table mask.
const REQ_LEN: usize = 4 + SOCKET_ID_LEN + 4 + 4;
/// `struct inet_diag_sockid`.
const SOCKET_ID_LEN: usize = 48;

/// One message of an inet_diag dump: our request, or a socket in reply.
#[derive(Debug)]
enum Dump {
    /// TCP sockets of any family on `port` (0: any) in one of `states`
    /// (a bit per TCP state).
    Request {
        port: u16,
        states: u32,
    },
    Socket(Box<InetResponse>),
}

impl NetlinkSerializable for Dump {
    fn message_type(&self) -> u16 {
        TCPDIAG_GETSOCK
    }

    fn buffer_len(&self) -> usize {
        match self {
            Dump::Request { .. } => REQ_LEN,
            Dump::Socket(r) => r.buffer_len(),
        }
    }

    fn serialize(&self, buf: &mut [u8]) {
        match self {
            Dump::Request { port, states } => {
                // The family byte is not read for a dump (the kernel sets
                // AF_UNSPEC); no address lengths; no extensions.
                buf[..4].fill(0);
                let mut id = SocketId::new_v4();
                id.source_port = *port;
                id.emit(&mut buf[4..4 + SOCKET_ID_LEN]);
                let rest = &mut buf[4 + SOCKET_ID_LEN..REQ_LEN];
                rest[..4].copy_from_slice(&states.to_ne_bytes());
                rest[4..].fill(0);
            }
            Dump::Socket(r) => r.emit(buf),
        }
    }
}

impl NetlinkDeserializable for Dump {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Dump, DecodeError> {
        match header.message_type {
            TCPDIAG_GETSOCK => Ok(Dump::Socket(Box::new(InetResponse::parse(payload)?))),
            other => Err(DecodeError::from(format!(
                "unexpected message type {other} in an inet_diag dump"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(port: u16, states: u32) -> Vec<u8> {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(Dump::Request { port, states }),
        );
        m.finalize();
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b
    }

    #[test]
    fn a_request_is_inet_diags_own_message_with_the_port_and_states() {
        let b = request(7000, 1 << TCP_LISTEN);
        // nlmsghdr: length, type; then struct inet_diag_req (60 bytes).
        assert_eq!(b.len(), 16 + 60);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 76);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 18);
        let req = &b[16..];
        assert_eq!(&req[..4], &[0, 0, 0, 0]);
        // inet_diag_sockid: source port first, network order.
        assert_eq!(&req[4..6], &7000u16.to_be_bytes());
        assert!(req[6..52].iter().all(|x| *x == 0));
        assert_eq!(
            u32::from_ne_bytes(req[52..56].try_into().unwrap()),
            1 << TCP_LISTEN
        );
        assert_eq!(&req[56..60], &[0, 0, 0, 0]);
    }

    #[test]
    fn a_reply_of_another_type_is_a_decode_error() {
        let mut h = NetlinkHeader::default();
        h.message_type = 20;
        assert!(Dump::deserialize(&h, &[0; 72]).is_err());
    }
}
