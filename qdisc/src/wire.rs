//! What no crate offers for our synchronous socket: a request as bytes
//! whose sequence number the socket sets, reading a datagram back into
//! messages, and the kernel's extended-ack error text. Every request is
//! built with netlink-packet-route / -netfilter / -core types and
//! serialized here ([`Message::encode`]). No file descriptors here.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable};

/// `struct nlmsghdr` is 16 bytes: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;

pub const NLM_F_ACK: u16 = netlink_packet_core::NLM_F_ACK;
/// In an error message: extended-ack attributes follow the echoed header.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// `NLMSGERR_ATTR_MSG`: the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One serialized request; the socket sets its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    /// Serializes a crate-built message: the netlink header gets `flags`,
    /// sequence number 0 and port id 0 (the kernel).
    pub fn encode<I: NetlinkSerializable>(flags: u16, inner: I) -> Message {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        Message { buf }
    }

    /// An rtnetlink request (traffic control).
    pub fn route(flags: u16, msg: netlink_packet_route::RouteNetlinkMessage) -> Message {
        Message::encode(flags, msg)
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    pub fn set_flags(&mut self, flags: u16) {
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    }

    pub fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    /// The finished bytes, length field included.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A message read back from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages; stops at the first malformed one.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Received<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m = Received {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(m)
    })
}

/// Iterates over attributes: (type without flag bits, payload).
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

/// An `NLMSG_ERROR` message: errno 0 is an ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMsg {
    /// Positive errno (the kernel sends it negated); 0 for an ACK.
    pub errno: i32,
    /// The extended-ack text, when the kernel gave one.
    pub text: Option<String>,
}

/// Parses the payload of an `NLMSG_ERROR` sent to a socket with
/// NETLINK_CAP_ACK (only the request's header is echoed back).
pub fn parse_error(m: &Received<'_>) -> Option<ErrorMsg> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let errno = -i32::from_ne_bytes(p[0..4].try_into().unwrap());
    let echoed_len = u32::from_ne_bytes(p[4..8].try_into().unwrap()) as usize;
    // With CAP_ACK the echo is the header alone; without, the whole request.
    let echoed = if m.flags & 0x100 != 0 {
        NLMSG_HDRLEN
    } else {
        echoed_len.max(NLMSG_HDRLEN)
    };
    let text = if m.flags & NLM_F_ACK_TLVS != 0 {
        p.get(4 + align4(echoed)..).and_then(|tlvs| {
            attrs(tlvs)
                .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
                .map(|(_, s)| {
                    String::from_utf8_lossy(s.split(|b| *b == 0).next().unwrap_or(s)).into_owned()
                })
        })
    } else {
        None
    };
    Some(ErrorMsg { errno, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_with_ext_ack_text_is_read() {
        // NLMSG_ERROR, flags CAP_ACK(0x100)|ACK_TLVS(0x200), errno -ENOENT,
        // echoed header, then NLMSGERR_ATTR_MSG "Specified qdisc kind is unknown".
        let text = b"Specified qdisc kind is unknown\0";
        let mut buf = Vec::new();
        let attr_len = 4 + text.len();
        let total = 16 + 4 + 16 + ((attr_len + 3) & !3);
        buf.extend_from_slice(&(total as u32).to_ne_bytes());
        buf.extend_from_slice(&2u16.to_ne_bytes());
        buf.extend_from_slice(&0x300u16.to_ne_bytes());
        buf.extend_from_slice(&7u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[76, 0, 0, 0, 36, 0, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        buf.extend_from_slice(&1u16.to_ne_bytes());
        buf.extend_from_slice(text);
        buf.resize(total, 0);
        let m = messages(&buf).next().unwrap();
        assert_eq!(m.seq, 7);
        let e = parse_error(&m).unwrap();
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.text.as_deref(), Some("Specified qdisc kind is unknown"));
    }
}
