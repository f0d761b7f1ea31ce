//! The SYN mark rule as an nf_tables table of our own, encoded for
//! NETLINK_NETFILTER. Pure data; `socket` sends the batch.
//!
//! For IPv4 and source 127.0.0.1 the table is what this nft script makes:
//!
//! ```text
//! add table ip reuse_plug
//! add chain ip reuse_plug output { type route hook output priority mangle; policy accept; }
//! add rule ip reuse_plug output ip saddr 127.0.0.1 tcp flags & (syn|ack) == syn meta mark set 0x1
//! ```
//!
//! the equivalent of the seed's `iptables -t mangle -I OUTPUT -p tcp -s
//! 127.0.0.1 --syn -j MARK --set-mark 1`, in a table that is ours alone
//! (iptables-nft's own `mangle` table is never written to).

use std::net::IpAddr;

use crate::wire::{Message, NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

pub const TABLE: &str = "reuse_plug";
pub const CHAIN: &str = "output";

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETGEN: u16 = 16;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_LOCAL_OUT: u32 = 3;
/// `priority mangle`.
const NF_IP_PRI_MANGLE: i32 = -150;
const NF_ACCEPT: u32 = 1;
/// The register every expression here loads into and compares from.
const NFT_REG_1: u32 = 1;

/// Address families as nf_tables numbers them (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4 = 2,
    Ipv6 = 10,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }
}

fn msg(ty: u16, flags: u16, family: u8, res_id: u16) -> Message {
    let mut m = Message::new(NFNL_SUBSYS_NFTABLES << 8 | ty, flags);
    // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big-endian)
    let id = res_id.to_be_bytes();
    m.raw(&[family, 0, id[0], id[1]]);
    m
}

/// Wraps messages in BATCH_BEGIN ... BATCH_END: one transaction, all or nothing.
pub fn batch(body: Vec<Message>) -> Vec<Message> {
    let mut all = Vec::with_capacity(body.len() + 2);
    all.push(batch_marker(NFNL_MSG_BATCH_BEGIN));
    all.extend(body);
    all.push(batch_marker(NFNL_MSG_BATCH_END));
    all
}

fn batch_marker(ty: u16) -> Message {
    // Batch markers are not nf_tables messages: type without the subsystem,
    // res_id names the subsystem.
    let mut m = Message::new(ty, NLM_F_REQUEST);
    let id = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    m.raw(&[0, 0, id[0], id[1]]);
    m
}

/// The body of an install transaction for one family: create, delete,
/// create the table (so a second install replaces the first instead of
/// adding rules twice), the chain, and one rule per source (`None`: any).
pub fn install(family: Family, sources: Option<&[IpAddr]>, mark: u32) -> Vec<Message> {
    install_for_port(family, sources, None, mark)
}

/// As `install`, marking only SYNs to `port` when it is given
/// (`... tcp dport PORT tcp flags & (syn|ack) == syn ...`).
pub fn install_for_port(
    family: Family,
    sources: Option<&[IpAddr]>,
    port: Option<u16>,
    mark: u32,
) -> Vec<Message> {
    let f = family as u8;
    let mut new_table = msg(NFT_MSG_NEWTABLE, NLM_F_REQUEST, f, 0);
    new_table
        .attr_str(NFTA_TABLE_NAME, TABLE)
        .attr_be32(NFTA_TABLE_FLAGS, 0);
    let mut out = vec![new_table.clone(), delete_table_body(family), new_table];

    let mut chain = msg(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE, f, 0);
    chain
        .attr_str(NFTA_CHAIN_TABLE, TABLE)
        .attr_str(NFTA_CHAIN_NAME, CHAIN)
        .attr_str(NFTA_CHAIN_TYPE, "route")
        .attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .nest(NLA_F_NESTED | NFTA_CHAIN_HOOK, |m| {
            m.attr_be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT)
                .attr_be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_MANGLE as u32);
        });
    out.push(chain);

    match sources {
        None => out.push(rule(family, None, port, mark)),
        Some(list) => out.extend(list.iter().map(|a| rule(family, Some(*a), port, mark))),
    }
    out
}

fn delete_table_body(family: Family) -> Message {
    let mut m = msg(NFT_MSG_DELTABLE, NLM_F_REQUEST, family as u8, 0);
    m.attr_str(NFTA_TABLE_NAME, TABLE);
    m
}

/// Equivalent to `nft delete table FAMILY reuse_plug`, as its own batch.
pub fn delete_table(family: Family) -> Vec<Message> {
    batch(vec![delete_table_body(family)])
}

/// Asks for our table (the reply is the table or ENOENT).
pub fn get_table(family: Family) -> Message {
    let mut m = msg(NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_ACK, family as u8, 0);
    m.attr_str(NFTA_TABLE_NAME, TABLE);
    m
}

