//! The ingress side for remote clients: the `ingress` qdisc on the real
//! device, and u32 filters there that redirect new-connection SYNs to the
//! served port to our ifb device (mirred, egress redirect), where the plug
//! tree holds them. tc ingress runs before netfilter, so no mark exists yet:
//! classification is u32's own.
//!
//! Equivalent to `tc qdisc add dev D ingress` and `tc filter add dev D
//! parent ffff: protocol ip prio 1 u32 match ... action mirred egress
//! redirect dev ifb-D`.

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcMessage, TcMirror, TcMirrorActionType,
    TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::u32::{selector, Key};
use super::{filter, handle, qdisc, Handle, ADD};
use crate::wire::Message;

pub const KIND: &str = "ingress";
/// The ingress qdisc's own handle, `ffff:`.
pub const HANDLE: Handle = handle(0xffff, 0);
/// Its parent, `ffff:fff1`.
pub const PARENT: Handle = Handle::INGRESS;

/// `tc qdisc add dev D ingress`.
pub fn add(ifindex: i32) -> Message {
    qdisc(ADD, ifindex, HANDLE, PARENT, KIND, None)
}

/// `tc qdisc del dev D ingress`.
pub fn delete(ifindex: i32) -> Message {
    let mut m = TcMessage::with_index(ifindex);
    m.header.handle = HANDLE;
    m.header.parent = PARENT;
    m.attributes.push(TcAttribute::Kind(KIND.into()));
    Message::route(
        NLM_F_REQUEST | NLM_F_ACK,
        RouteNetlinkMessage::DelQueueDiscipline(m),
    )
}

/// A u32 filter under `ffff:` that redirects what `keys` match to the
/// device `to` (our ifb), and stops there.
pub fn redirect(ifindex: i32, prio: u16, protocol: u16, keys: &[Key], to: u32) -> Message {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let options = TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
        TcOption::U32(TcFilterU32Option::Selector(selector(keys))),
    ]);
    filter(
        ifindex,
        handle(0, 0),
        HANDLE,
        prio,
        protocol,
        "u32",
        options,
    )
}
