//! `pfifo`: a plain packet FIFO for bands 1-3. Equivalent to `tc qdisc add
//! dev D parent 1:N handle N0: pfifo limit L`.

use super::{qdisc, Handle, ADD};
use crate::wire::Message;

pub const KIND: &str = "pfifo";

/// `struct tc_fifo_qopt { u32 limit; }`, in packets.
pub fn add(ifindex: i32, handle: Handle, parent: Handle, limit: u32) -> Message {
    qdisc(
        ADD,
        ifindex,
        handle,
        parent,
        KIND,
        Some(limit.to_ne_bytes().to_vec()),
    )
}
