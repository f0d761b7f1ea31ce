//! `u32`: a classifier that matches TCP SYN-without-ACK itself, with no
//! netfilter at all.
//!
//! Equivalent (IPv4, any source) to `tc filter add dev D parent 1: protocol
//! ip prio 1 u32 match u32 0x00060000 0x00ff0000 at 8 match u32 0x05000000
//! 0x0f000000 at 0 match u32 0x00020000 0x00120000 at 32 flowid 1:4`.
//! Offsets count from the network header, so the same filter works on egress
//! and on an ifb device fed from ingress.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

use super::{filter, handle, Handle};
use crate::wire::Message;

pub const KIND: &str = "u32";

/// One `match u32 VALUE MASK at OFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub mask: u32,
    pub value: u32,
    pub off: i32,
}

const fn key(value: u32, mask: u32, off: i32) -> Key {
    Key { mask, value, off }
}

/// TCP flags: SYN set and ACK clear (the byte at TCP header + 13).
const SYN_NOT_ACK: (u32, u32) = (0x0002_0000, 0x0012_0000);

/// IPv4 without options: protocol TCP, IHL 5, SYN without ACK, optionally a source.
pub fn syn_keys_v4(source: Option<Ipv4Addr>) -> Vec<Key> {
    let mut keys = vec![
        key(0x0006_0000, 0x00ff_0000, 8),
        key(0x0500_0000, 0x0f00_0000, 0),
        key(SYN_NOT_ACK.0, SYN_NOT_ACK.1, 32),
    ];
    if let Some(src) = source {
        keys.push(key(u32::from(src), 0xffff_ffff, 12));
    }
    keys
}

/// IPv6 without extension headers: next header TCP, SYN without ACK,
/// optionally a source.
pub fn syn_keys_v6(source: Option<Ipv6Addr>) -> Vec<Key> {
    let mut keys = vec![
        key(0x0000_0600, 0x0000_ff00, 4),
        key(SYN_NOT_ACK.0, SYN_NOT_ACK.1, 52),
    ];
    if let Some(src) = source {
        for (i, word) in src.octets().chunks(4).enumerate() {
            let w = u32::from_be_bytes(word.try_into().unwrap());
            keys.push(key(w, 0xffff_ffff, 8 + 4 * i as i32));
        }
    }
    keys
}

/// Destination port `port` (IPv4 without options: TCP header at 20, the
/// port in its bytes 2-3).
pub fn dport_key_v4(port: u16) -> Key {
    key(u32::from(port), 0x0000_ffff, 20)
}

/// Destination port `port` (IPv6 without extension headers: TCP header at 40).
pub fn dport_key_v6(port: u16) -> Key {
    key(u32::from(port), 0x0000_ffff, 40)
}

/// A u32 filter in the root hash table; the kernel picks its handle.
pub fn add(
    ifindex: i32,
    parent: Handle,
    prio: u16,
    protocol: u16,
    keys: &[Key],
    classid: Handle,
) -> Message {
    let options = TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::ClassId(classid)),
        TcOption::U32(TcFilterU32Option::Selector(selector(keys))),
    ]);
    filter(ifindex, handle(0, 0), parent, prio, protocol, KIND, options)
}

/// `struct tc_u32_sel` with `keys`, terminal (a match ends classification).
pub fn selector(keys: &[Key]) -> TcU32Selector {
    // Both structs are non-exhaustive: filled from their defaults.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = keys.len() as u8;
    selector.keys = keys
        .iter()
        .map(|k| {
            let mut key = TcU32Key::default();
            key.mask = k.mask;
            key.val = k.value;
            key.off = k.off;
            key
        })
        .collect();
    selector
}
