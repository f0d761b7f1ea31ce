//! The ifb device the ingress path redirects SYNs to, over rtnetlink with
//! netlink-packet-route's `LinkMessage`. Equivalent to `ip link add NAME
//! type ifb`, `ip link set dev NAME up` and `ip link del dev NAME`.

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::wire::Message;

/// The kernel's limit on an interface name (IFNAMSIZ - 1).
const IFNAMSIZ: usize = 15;

/// The name of our ifb for the service on `dev` whose lowest port is
/// `port` (0: every port): `ifb-<dev>-<port>` (`ifb-<dev>`) when that fits
/// the kernel's limit, else `ifb-i<ifindex>-<port>`, so two long names
/// never share an ifb. A device of that name that is not ours is told
/// apart by its record (`owner`), never taken.
pub fn ifb_name(dev: &str, port: u16) -> String {
    let tail = if port == 0 {
        String::new()
    } else {
        format!("-{port}")
    };
    let n = format!("ifb-{dev}{tail}");
    if n.len() <= IFNAMSIZ {
        return n;
    }
    match crate::sys::ifindex(dev) {
        Ok(i) => format!("ifb-i{i}{tail}"),
        Err(_) => n[..IFNAMSIZ].to_owned(),
    }
}

/// `ip link show` (a dump): every link, to find our other ifbs.
pub fn dump() -> Message {
    Message::route(
        netlink_packet_core::NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )
}

/// A link as a dump reports it: index, name and alias.
pub struct Listed {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
}

pub fn listed(payload: &[u8]) -> Option<Listed> {
    use netlink_packet_core::Parseable;
    let m = LinkMessage::parse(payload).ok()?;
    let mut out = Listed {
        index: m.header.index,
        name: String::new(),
        alias: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n,
            LinkAttribute::IfAlias(s) => out.alias = Some(s),
            _ => {}
        }
    }
    Some(out)
}

/// `ip link set dev INDEX alias TEXT`: where an ifb's owner is recorded.
pub fn set_alias(ifindex: u32, text: &str) -> Message {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes = vec![LinkAttribute::IfAlias(text.to_owned())];
    Message::route(NLM_F_REQUEST | NLM_F_ACK, RouteNetlinkMessage::NewLink(m))
}

/// `ip link add NAME type ifb`.
pub fn add_ifb(name: &str) -> Message {
    let mut m = LinkMessage::default();
    m.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]),
    ];
    Message::route(
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
        RouteNetlinkMessage::NewLink(m),
    )
}

/// `ip link set dev INDEX up`.
pub fn set_up(ifindex: u32) -> Message {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    Message::route(NLM_F_REQUEST | NLM_F_ACK, RouteNetlinkMessage::NewLink(m))
}

/// `ip link del dev INDEX`.
pub fn delete(ifindex: u32) -> Message {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    Message::route(NLM_F_REQUEST | NLM_F_ACK, RouteNetlinkMessage::DelLink(m))
}

/// `ip -s link show dev INDEX`: the link with its counters.
pub fn get(ifindex: u32) -> Message {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    Message::route(NLM_F_REQUEST, RouteNetlinkMessage::GetLink(m))
}

/// Packets in an ifb's own queue, from its RTM_NEWLINK counters: an ifb
/// counts a packet as received when its qdisc hands it over, then as
/// dropped at once (not redirected to it: the ifb's own IPv6 router
/// solicitations, for one) or as sent (or dropped) when its tasklet passes
/// it on. `None` without counters.
pub fn ifb_queued(payload: &[u8]) -> Option<u64> {
    use netlink_packet_core::Parseable;
    let m = LinkMessage::parse(payload).ok()?;
    m.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::Stats64(s) => Some(
            s.rx_packets
                .saturating_sub(s.rx_dropped)
                .saturating_sub(s.tx_packets)
                .saturating_sub(s.tx_dropped),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::Stats64;

    fn with_counters(rx: u64, rx_dropped: u64, tx: u64, tx_dropped: u64) -> Vec<u8> {
        let mut stats = Stats64::default();
        stats.rx_packets = rx;
        stats.rx_dropped = rx_dropped;
        stats.tx_packets = tx;
        stats.tx_dropped = tx_dropped;
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName("ifb-veth-s".into()),
            LinkAttribute::Stats64(stats),
        ];
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn the_queue_is_what_came_in_and_has_not_gone_on() {
        // As seen in the VM: 4 in, 1 dropped at once (the ifb's own router
        // solicitation), 3 passed on: nothing queued.
        assert_eq!(ifb_queued(&with_counters(4, 1, 3, 0)), Some(0));
        assert_eq!(ifb_queued(&with_counters(10, 1, 6, 1)), Some(2));
    }

    #[test]
    fn no_counters_is_none_not_zero() {
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::IfName("ifb-veth-s".into())];
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(ifb_queued(&buf), None);
    }
}
