//! Traffic control over rtnetlink, encoded and parsed with
//! netlink-packet-route's `TcMessage`. One module per kernel object below;
//! all of it is pure encoding. What no crate types (the raw option structs
//! of prio, pfifo, plug and fw's nested classid) travels as raw payloads.

pub mod fw;
pub mod ingress;
pub mod pfifo;
pub mod plug;
pub mod prio;
pub mod u32;

use netlink_packet_core::Parseable;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcStats2};
use netlink_packet_route::RouteNetlinkMessage;

use crate::wire::Message;

/// `TCA_OPTIONS`, for raw option payloads (`TcAttribute::Other`).
pub const TCA_OPTIONS: u16 = 2;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// Flags `tc ... add` sends: fail if it exists.
pub const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
/// Flags `tc ... change` sends: modify what exists, create nothing.
pub const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// A qdisc, class or filter handle, `M:m`.
pub type Handle = TcHandle;

/// The parent of a root qdisc.
pub const TC_H_ROOT: Handle = TcHandle::ROOT;

/// `M:m`.
pub const fn handle(major: u16, minor: u16) -> Handle {
    TcHandle { major, minor }
}

/// `tc` notation for a handle: `1:`, `1:4`, `root`.
pub fn show_handle(h: Handle) -> String {
    match h {
        TC_H_ROOT => "root".into(),
        h if h.minor == 0 => format!("{:x}:", h.major),
        h => format!("{:x}:{:x}", h.major, h.minor),
    }
}

fn header(ifindex: i32, handle: Handle, parent: Handle, info: u32) -> TcHeader {
    TcHeader {
        index: ifindex,
        handle,
        parent,
        info,
        ..TcHeader::default()
    }
}

/// `info` of a filter: the priority and the protocol (network order).
fn filter_info(prio: u16, protocol: u16) -> u32 {
    (prio as u32) << 16 | protocol.to_be() as u32
}

/// A qdisc message with its kind and, when given, a raw TCA_OPTIONS.
pub fn qdisc(
    flags: u16,
    ifindex: i32,
    handle: Handle,
    parent: Handle,
    kind: &str,
    options: Option<Vec<u8>>,
) -> Message {
    let mut m = TcMessage::from_parts(header(ifindex, handle, parent, 0), vec![]);
    m.attributes.push(TcAttribute::Kind(kind.into()));
    if let Some(o) = options {
        m.attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, o)));
    }
    Message::route(flags, RouteNetlinkMessage::NewQueueDiscipline(m))
}

/// A new filter with its kind and options.
pub fn filter(
    ifindex: i32,
    handle: Handle,
    parent: Handle,
    prio: u16,
    protocol: u16,
    kind: &str,
    options: TcAttribute,
) -> Message {
    let mut m = TcMessage::from_parts(
        header(ifindex, handle, parent, filter_info(prio, protocol)),
        vec![TcAttribute::Kind(kind.into()), options],
    );
    m.attributes.shrink_to_fit();
    Message::route(ADD, RouteNetlinkMessage::NewTrafficFilter(m))
}

/// Equivalent to `tc qdisc del dev D root`: removes the root qdisc, its
/// children and their filters.
pub fn delete_root(ifindex: i32) -> Message {
    let m = TcMessage::from_parts(header(ifindex, handle(0, 0), TC_H_ROOT, 0), vec![]);
    Message::route(
        NLM_F_REQUEST | NLM_F_ACK,
        RouteNetlinkMessage::DelQueueDiscipline(m),
    )
}

/// Equivalent to `tc qdisc del dev D parent P handle H:`.
pub fn delete_qdisc(ifindex: i32, handle: Handle, parent: Handle) -> Message {
    let m = TcMessage::from_parts(header(ifindex, handle, parent, 0), vec![]);
    Message::route(
        NLM_F_REQUEST | NLM_F_ACK,
        RouteNetlinkMessage::DelQueueDiscipline(m),
    )
}

/// Equivalent to `tc filter del dev D parent P prio N protocol X`: every
/// filter at that priority.
pub fn delete_filters(ifindex: i32, parent: Handle, prio: u16, protocol: u16) -> Message {
    let m = TcMessage::from_parts(
        header(ifindex, handle(0, 0), parent, filter_info(prio, protocol)),
        vec![],
    );
    Message::route(
        NLM_F_REQUEST | NLM_F_ACK,
        RouteNetlinkMessage::DelTrafficFilter(m),
    )
}

/// Equivalent to `tc qdisc show dev D` (a dump; the kernel filters by ifindex).
pub fn dump_qdiscs(ifindex: i32) -> Message {
    let m = TcMessage::with_index(ifindex);
    Message::route(
        NLM_F_REQUEST | NLM_F_DUMP,
        RouteNetlinkMessage::GetQueueDiscipline(m),
    )
}

/// Equivalent to `tc filter show dev D parent P`.
pub fn dump_filters(ifindex: i32, parent: Handle) -> Message {
    let m = TcMessage::from_parts(header(ifindex, handle(0, 0), parent, 0), vec![]);
    Message::route(
        NLM_F_REQUEST | NLM_F_DUMP,
        RouteNetlinkMessage::GetTrafficFilter(m),
    )
}

/// A qdisc or filter as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcObject {
    pub kind: String,
    pub ifindex: i32,
    pub handle: Handle,
    pub parent: Handle,
    pub info: u32,
    /// Sent through this object (gnet_stats_basic).
    pub bytes: u64,
    pub packets: u32,
    /// Held now (gnet_stats_queue).
    pub qlen: u32,
    pub backlog: u32,
    pub drops: u32,
}

impl TcObject {
    /// Reads one RTM_NEWQDISC / RTM_NEWTFILTER payload.
    pub fn parse(payload: &[u8]) -> Option<TcObject> {
        let m = TcMessage::parse(payload).ok()?;
        let mut o = TcObject {
            kind: String::new(),
            ifindex: m.header.index,
            handle: m.header.handle,
            parent: m.header.parent,
            info: m.header.info,
            bytes: 0,
            packets: 0,
            qlen: 0,
            backlog: 0,
            drops: 0,
        };
        for a in m.attributes {
            match a {
                TcAttribute::Kind(k) => o.kind = k,
                TcAttribute::Stats2(stats) => {
                    for s in stats {
                        match s {
                            TcStats2::Basic(b) => {
                                o.bytes = b.bytes;
                                o.packets = b.packets;
                            }
                            TcStats2::Queue(q) => {
                                o.qlen = q.qlen;
                                o.backlog = q.backlog;
                                o.drops = q.drops;
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
