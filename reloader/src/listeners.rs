//! Which TCP sockets listen on a port, asked of the kernel with sock_diag
//! (the netlink interface `ss` uses), encoded and parsed with
//! netlink-packet-sock-diag. Each listener is known by its inode, so the
//! supervisor can tell "the new server's listener joined the SO_REUSEPORT
//! group" and "the old server's listener left it" without guessing or
//! sleeping. A failed query is an error, never an empty answer.

use std::collections::BTreeSet;
use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
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

    /// Inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
    pub fn on_port(&mut self, port: u16) -> Result<BTreeSet<u32>, DiagError> {
        Ok(self
            .query(port, TCP_LISTEN)?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    /// Each listener on `port` with the connections waiting in its accept
    /// queue (established, not yet accepted: closing the listener now
    /// would reset them).
    pub fn accept_queues(&mut self, port: u16) -> Result<Vec<(u32, u32)>, DiagError> {
        self.query(port, TCP_LISTEN)
    }

    /// How many handshakes to `port` are half done (SYN answered, final ACK
    /// not yet in). A listener closed now would drop them, and their
    /// clients would be reset.
    pub fn half_open(&mut self, port: u16) -> Result<usize, DiagError> {
        Ok(self.query(port, TCP_NEW_SYN_RECV)?.len())
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
        for (family, mut id) in [
            (AF_INET, SocketId::new_v4()),
            (AF_INET6, SocketId::new_v6()),
        ] {
            // The kernel skips other ports' sockets itself: a busy host's
            // thousands of connections are never copied to us.
            id.source_port = port.unwrap_or(0);
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            header.sequence_number = self.seq;
            let mut req = NetlinkMessage::new(
                header,
                SockDiagMessage::InetRequest(InetRequest {
                    family,
                    protocol: IPPROTO_TCP,
                    extensions: ExtensionFlags::empty(),
                    states: StateFlags::from_bits_retain(1 << state),
                    socket_id: id,
                })
                .into(),
            );
            req.finalize();
            let mut bytes = vec![0; req.buffer_len()];
            req.serialize(&mut bytes);
            self.sock.send(&bytes, 0).map_err(DiagError::Io)?;
            self.collect(port, out)?;
        }
        Ok(())
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
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..size])
                    .map_err(|e| DiagError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(DiagError::Kernel(e.to_io()))
                        }
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
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
