//! Golden bytes: every message we send equals what iproute2's `tc` or `nft`
//! sends for the same operation.
//!
//! The `.hex` files in `tests/golden/` were captured by
//! `tests/golden/capture.sh` (strace's hex dump of the datagram each tool
//! sent, in a fresh network namespace where lo is ifindex 1), on Debian 12
//! with iproute2 6.1.0, nftables 1.0.6 and strace 6.1. The script names the
//! exact command behind each file. Only the sequence numbers differ between
//! tools (tc uses the time, nft counts from 0), so ours are set to theirs
//! before comparing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::nft::{self, Family};
use crate::tc::{self, fw, handle, pfifo, plug, prio, u32, ETH_P_IP, ETH_P_IPV6, TC_H_ROOT};
use crate::wire::Message;

const LO: i32 = 1;

fn hex(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn seq_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset + 8..offset + 12].try_into().unwrap())
}

/// Shows both sides as hex rows, so a mismatch can be read.
fn dump(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(name: &str, mut ours: Message) {
    let theirs = hex(name);
    ours.set_seq(seq_at(&theirs, 0));
    assert!(
        ours.bytes() == theirs.as_slice(),
        "{name}: our bytes differ from the tool's\nours:\n{}\ntheirs:\n{}",
        dump(ours.bytes()),
        dump(&theirs)
    );
}

/// A whole nf_tables batch against the tool's one datagram.
fn check_batch(name: &str, msgs: Vec<Message>) {
    let theirs = hex(name);
    let mut ours = Vec::new();
    for mut m in msgs {
        m.set_seq(seq_at(
            &theirs,
            ours.len().min(theirs.len().saturating_sub(16)),
        ));
        ours.extend_from_slice(m.bytes());
    }
    assert!(
        ours == theirs,
        "{name}: our batch differs from nft's\nours:\n{}\ntheirs:\n{}",
        dump(&ours),
        dump(&theirs)
    );
}

#[test]
fn prio_root() {
    check("prio_add", prio::add(LO, handle(1, 0), TC_H_ROOT, 4));
}

#[test]
fn pfifo_on_band_1() {
    check(
        "pfifo_add",
        pfifo::add(LO, handle(0x10, 0), handle(1, 1), 1000),
    );
}

#[test]
fn plug_creation_with_limit() {
    check(
        "plug_add",
        plug::add(LO, handle(0x40, 0), handle(1, 4), 1 << 20),
    );
}

#[test]
fn plug_toggles() {
    let (h, p) = (handle(0x40, 0), handle(1, 4));
    check("plug_buffer", plug::action(LO, h, p, plug::Action::Buffer));
    check(
        "plug_release",
        plug::action(LO, h, p, plug::Action::ReleaseIndefinite),
    );
    check(
        "plug_release_one",
        plug::action(LO, h, p, plug::Action::ReleaseOne),
    );
}

#[test]
fn fw_filters() {
    check(
        "fw_add_ip",
        fw::add(
            LO,
            handle(1, 0),
            1,
            ETH_P_IP,
            crate::tree::MARK,
            handle(1, 4),
        ),
    );
    check(
        "fw_add_ipv6",
        fw::add(
            LO,
            handle(1, 0),
            2,
            ETH_P_IPV6,
            crate::tree::MARK,
            handle(1, 4),
        ),
    );
}

#[test]
fn u32_syn_filters() {
    let v4 = u32::syn_keys_v4(Some(Ipv4Addr::LOCALHOST));
    check(
        "u32_add_ip",
        u32::add(LO, handle(1, 0), 1, ETH_P_IP, &v4, handle(1, 4)),
    );
    let v6 = u32::syn_keys_v6(Some(Ipv6Addr::LOCALHOST));
    check(
        "u32_add_ipv6",
        u32::add(LO, handle(1, 0), 2, ETH_P_IPV6, &v6, handle(1, 4)),
    );
}

#[test]
fn deletes() {
    check("root_del", tc::delete_root(LO));
    check(
        "filter_del",
        tc::delete_filters(LO, handle(1, 0), 2, ETH_P_IPV6),
    );
}

#[test]
fn nft_mark_rule_ipv4() {
    let src = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    check_batch(
        "nft_install_ip",
        nft::batch(nft::install(Family::Ipv4, Some(&src), crate::tree::MARK)),
    );
}

#[test]
fn nft_mark_rule_ipv6() {
    let src = [IpAddr::V6(Ipv6Addr::LOCALHOST)];
    check_batch(
        "nft_install_ip6",
        nft::batch(nft::install(Family::Ipv6, Some(&src), crate::tree::MARK)),
    );
}

#[test]
fn nft_mark_rule_any_source() {
    check_batch(
        "nft_install_ip_any",
        nft::batch(nft::install(Family::Ipv4, None, crate::tree::MARK)),
    );
}

#[test]
fn nft_delete_table() {
    check_batch("nft_delete_ip", nft::delete_table(Family::Ipv4));
}

/// Scoped to the served port: only SYNs to port 7000 are held.
#[test]
fn u32_syn_filters_for_one_port() {
    let mut v4 = u32::syn_keys_v4(Some(Ipv4Addr::LOCALHOST));
    v4.push(u32::dport_key_v4(7000));
    check(
        "u32_add_ip_port",
        u32::add(LO, handle(1, 0), 1, ETH_P_IP, &v4, handle(1, 4)),
    );
    let mut v6 = u32::syn_keys_v6(Some(Ipv6Addr::LOCALHOST));
    v6.push(u32::dport_key_v6(7000));
    check(
        "u32_add_ipv6_port",
        u32::add(LO, handle(1, 0), 2, ETH_P_IPV6, &v6, handle(1, 4)),
    );
}

#[test]
fn nft_mark_rule_for_one_port() {
    let src = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    check_batch(
        "nft_install_ip_port",
        nft::batch(nft::install_for_port(
            Family::Ipv4,
            Some(&src),
            Some(7000),
            crate::tree::MARK,
        )),
    );
    let src = [IpAddr::V6(Ipv6Addr::LOCALHOST)];
    check_batch(
        "nft_install_ip6_port",
        nft::batch(nft::install_for_port(
            Family::Ipv6,
            Some(&src),
            Some(7000),
            crate::tree::MARK,
        )),
    );
}

// The ingress path (captured with lo as the device and the ifb at ifindex 2).

#[test]
fn ifb_link() {
    // One byte differs, by design of the crate: `ip` sends IFLA_INFO_KIND
    // "ifb" without its NUL (attribute length 7, then a padding 0), the
    // crate with it (length 8, the same 0 byte). Both are the same NLA_STRING
    // to the kernel; every other byte must match.
    let mut theirs = hex("ifb_add");
    let at = theirs.len() - 8;
    assert_eq!(&theirs[at..], &[7, 0, 1, 0, b'i', b'f', b'b', 0]);
    theirs[at] = 8;
    let mut ours = crate::link::add_ifb("ifb-lo");
    ours.set_seq(seq_at(&theirs, 0));
    assert!(
        ours.bytes() == theirs.as_slice(),
        "ifb_add: ours\n{}\ntheirs\n{}",
        dump(ours.bytes()),
        dump(&theirs)
    );
    check("ifb_up", crate::link::set_up(2));
    check("ifb_del", crate::link::delete(2));
}

#[test]
fn ingress_qdisc() {
    check("ingress_add", tc::ingress::add(LO));
    check("ingress_del", tc::ingress::delete(LO));
}

#[test]
fn u32_redirects_syns_to_the_ifb() {
    let mut v4 = u32::syn_keys_v4(None);
    v4.push(u32::dport_key_v4(7000));
    check(
        "u32_mirred_ip",
        tc::ingress::redirect(LO, 1, ETH_P_IP, &v4, 2),
    );
    let mut v6 = u32::syn_keys_v6(None);
    v6.push(u32::dport_key_v6(7000));
    check(
        "u32_mirred_ipv6",
        tc::ingress::redirect(LO, 2, ETH_P_IPV6, &v6, 2),
    );
}
