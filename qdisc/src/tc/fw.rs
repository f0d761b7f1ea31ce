//! `fw`: the classifier that sends packets by firewall mark to a class.
//!
//! Equivalent to `tc filter add dev D protocol ip parent 1:0 prio 1 handle 1
//! fw classid 1:4`. The mark comes from the nf_tables rule in `nft`.

use super::{filter, TCA_OPTIONS};
use crate::wire::Message;

pub const KIND: &str = "fw";
const TCA_FW_CLASSID: u16 = 1;

/// The filter's handle is the mark it matches.
pub fn add(
    ifindex: i32,
    parent: u32,
    prio: u16,
    protocol: u16,
    mark: u32,
    classid: u32,
) -> Message {
    let mut m = filter(ifindex, mark, parent, prio, protocol, KIND);
    m.nest(TCA_OPTIONS, |m| {
        m.attr(TCA_FW_CLASSID, &classid.to_ne_bytes());
    });
    m
}
