//! `fw`: classifies by the packet's netfilter mark. Equivalent to `tc filter
//! add dev D protocol ip parent 1: prio 1 handle MARK fw classid 1:4`.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::{TcAttribute, TcOption};

use super::{filter, Handle};
use crate::wire::Message;

pub const KIND: &str = "fw";
const TCA_FW_CLASSID: u16 = 1;

/// The filter's handle is the mark it matches.
pub fn add(
    ifindex: i32,
    parent: Handle,
    prio: u16,
    protocol: u16,
    mark: u32,
    classid: Handle,
) -> Message {
    let classid = u32::from(classid).to_ne_bytes().to_vec();
    let options = TcAttribute::Options(vec![TcOption::Other(DefaultNla::new(
        TCA_FW_CLASSID,
        classid,
    ))]);
    filter(ifindex, mark.into(), parent, prio, protocol, KIND, options)
}
