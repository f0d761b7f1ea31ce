//! Traffic control over rtnetlink: the `tcmsg` header shared by every tc
//! message, the generic requests (delete, dump), and reading dumps back.
//! One module per kernel object below; all of it is pure encoding.

pub mod fw;
pub mod pfifo;
pub mod plug;
pub mod prio;
pub mod u32;

use crate::wire::{self, Message, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_DELQDISC: u16 = 37;
pub const RTM_GETQDISC: u16 = 38;
pub const RTM_NEWTFILTER: u16 = 44;
pub const RTM_DELTFILTER: u16 = 45;
pub const RTM_GETTFILTER: u16 = 46;

pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;
pub const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;

/// The parent of a root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// Flags `tc ... add` sends: fail if it exists.
pub const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
/// Flags `tc ... change` sends: modify what exists, create nothing.
pub const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `M:m` as the kernel stores it.
pub const fn handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// `tc` notation for a handle: `1:`, `1:4`, `root`.
pub fn show_handle(h: u32) -> String {
    match h {
        TC_H_ROOT => "root".into(),
        h if h & 0xffff == 0 => format!("{:x}:", h >> 16),
        h => format!("{:x}:{:x}", h >> 16, h & 0xffff),
    }
}

/// `struct tcmsg`: family, 3 pad bytes, ifindex, handle, parent, info (host order).
pub fn tcmsg(ifindex: i32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

/// A qdisc message with its kind; the caller appends TCA_OPTIONS.
pub fn qdisc(ty: u16, flags: u16, ifindex: i32, handle: u32, parent: u32, kind: &str) -> Message {
    let mut m = Message::new(ty, flags);
    m.raw(&tcmsg(ifindex, handle, parent, 0))
        .attr_str(TCA_KIND, kind);
    m
}

/// A filter message: `info` carries the priority and the protocol (network order).
pub fn filter(
    ifindex: i32,
    handle: u32,
    parent: u32,
    prio: u16,
    protocol: u16,
    kind: &str,
) -> Message {
    let info = (prio as u32) << 16 | protocol.to_be() as u32;
    let mut m = Message::new(RTM_NEWTFILTER, ADD);
    m.raw(&tcmsg(ifindex, handle, parent, info))
        .attr_str(TCA_KIND, kind);
    m
}

/// Equivalent to `tc qdisc del dev D root`: removes the root qdisc, its
/// children and their filters.
pub fn delete_root(ifindex: i32) -> Message {
    let mut m = Message::new(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK);
    m.raw(&tcmsg(ifindex, 0, TC_H_ROOT, 0));
    m
}

/// Equivalent to `tc qdisc show dev D` (a dump; the kernel filters by ifindex).
pub fn dump_qdiscs(ifindex: i32) -> Message {
    let mut m = Message::new(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP);
    m.raw(&tcmsg(ifindex, 0, 0, 0));
    m
}

/// Equivalent to `tc filter show dev D parent P`.
pub fn dump_filters(ifindex: i32, parent: u32) -> Message {
    let mut m = Message::new(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP);
    m.raw(&tcmsg(ifindex, 0, parent, 0));
    m
}

/// A qdisc or filter as a dump reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcObject {
    pub kind: String,
    pub ifindex: i32,
    pub handle: u32,
    pub parent: u32,
    pub info: u32,
    /// Raw TCA_OPTIONS payload.
    pub options: Vec<u8>,
    /// Sent through this object (gnet_stats_basic).
    pub bytes: u64,
    pub packets: u32,
    /// Held now (gnet_stats_queue).
    pub qlen: u32,
    pub backlog: u32,
    pub drops: u32,
}

impl TcObject {
    /// Reads one RTM_NEWQDISC / RTM_NEWTFILTER payload; unknown attributes are skipped.
    pub fn parse(payload: &[u8]) -> Option<TcObject> {
        let hdr = payload.get(..20)?;
        let u32_at = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
        let mut o = TcObject {
            ifindex: u32_at(4) as i32,
            handle: u32_at(8),
            parent: u32_at(12),
            info: u32_at(16),
            ..TcObject::default()
        };
        for (ty, p) in wire::attrs(&payload[20..]) {
            match ty {
                TCA_KIND => {
                    o.kind = String::from_utf8_lossy(p)
                        .trim_end_matches('\0')
                        .to_string()
                }
                TCA_OPTIONS => o.options = p.to_vec(),
                TCA_STATS2 => {
                    for (sty, s) in wire::attrs(p) {
                        match sty {
                            TCA_STATS_BASIC if s.len() >= 12 => {
                                o.bytes = u64::from_ne_bytes(s[0..8].try_into().unwrap());
                                o.packets = u32::from_ne_bytes(s[8..12].try_into().unwrap());
                            }
                            TCA_STATS_QUEUE if s.len() >= 12 => {
                                let q =
                                    |i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().unwrap());
                                o.qlen = q(0);
                                o.backlog = q(4);
                                o.drops = q(8);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(o)
    }

    /// A filter's priority (from `info`).
    pub fn prio(&self) -> u16 {
        (self.info >> 16) as u16
    }

    /// A filter's protocol (from `info`, host order).
    pub fn protocol(&self) -> u16 {
        u16::from_be(self.info as u16)
    }
}

/// Equivalent to `tc qdisc del dev D parent P handle H:`.
pub fn delete_qdisc(ifindex: i32, handle: u32, parent: u32) -> Message {
    let mut m = Message::new(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK);
    m.raw(&tcmsg(ifindex, handle, parent, 0));
    m
}

/// Equivalent to `tc filter del dev D parent P prio N protocol X`: every
/// filter at that priority.
pub fn delete_filters(ifindex: i32, parent: u32, prio: u16, protocol: u16) -> Message {
    let info = (prio as u32) << 16 | protocol.to_be() as u32;
    let mut m = Message::new(RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK);
    m.raw(&tcmsg(ifindex, 0, parent, info));
    m
}