/// A request with an ACK, sent after a batch: batch messages ask for no
/// ACK (as nft's do), and this one's answer proves the batch was processed.
pub fn get_gen() -> Message {
    msg(NFT_MSG_GETGEN, NLM_F_REQUEST | NLM_F_ACK, 0, 0)
}

/// `[ip saddr ADDR] [tcp dport PORT] tcp flags & (syn|ack) == syn meta mark set MARK`.
fn rule(family: Family, source: Option<IpAddr>, port: Option<u16>, mark: u32) -> Message {
    let mut m = msg(
        NFT_MSG_NEWRULE,
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
        family as u8,
        0,
    );
    m.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, CHAIN);
    m.nest(NLA_F_NESTED | NFTA_RULE_EXPRESSIONS, |m| {
        match source {
            Some(IpAddr::V4(a)) => {
                payload(m, Base::Network, 12, 4);
                cmp_eq(m, &a.octets());
            }
            Some(IpAddr::V6(a)) => {
                payload(m, Base::Network, 8, 16);
                cmp_eq(m, &a.octets());
            }
            None => {}
        }
        meta_load(m, META_L4PROTO);
        cmp_eq(m, &[libc::IPPROTO_TCP as u8]);
        if let Some(port) = port {
            payload(m, Base::Transport, 2, 2);
            cmp_eq(m, &port.to_be_bytes());
        }
        payload(m, Base::Transport, 13, 1);
        bitwise_and(m, TCP_SYN | TCP_ACK);
        cmp_eq(m, &[TCP_SYN]);
        immediate(m, &mark.to_ne_bytes());
        meta_set(m, META_MARK);
    });
    m
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const META_MARK: u32 = 3;
const META_L4PROTO: u32 = 16;

#[derive(Clone, Copy)]
enum Base {
    Network = 1,
    Transport = 2,
}

/// One list element: `{ name, data { ... } }`.
fn expr(m: &mut Message, name: &str, data: impl FnOnce(&mut Message)) {
    m.nest(NLA_F_NESTED | NFTA_LIST_ELEM, |m| {
        m.attr_str(NFTA_EXPR_NAME, name)
            .nest(NLA_F_NESTED | NFTA_EXPR_DATA, data);
    });
}

fn value(m: &mut Message, ty: u16, bytes: &[u8]) {
    m.nest(NLA_F_NESTED | ty, |m| {
        m.attr(NFTA_DATA_VALUE, bytes);
    });
}

/// `[ payload load LENb @ BASE header + OFFSET => reg 1 ]`
fn payload(m: &mut Message, base: Base, offset: u32, len: u32) {
    expr(m, "payload", |m| {
        m.attr_be32(1, NFT_REG_1) // NFTA_PAYLOAD_DREG
            .attr_be32(2, base as u32) // NFTA_PAYLOAD_BASE
            .attr_be32(3, offset) // NFTA_PAYLOAD_OFFSET
            .attr_be32(4, len); // NFTA_PAYLOAD_LEN
    });
}

/// `[ cmp eq reg 1 VALUE ]`
fn cmp_eq(m: &mut Message, bytes: &[u8]) {
    expr(m, "cmp", |m| {
        m.attr_be32(1, NFT_REG_1) // NFTA_CMP_SREG
            .attr_be32(2, 0); // NFTA_CMP_OP: NFT_CMP_EQ
        value(m, 3, bytes); // NFTA_CMP_DATA
    });
}

/// `[ meta load KEY => reg 1 ]`
fn meta_load(m: &mut Message, key: u32) {
    expr(m, "meta", |m| {
        m.attr_be32(2, key) // NFTA_META_KEY
            .attr_be32(1, NFT_REG_1); // NFTA_META_DREG
    });
}

/// `[ meta set KEY with reg 1 ]`
fn meta_set(m: &mut Message, key: u32) {
    expr(m, "meta", |m| {
        m.attr_be32(2, key) // NFTA_META_KEY
            .attr_be32(3, NFT_REG_1); // NFTA_META_SREG
    });
}

/// `[ bitwise reg 1 = ( reg 1 & MASK ) ^ 0 ]` on one byte.
fn bitwise_and(m: &mut Message, mask: u8) {
    expr(m, "bitwise", |m| {
        m.attr_be32(1, NFT_REG_1) // NFTA_BITWISE_SREG
            .attr_be32(2, NFT_REG_1) // NFTA_BITWISE_DREG
            .attr_be32(6, 0) // NFTA_BITWISE_OP: NFT_BITWISE_BOOL
            .attr_be32(3, 1); // NFTA_BITWISE_LEN
        value(m, 4, &[mask]); // NFTA_BITWISE_MASK
        value(m, 5, &[0]); // NFTA_BITWISE_XOR
    });
}

/// `[ immediate reg 1 VALUE ]`
fn immediate(m: &mut Message, bytes: &[u8]) {
    expr(m, "immediate", |m| {
        m.attr_be32(1, NFT_REG_1); // NFTA_IMMEDIATE_DREG
        value(m, 2, bytes); // NFTA_IMMEDIATE_DATA
    });
}
