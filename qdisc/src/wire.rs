//! Netlink framing, pure data: build a message (header, family header,
//! attributes, nests) into bytes, and read messages and attributes back.
//! No file descriptors here; `socket` does the I/O.

/// `struct nlmsghdr` is 16 bytes: len u32, type u16, flags u16, seq u32, pid u32.
pub const NLMSG_HDRLEN: usize = 16;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
/// In an error message: extended-ack attributes follow the echoed header.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// `NLMSGERR_ATTR_MSG`: the kernel's error text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Set on attributes that contain attributes (nf_tables sets it; tc does not).
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    /// A message of type `ty` with `flags`, sequence number 0 (the socket
    /// sets the real one) and port id 0 (the kernel).
    pub fn new(ty: u16, flags: u16) -> Message {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        let mut m = Message { buf };
        m.fix_len();
        m
    }

    pub fn msg_type(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    pub fn set_flags(&mut self, flags: u16) {
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    }

    pub fn seq(&self) -> u32 {
        u32::from_ne_bytes(self.buf[8..12].try_into().unwrap())
    }

    pub fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    /// Appends raw bytes (a family header such as `tcmsg`), 4-byte aligned.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends one attribute.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Appends a big-endian u32 attribute (nf_tables' convention).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends an attribute whose payload is whatever `inner` appends.
    pub fn nest(&mut self, ty: u16, inner: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        inner(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The finished bytes, length field included.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
        self.fix_len();
    }

    fn fix_len(&mut self) {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
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
    fn attributes_are_padded_and_lengths_exclude_padding() {
        let mut m = Message::new(36, NLM_F_REQUEST);
        m.attr_str(1, "prio");
        let b = m.bytes();
        assert_eq!(b.len(), 16 + 12);
        assert_eq!(&b[16..20], &[9, 0, 1, 0]);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 28);
    }

    #[test]
    fn nests_cover_their_contents() {
        let mut m = Message::new(44, NLM_F_REQUEST);
        m.nest(2, |m| {
            m.attr(1, &0x0001_0004u32.to_ne_bytes());
        });
        assert_eq!(&m.bytes()[16..], &[12, 0, 2, 0, 8, 0, 1, 0, 4, 0, 1, 0]);
    }

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
