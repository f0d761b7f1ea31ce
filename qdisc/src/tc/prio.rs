//! `prio`: the classful root whose fourth band holds the plug.
//!
//! Equivalent to `tc qdisc add dev D root handle 1: prio bands 4`. Bands 1-3
//! get traffic by the default priomap; band 4 (class 1:4) only through filters.

use super::{qdisc, ADD, RTM_NEWQDISC, TCA_OPTIONS};
use crate::wire::Message;

pub const KIND: &str = "prio";

/// The kernel's (and tc's) default priomap: TOS priority -> band (0-based).
pub const DEFAULT_PRIOMAP: [u8; 16] = [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];

/// `struct tc_prio_qopt { int bands; u8 priomap[16]; }`, as tc sends it: a
/// "compat nest", the raw struct followed by an empty nested TCA_OPTIONS.
pub fn add(ifindex: i32, handle: u32, parent: u32, bands: i32) -> Message {
    let mut m = qdisc(RTM_NEWQDISC, ADD, ifindex, handle, parent, KIND);
    m.nest(TCA_OPTIONS, |m| {
        let mut qopt = [0u8; 20];
        qopt[0..4].copy_from_slice(&bands.to_ne_bytes());
        qopt[4..20].copy_from_slice(&DEFAULT_PRIOMAP);
        m.raw(&qopt).attr(TCA_OPTIONS, &[]);
    });
    m
}

/// Reads `bands` back from a dumped TCA_OPTIONS.
pub fn bands(options: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(options.get(0..4)?.try_into().ok()?))
}
