//! `fw`: classifies by the packet's netfilter mark. Equivalent to `tc filter
//! add dev D protocol ip parent 1: prio 1 handle MARK/MARK fw classid 1:4`:
//! only our bit is looked at, so other bits of a mark change nothing.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::{TcAttribute, TcOption};

use super::{filter, Handle};
use crate::wire::Message;

pub const KIND: &str = "fw";
const TCA_FW_CLASSID: u16 = 1;
const TCA_FW_MASK: u16 = 5;

/// The filter's handle is the mark it matches, under the same mask.
pub fn add(
    ifindex: i32,
    parent: Handle,
    prio: u16,
    protocol: u16,
    mark: u32,
    classid: Handle,
) -> Message {
    let classid = u32::from(classid).to_ne_bytes().to_vec();
    let options = TcAttribute::Options(vec![
        // In tc's order: the mask first.
        TcOption::Other(DefaultNla::new(TCA_FW_MASK, mark.to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_FW_CLASSID, classid)),
    ]);
    filter(ifindex, mark.into(), parent, prio, protocol, KIND, options)
}
