//! `pfifo`: a packet-count FIFO on each of bands 1-3.
//!
//! Equivalent to `tc qdisc add dev D parent 1:N handle N0: pfifo limit 1000`.

use super::{qdisc, ADD, RTM_NEWQDISC, TCA_OPTIONS};
use crate::wire::Message;

pub const KIND: &str = "pfifo";

/// `struct tc_fifo_qopt { u32 limit; }`, in packets.
pub fn add(ifindex: i32, handle: u32, parent: u32, limit: u32) -> Message {
    let mut m = qdisc(RTM_NEWQDISC, ADD, ifindex, handle, parent, KIND);
    m.attr(TCA_OPTIONS, &limit.to_ne_bytes());
    m
}
