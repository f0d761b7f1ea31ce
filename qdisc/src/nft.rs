//! The SYN mark rule as an nf_tables table of our own, encoded for
//! NETLINK_NETFILTER with netlink-packet-netfilter's nf_tables types. Pure
//! data; `socket` sends the batch.
//!
//! For IPv4 and source 127.0.0.1 the table is what this nft script makes:
//!
//! ```text
//! add table ip reuse_plug
//! add chain ip reuse_plug output { type route hook output priority mangle; policy accept; }
//! add rule ip reuse_plug output ip saddr 127.0.0.1 tcp flags & (syn|ack) == syn meta mark set meta mark or 0x1000000
//! ```
//!
//! The rule sets one bit of ours and keeps every other bit of the packet's
//! mark (a connection's SO_MARK, another tool's marks) as it was.
//!
//! the equivalent of the seed's `iptables -t mangle -I OUTPUT -p tcp -s
//! 127.0.0.1 --syn -j MARK --set-mark 1`, in a table that is ours alone
//! (iptables-nft's own `mangle` table is never written to).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, GenMessage, Hook,
    InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, TableAttribute, TableFlags, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::wire::Message;

pub const TABLE: &str = "reuse_plug";
pub const CHAIN: &str = "output";

/// nfnetlink's subsystem id for nf_tables (batch markers name it in res_id).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `priority mangle`.
const NF_IP_PRI_MANGLE: i32 = -150;
const NF_ACCEPT: u32 = 1;

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

    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Ipv4 => NetfilterProtoFamily::IPv4,
            Family::Ipv6 => NetfilterProtoFamily::IPv6,
        }
    }
}

fn msg(flags: u16, family: NetfilterProtoFamily, inner: NfTablesMessage) -> Message {
    let m = NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), inner);
    Message::encode(flags, m)
}

/// Wraps messages in BATCH_BEGIN ... BATCH_END: one transaction, all or nothing.
pub fn batch(body: Vec<Message>) -> Vec<Message> {
    let mut all = Vec::with_capacity(body.len() + 2);
    all.push(batch_marker(ControlMessage::BatchBegin));
    all.extend(body);
    all.push(batch_marker(ControlMessage::BatchEnd));
    all
}

fn batch_marker(marker: ControlMessage) -> Message {
    // Batch markers are not nf_tables messages: res_id names the subsystem.
    let header = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
    Message::encode(NLM_F_REQUEST, NetfilterMessage::new(header, marker))
}

fn table(attributes: Vec<TableAttribute>) -> TableMessage {
    let mut t = TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.into())],
    };
    t.attributes.extend(attributes);
    t
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
    let f = family.proto();
    let new_table = || {
        let t = table(vec![TableAttribute::Flags(TableFlags::empty())]);
        msg(NLM_F_REQUEST, f, NfTablesMessage::NewTable(t))
    };
    let mut out = vec![new_table(), delete_table_body(family), new_table()];

    let chain = ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.into()),
            ChainAttribute::Name(CHAIN.into()),
            ChainAttribute::Type("route".into()),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Hook(vec![
                Hook::Number(InetHookNumber::LocalOut.into()),
                Hook::Priority(NF_IP_PRI_MANGLE as u32),
            ]),
        ],
    };
    out.push(msg(
        NLM_F_REQUEST | NLM_F_CREATE,
        f,
        NfTablesMessage::NewChain(chain),
    ));

    match sources {
        None => out.push(rule(family, None, port, mark)),
        Some(list) => out.extend(list.iter().map(|a| rule(family, Some(*a), port, mark))),
    }
    out
}

fn delete_table_body(family: Family) -> Message {
    msg(
        NLM_F_REQUEST,
        family.proto(),
        NfTablesMessage::DeleteTable(table(vec![])),
    )
}

/// Equivalent to `nft delete table FAMILY reuse_plug`, as its own batch.
pub fn delete_table(family: Family) -> Vec<Message> {
    batch(vec![delete_table_body(family)])
}

/// Asks for our table (the reply is the table or ENOENT).
pub fn get_table(family: Family) -> Message {
    msg(
        NLM_F_REQUEST | NLM_F_ACK,
        family.proto(),
        NfTablesMessage::GetTable(table(vec![])),
    )
}

/// A request with an ACK, sent after a batch: batch messages ask for no
/// ACK (as nft's do), and this one's answer proves the batch was processed.
pub fn get_gen() -> Message {
    msg(
        NLM_F_REQUEST | NLM_F_ACK,
        NetfilterProtoFamily::Unspec,
        NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
    )
}

/// `[ip saddr ADDR] [tcp dport PORT] tcp flags & (syn|ack) == syn meta mark set meta mark or MARK`.
fn rule(family: Family, source: Option<IpAddr>, port: Option<u16>, mark: u32) -> Message {
    let mut e: Vec<Expressions> = Vec::new();
    match source {
        Some(IpAddr::V4(a)) => {
            e.push(payload(Base::Network, 12, 4));
            e.push(cmp_eq(&a.octets()));
        }
        Some(IpAddr::V6(a)) => {
            e.push(payload(Base::Network, 8, 16));
            e.push(cmp_eq(&a.octets()));
        }
        None => {}
    }
    e.push(Expressions::Meta(vec![
        Meta::Key(MetaKey::L4Proto),
        Meta::DestinationRegister(Register::Reg1),
    ]));
    e.push(cmp_eq(&[libc::IPPROTO_TCP as u8]));
    if let Some(port) = port {
        e.push(payload(Base::Transport, 2, 2));
        e.push(cmp_eq(&port.to_be_bytes()));
    }
    e.push(payload(Base::Transport, 13, 1));
    e.push(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Op(0), // NFT_BITWISE_BOOL: (reg & mask) ^ xor
        Bitwise::Length(1),
        Bitwise::Mask(DataAttribute::Value(vec![TCP_SYN | TCP_ACK])),
        Bitwise::Xor(DataAttribute::Value(vec![0])),
    ]));
    e.push(cmp_eq(&[TCP_SYN]));
    // mark | MARK, as nft encodes it: (mark & !MARK) ^ MARK.
    e.push(Expressions::Meta(vec![
        Meta::Key(MetaKey::Mark),
        Meta::DestinationRegister(Register::Reg1),
    ]));
    e.push(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Op(0),
        Bitwise::Length(4),
        Bitwise::Mask(DataAttribute::Value((!mark).to_ne_bytes().to_vec())),
        Bitwise::Xor(DataAttribute::Value(mark.to_ne_bytes().to_vec())),
    ]));
    e.push(Expressions::Meta(vec![
        Meta::Key(MetaKey::Mark),
        Meta::SourceRegister(Register::Reg1),
    ]));
    let rule = RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.into()),
            RuleAttribute::Chain(CHAIN.into()),
            RuleAttribute::Expressions(e.into_iter().map(ListAttribute::from).collect()),
        ],
    };
    msg(
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
        family.proto(),
        NfTablesMessage::NewRule(rule),
    )
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy)]
enum Base {
    Network = 1,
    Transport = 2,
}

/// `[ payload load LENb @ BASE header + OFFSET => reg 1 ]`
fn payload(base: Base, offset: u32, len: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base as u32),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

/// `[ cmp eq reg 1 VALUE ]`
fn cmp_eq(bytes: &[u8]) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(bytes.to_vec())),
    ])
}
