//! `plug`: the qdisc that holds packets while buffering and lets them go on
//! release.
//!
//! Creation is equivalent to `tc qdisc add dev D parent 1:4 handle 40: plug
//! limit BYTES`; the toggles to `tc qdisc change dev D parent 1:4 handle 40:
//! plug block|release|release_indefinite`. A new plug starts buffering, and
//! the kernel never reports which state a plug is in.

use super::{qdisc, Handle, ADD, CHANGE};
use crate::wire::Message;

pub const KIND: &str = "plug";

/// `tc_plug_qopt.action` values (include/uapi/linux/pkt_sched.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Action {
    /// Hold every packet from now on (`tc ... plug block`).
    Buffer = 0,
    /// Let go what was held at the last buffer, keep holding the rest (`release`).
    ReleaseOne = 1,
    /// Let everything through until the next buffer (`release_indefinite`).
    ReleaseIndefinite = 2,
    /// Set the byte limit (what tc sends for `plug limit N`).
    Limit = 3,
}

/// `struct tc_plug_qopt { int action; u32 limit; }`.
fn qopt(action: Action, limit: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&(action as i32).to_ne_bytes());
    b[4..8].copy_from_slice(&limit.to_ne_bytes());
    b
}

/// Creates the plug with a byte limit (link-layer headers included; over
/// it, packets are dropped). At creation the kernel reads only the limit.
pub fn add(ifindex: i32, handle: Handle, parent: Handle, limit: u32) -> Message {
    let opt = qopt(Action::Limit, limit).to_vec();
    qdisc(ADD, ifindex, handle, parent, KIND, Some(opt))
}

/// Changes an existing plug. Flags REQUEST|ACK only: with CREATE, a missing
/// plug would be created with limit 0, dropping everything.
pub fn action(ifindex: i32, handle: Handle, parent: Handle, action: Action) -> Message {
    let opt = qopt(action, 0).to_vec();
    qdisc(CHANGE, ifindex, handle, parent, KIND, Some(opt))
}
