//! `prio`: the classful root. Equivalent to `tc qdisc add dev D root handle
//! 1: prio bands N`. No crate types its options: they are a raw struct.

use super::{qdisc, Handle, ADD, TCA_OPTIONS};
use crate::wire::Message;

pub const KIND: &str = "prio";

/// The kernel's (and tc's) default priomap: TOS priority -> band (0-based).
pub const DEFAULT_PRIOMAP: [u8; 16] = [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];

/// `struct tc_prio_qopt { int bands; u8 priomap[16]; }`, as tc sends it: a
/// "compat nest", the raw struct followed by an empty nested TCA_OPTIONS.
pub fn add(ifindex: i32, handle: Handle, parent: Handle, bands: i32) -> Message {
    let mut opt = Vec::with_capacity(24);
    opt.extend_from_slice(&bands.to_ne_bytes());
    opt.extend_from_slice(&DEFAULT_PRIOMAP);
    // The empty nested TCA_OPTIONS: length 4, type 2.
    opt.extend_from_slice(&4u16.to_ne_bytes());
    opt.extend_from_slice(&TCA_OPTIONS.to_ne_bytes());
    qdisc(ADD, ifindex, handle, parent, KIND, Some(opt))
}
