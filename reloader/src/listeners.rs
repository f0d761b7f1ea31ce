//! Which TCP sockets listen on a port, asked of the kernel with sock_diag
//! (the netlink interface `ss` uses). Each listener is known by its inode,
//! so the supervisor can tell "the new server's listener joined the
//! SO_REUSEPORT group" and "the old server's listener left it" without
//! guessing or sleeping.

use std::collections::BTreeSet;

use qdisc::error::{Object, Result};
use qdisc::socket::Socket;
use qdisc::wire::{Message, NLM_F_DUMP, NLM_F_REQUEST};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// A request socket: a SYN was answered, the handshake's last ACK has not
/// arrived (SYN_RECV).
const TCP_NEW_SYN_RECV: u32 = 12;

/// `struct inet_diag_req_v2` (56 bytes) asking for TCP sockets of one
/// family in the given states.
fn request(family: u8, state: u32) -> Message {
    let mut m = Message::new(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP);
    let mut req = [0u8; 56];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << state).to_ne_bytes());
    m.raw(&req);
    m
}

/// Reads (local port, inode) from a `struct inet_diag_msg`.
fn parse(payload: &[u8]) -> Option<(u16, u32)> {
    // family, state, timer, retrans (4); id: sport, dport (big-endian), ... (48);
    // expires, rqueue, wqueue, uid, inode (u32 each).
    let sport = u16::from_be_bytes(payload.get(4..6)?.try_into().ok()?);
    let inode = u32::from_ne_bytes(payload.get(68..72)?.try_into().ok()?);
    Some((sport, inode))
}

/// A sock_diag socket, reused for every query.
pub struct Listeners {
    sock: Socket,
}

impl Listeners {
    pub fn open() -> Result<Listeners> {
        Ok(Listeners {
            sock: Socket::sock_diag()?,
        })
    }

    /// Inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
    pub fn on_port(&mut self, port: u16) -> Result<BTreeSet<u32>> {
        Ok(self
            .query(port, TCP_LISTEN)?
            .into_iter()
            .map(|(_, inode)| inode)
            .collect())
    }

    /// How many handshakes to `port` are half done (SYN answered, final ACK
    /// not yet in). A listener closed now would drop them, and their
    /// clients would be reset.
    pub fn half_open(&mut self, port: u16) -> Result<usize> {
        Ok(self.query(port, TCP_NEW_SYN_RECV)?.len())
    }

    /// Inodes of established connections to `port` (0 for one still in an
    /// accept queue: no process owns it yet).
    pub fn established(&mut self, port: u16) -> Result<Vec<u32>> {
        Ok(self
            .query(port, TCP_ESTABLISHED)?
            .into_iter()
            .map(|(_, inode)| inode)
            .collect())
    }

    fn query(&mut self, port: u16, state: u32) -> Result<Vec<(u16, u32)>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let replies = self.sock.dump(request(family, state), &|| {
                ("list TCP sockets (sock_diag)".into(), Object::Other)
            })?;
            out.extend(
                replies
                    .iter()
                    .filter_map(|p| parse(p))
                    .filter(|(sport, _)| *sport == port),
            );
        }
        Ok(out)
    }
}
