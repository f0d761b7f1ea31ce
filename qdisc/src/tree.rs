//! The plug tree on one device, as a whole: set it up (idempotent, all or
//! nothing), tear it down (exactly what setup adds), and report on it.
//!
//! ```text
//! prio 1: root, 4 bands
//! ├── 1:1  pfifo 10: limit 1000
//! ├── 1:2  pfifo 20: limit 1000
//! ├── 1:3  pfifo 30: limit 1000
//! └── 1:4  plug 40: limit 1 MiB   <- new-connection SYNs, by the classifier
//! classifier fw:  fw filter handle 1 -> 1:4 (prio 1 ip, prio 2 ipv6)
//!                 + nf_tables tables `ip reuse_plug`, `ip6 reuse_plug` that mark SYNs 1
//! classifier u32: u32 filters matching SYN-without-ACK -> 1:4 (prio 1 ip, prio 2 ipv6)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Object, Result};
use crate::nft::{self, Family};
use crate::socket::{Request, Socket};
use crate::sys;
use crate::tc::{
    self, fw, handle, pfifo, plug, prio, u32, Handle, TcObject, ETH_P_IP, ETH_P_IPV6, TC_H_ROOT,
};

pub const ROOT: Handle = handle(1, 0);
pub const BANDS: i32 = 4;
pub const PLUG: Handle = handle(0x40, 0);
pub const PLUG_CLASS: Handle = handle(1, 4);
/// The pfifos on bands 1-3: (handle, parent class).
pub const FIFOS: [(Handle, Handle); 3] = [
    (handle(0x10, 0), handle(1, 1)),
    (handle(0x20, 0), handle(1, 2)),
    (handle(0x30, 0), handle(1, 3)),
];
pub const FIFO_LIMIT: u32 = 1000;
pub const DEFAULT_LIMIT: u32 = 1 << 20;
/// The mark bit the nf_tables rule sets (leaving the others) and the fw
/// filter matches under the same mask. Bit 24: clear of kube-proxy's
/// 0x4000/0x8000 and of Cilium's 0x0f00.
pub const MARK: u32 = 1 << 24;
/// Filter priorities: one per address family.
const PRIO_V4: u16 = 1;
const PRIO_V6: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classifier {
    /// fw filter on a mark set by our nf_tables rule (the seed's way).
    Fw,
    /// u32 filter matching SYN-without-ACK; no netfilter needed.
    U32,
}

impl Classifier {
    pub fn kind(self) -> &'static str {
        match self {
            Classifier::Fw => fw::KIND,
            Classifier::U32 => u32::KIND,
        }
    }
}

impl std::str::FromStr for Classifier {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fw" => Ok(Classifier::Fw),
            "u32" => Ok(Classifier::U32),
            other => Err(format!("unknown classifier {other:?}: use fw or u32")),
        }
    }
}

/// Whose SYNs are held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sources {
    /// SYNs from any source address, IPv4 and IPv6.
    Any,
    /// SYNs from these source addresses only.
    Only(Vec<IpAddr>),
}

impl Default for Sources {
    /// Local clients, as the seed: 127.0.0.1 and ::1.
    fn default() -> Self {
        Sources::Only(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ])
    }
}

impl Sources {
    /// The families covered, with their sources (`None` = any source).
    fn families(&self) -> Vec<(Family, Option<Vec<IpAddr>>)> {
        match self {
            Sources::Any => vec![(Family::Ipv4, None), (Family::Ipv6, None)],
            Sources::Only(list) => [Family::Ipv4, Family::Ipv6]
                .into_iter()
                .filter_map(|f| {
                    let of: Vec<IpAddr> =
                        list.iter().copied().filter(|a| family_of(a) == f).collect();
                    (!of.is_empty()).then_some((f, Some(of)))
                })
                .collect(),
        }
    }
}

fn family_of(a: &IpAddr) -> Family {
    match a {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn filter_slot(f: Family) -> (u16, u16) {
    match f {
        Family::Ipv4 => (PRIO_V4, ETH_P_IP),
        Family::Ipv6 => (PRIO_V6, ETH_P_IPV6),
    }
}

/// Everything setup needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub dev: String,
    /// The plug's limit in bytes (link-layer headers included).
    pub limit: u32,
    pub classifier: Classifier,
    pub sources: Sources,
    /// Hold only SYNs to this destination port (`None`: every port).
    pub port: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dev: "lo".into(),
            limit: DEFAULT_LIMIT,
            classifier: Classifier::Fw,
            sources: Sources::default(),
            port: None,
        }
    }
}

/// What is on the device now, as far as our tree goes.
#[derive(Debug, Clone, Default)]
struct Present {
    root: Option<TcObject>,
    fifos: [bool; 3],
    plug: Option<TcObject>,
    /// Filters under 1: with a real handle (not chain heads).
    filters: Vec<TcObject>,
}

impl Present {
    fn read(rt: &mut Socket, ifindex: i32, dev: &str) -> Result<Present> {
        let mut p = Present::default();
        let qdiscs = rt.dump(Request::new(
            tc::dump_qdiscs(ifindex),
            Object::Other,
            format_args!("list qdiscs on {dev}"),
        ))?;
        for q in qdiscs
            .iter()
            .filter_map(|b| TcObject::parse(b))
            .filter(|q| q.ifindex == ifindex)
        {
            if q.parent == TC_H_ROOT {
                p.root = Some(q.clone());
            }
            for (i, (h, parent)) in FIFOS.iter().enumerate() {
                if q.handle == *h && q.parent == *parent && q.kind == pfifo::KIND {
                    p.fifos[i] = true;
                }
            }
            if q.handle == PLUG && q.parent == PLUG_CLASS && q.kind == plug::KIND {
                p.plug = Some(q);
            }
        }
        if p.is_ours() {
            let filters = rt.dump(Request::new(
                tc::dump_filters(ifindex, ROOT),
                Object::Other,
                format_args!("list filters on {dev}"),
            ))?;
            p.filters = filters
                .iter()
                .filter_map(|b| TcObject::parse(b))
                .filter(|f| {
                    let h = u32::from(f.handle);
                    // u32's hash tables and buckets come back as filters too;
                    // ours are the nodes (a handle with a node id).
                    h != 0 && (f.kind != u32::KIND || h & 0xfff != 0)
                })
                .collect();
        }
        Ok(p)
    }

    /// Our tree is the root: prio 1: with our plug 40: under 1:4. An
    /// admin's own `root handle 1: prio` (no plug of that shape) is not
    /// ours: never set up over, never torn down.
    fn is_ours(&self) -> bool {
        self.plug.is_some()
            && self
                .root
                .as_ref()
                .is_some_and(|r| r.kind == prio::KIND && r.handle == ROOT)
    }

    fn has_filter(&self, kind: &str, f: Family) -> bool {
        let (prio, proto) = filter_slot(f);
        self.filters
            .iter()
            .any(|x| x.kind == kind && x.prio() == prio && x.protocol() == proto)
    }

    fn has_other_filter(&self, kind: &str, f: Family) -> bool {
        let (prio, proto) = filter_slot(f);
        self.filters
            .iter()
            .any(|x| x.kind != kind && x.prio() == prio && x.protocol() == proto)
    }
}

/// What one setup call added, to undo exactly that on failure.
#[derive(Default)]
struct Added {
    root: bool,
    fifos: Vec<(Handle, Handle)>,
    plug: bool,
    filters: Vec<Family>,
    tables: Vec<Family>,
}

/// Builds the tree on `cfg.dev`. Idempotent: what is already there is kept,
/// what is missing is added. All or nothing: on failure, whatever this call
/// added is removed again. The plug is left released.
pub fn setup(cfg: &Config) -> Result<()> {
    setup_on(cfg, MarkRule::Ours)
}

/// Whether this tree owns the nf_tables mark rule. The rule is one per
/// network namespace (not per device): the tree on `lo` owns it; the tree
/// on an ingress path's ifb (u32, no netfilter) must leave it alone, or it
/// would delete the rule the `lo` tree's fw filter depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkRule {
    Ours,
    NotOurs,
}

/// `setup`, saying whether this tree owns the mark rule.
pub(crate) fn setup_on(cfg: &Config, mark_rule: MarkRule) -> Result<()> {
    let ifindex = sys::ifindex(&cfg.dev)?;
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, ifindex, &cfg.dev)?;
    if let Some(root) = &present.root {
        if !present.is_ours() && root.handle != handle(0, 0) {
            return Err(Error::NotOurs {
                dev: cfg.dev.clone(),
                what: format!(
                    "a root qdisc {} {}",
                    root.kind,
                    tc::show_handle(root.handle)
                ),
            });
        }
    }
    let mut added = Added::default();
    let result = build(cfg, ifindex, &mut rt, &present, &mut added, mark_rule);
    if result.is_err() {
        undo(ifindex, &mut rt, &added);
    }
    result
}

fn build(
    cfg: &Config,
    ifindex: i32,
    rt: &mut Socket,
    present: &Present,
    added: &mut Added,
    mark_rule: MarkRule,
) -> Result<()> {
    let dev = cfg.dev.as_str();
    if !present.is_ours() {
        rt.request(Request::new(
            prio::add(ifindex, ROOT, TC_H_ROOT, BANDS),
            Object::Qdisc(prio::KIND),
            format_args!("add prio qdisc 1: as root of {dev}"),
        ))?;
        added.root = true;
    }
    for (i, &(h, parent)) in FIFOS.iter().enumerate() {
        if added.root || !present.fifos[i] {
            rt.request(Request::new(
                pfifo::add(ifindex, h, parent, FIFO_LIMIT),
                Object::Qdisc(pfifo::KIND),
                format_args!("add pfifo qdisc {} on {dev}", tc::show_handle(h)),
            ))?;
            added.fifos.push((h, parent));
        }
    }
    if added.root || present.plug.is_none() {
        rt.request(Request::new(
            plug::add(ifindex, PLUG, PLUG_CLASS, cfg.limit),
            Object::Qdisc(plug::KIND),
            format_args!("add plug qdisc 40: on {dev}"),
        ))?;
        added.plug = true;
        // A new plug starts buffering; nothing reaches it before the filters
        // below exist, and it must be open by then.
        rt.request(Request::new(
            plug::action(ifindex, PLUG, PLUG_CLASS, plug::Action::ReleaseIndefinite),
            Object::Qdisc(plug::KIND),
            format_args!("release the new plug on {dev}"),
        ))?;
        crate::state::Record::for_dev(dev).set(false);
    }

    let kind = cfg.classifier.kind();
    for (family, sources) in cfg.sources.families() {
        let (prio, proto) = filter_slot(family);
        if !added.root && present.has_other_filter(kind, family) {
            // The other classifier's filter from an earlier setup: replace it.
            rt.request(Request::new(
                tc::delete_filters(ifindex, ROOT, prio, proto),
                Object::Other,
                format_args!("remove the old {} filter on {dev}", family.name()),
            ))?;
        }
        if !added.root && present.has_filter(kind, family) {
            if cfg.classifier == Classifier::Fw {
                continue; // the port lives in the mark rule, replaced below
            }
            // A u32 filter's port is in its keys: replace it, so a setup for
            // another port (or for every port) takes effect.
            rt.request(Request::new(
                tc::delete_filters(ifindex, ROOT, prio, proto),
                Object::Filter(u32::KIND),
                format_args!("replace the {} u32 filter on {dev}", family.name()),
            ))?;
        }
        match cfg.classifier {
            Classifier::Fw => {
                rt.request(Request::new(
                    fw::add(ifindex, ROOT, prio, proto, MARK, PLUG_CLASS),
                    Object::Filter(fw::KIND),
                    format_args!("add fw filter ({}) on {dev}", family.name()),
                ))?;
            }
            Classifier::U32 => {
                let key_sets: Vec<Vec<u32::Key>> = match &sources {
                    None => vec![keys(family, None)],
                    Some(list) => list.iter().map(|a| keys(family, Some(*a))).collect(),
                };
                let key_sets = key_sets.into_iter().map(|mut k| {
                    if let Some(port) = cfg.port {
                        k.push(match family {
                            Family::Ipv4 => u32::dport_key_v4(port),
                            Family::Ipv6 => u32::dport_key_v6(port),
                        });
                    }
                    k
                });
                for k in key_sets {
                    rt.request(Request::new(
                        u32::add(ifindex, ROOT, prio, proto, &k, PLUG_CLASS),
                        Object::Filter(u32::KIND),
                        format_args!("add u32 filter ({}) on {dev}", family.name()),
                    ))?;
                }
            }
        }
        added.filters.push(family);
    }

    // The mark rule: installed (or replaced) whole with fw, absent with u32.
    if mark_rule == MarkRule::NotOurs {
        return Ok(());
    }
    let mut nf = None;
    for (family, sources) in cfg.sources.families() {
        let nf = match &mut nf {
            Some(s) => s,
            None => nf.insert(Socket::netfilter()?),
        };
        let existed = table_exists(nf, family)?;
        match cfg.classifier {
            Classifier::Fw => {
                let body = nft::install_for_port(family, sources.as_deref(), cfg.port, MARK);
                nf.batch(nft::batch(body), nft::get_gen(), &|_| {
                    (
                        format!("install nf_tables table {} {}", family.name(), nft::TABLE),
                        Object::NfTables,
                    )
                })?;
                if !existed {
                    added.tables.push(family);
                }
            }
            Classifier::U32 if existed => delete_table(nf, family)?,
            Classifier::U32 => {}
        }
    }
    Ok(())
}

fn keys(f: Family, source: Option<IpAddr>) -> Vec<u32::Key> {
    match (f, source) {
        (Family::Ipv4, Some(IpAddr::V4(a))) => u32::syn_keys_v4(Some(a)),
        (Family::Ipv6, Some(IpAddr::V6(a))) => u32::syn_keys_v6(Some(a)),
        (Family::Ipv4, _) => u32::syn_keys_v4(None),
        (Family::Ipv6, _) => u32::syn_keys_v6(None),
    }
}

/// Best effort: removes what a failed setup added, newest first.
fn undo(ifindex: i32, rt: &mut Socket, added: &Added) {
    if !added.tables.is_empty() {
        if let Ok(mut nf) = Socket::netfilter() {
            for f in &added.tables {
                let _ = delete_table(&mut nf, *f);
            }
        }
    }
    if added.root {
        let _ = rt.request(Request::unnamed(tc::delete_root(ifindex)));
        return;
    }
    for f in &added.filters {
        let (prio, proto) = filter_slot(*f);
        let _ = rt.request(Request::unnamed(tc::delete_filters(
            ifindex, ROOT, prio, proto,
        )));
    }
    if added.plug {
        let _ = rt.request(Request::unnamed(tc::delete_qdisc(
            ifindex, PLUG, PLUG_CLASS,
        )));
    }
    for (h, parent) in &added.fifos {
        let _ = rt.request(Request::unnamed(tc::delete_qdisc(ifindex, *h, *parent)));
    }
}

fn table_exists(nf: &mut Socket, family: Family) -> Result<bool> {
    match nf.request_replies(Request::new(
        nft::get_table(family),
        Object::NfTables,
        format_args!("look up nf_tables table {} {}", family.name(), nft::TABLE),
    )) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes our table of one family; a missing table is not an error.
fn delete_table(nf: &mut Socket, family: Family) -> Result<()> {
    match nf.batch(nft::delete_table(family), nft::get_gen(), &|_| {
        (
            format!("delete nf_tables table {} {}", family.name(), nft::TABLE),
            Object::NfTables,
        )
    }) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Removes exactly what setup adds: our prio root (with its children and
/// filters; the plug is released first so nothing held is dropped) and our
/// nf_tables tables. Missing pieces are fine; a root that is not ours and
/// other tables are never touched.
pub fn teardown(dev: &str) -> Result<()> {
    teardown_on(dev, MarkRule::Ours)
}

/// `teardown`, saying whether this tree owns the mark rule.
pub(crate) fn teardown_on(dev: &str, mark_rule: MarkRule) -> Result<()> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, ifindex, dev)?;
    if present.is_ours() {
        if present.plug.is_some() {
            rt.request(Request::new(
                plug::action(ifindex, PLUG, PLUG_CLASS, plug::Action::ReleaseIndefinite),
                Object::Qdisc(plug::KIND),
                format_args!("release the plug on {dev}"),
            ))?;
        }
        rt.request(Request::new(
            tc::delete_root(ifindex),
            Object::Qdisc(prio::KIND),
            format_args!("delete prio qdisc 1: on {dev}"),
        ))?;
    }
    crate::state::Record::for_dev(dev).set(false);
    if mark_rule == MarkRule::NotOurs {
        return Ok(());
    }
    match Socket::netfilter() {
        Ok(mut nf) => {
            for f in [Family::Ipv4, Family::Ipv6] {
                delete_table(&mut nf, f)?;
            }
            Ok(())
        }
        // No nf_tables in this kernel: then there is no table of ours either.
        Err(e) if e.is_unsupported() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The plug's counters, from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlugStats {
    /// Packets and bytes held now.
    pub held_packets: u32,
    pub held_bytes: u32,
    pub drops: u32,
    /// Packets and bytes that went through band 4 (released by the plug).
    pub sent_packets: u32,
    pub sent_bytes: u64,
}

/// What `qdisc status` reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub dev: String,
    /// Our prio 1: is the root.
    pub root: bool,
    /// The root qdisc's kind when it is not ours ("noqueue" for an untouched lo).
    pub other_root: Option<String>,
    pub fifos: [bool; 3],
    pub plug: Option<PlugStats>,
    /// Classifier filters found: (kind, family name).
    pub filters: Vec<(String, &'static str)>,
    /// Our nf_tables tables found, by family name.
    pub tables: Vec<&'static str>,
    /// Whether the plug is buffering as recorded when it was last toggled
    /// (the kernel does not report it); `None` when nothing was recorded.
    pub buffering: Option<bool>,
}

impl Status {
    /// The whole tree is there: root, three fifos, plug and at least one
    /// classifier filter (with its mark rule when it is fw).
    pub fn complete(&self) -> bool {
        let fw = self.filters.iter().any(|(k, _)| k == fw::KIND);
        self.root
            && self.fifos.iter().all(|b| *b)
            && self.plug.is_some()
            && !self.filters.is_empty()
            && (!fw || !self.tables.is_empty())
    }

    /// The classifier in use, if any.
    pub fn classifier(&self) -> Option<Classifier> {
        self.filters.first().and_then(|(k, _)| k.parse().ok())
    }
}

pub fn status(dev: &str) -> Result<Status> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    let p = Present::read(&mut rt, ifindex, dev)?;
    let ours = p.is_ours();
    let mut tables = Vec::new();
    if let Ok(mut nf) = Socket::netfilter() {
        for f in [Family::Ipv4, Family::Ipv6] {
            if table_exists(&mut nf, f).unwrap_or(false) {
                tables.push(f.name());
            }
        }
    }
    let family_name = |proto: u16| if proto == ETH_P_IPV6 { "ip6" } else { "ip" };
    let mut filters: Vec<(String, &'static str)> = p
        .filters
        .iter()
        .map(|f| (f.kind.clone(), family_name(f.protocol())))
        .collect();
    filters.dedup();
    Ok(Status {
        dev: dev.to_owned(),
        root: ours,
        other_root: p.root.as_ref().filter(|_| !ours).map(|r| r.kind.clone()),
        fifos: if ours { p.fifos } else { [false; 3] },
        plug: p.plug.filter(|_| ours).map(|q| PlugStats {
            held_packets: q.qlen,
            held_bytes: q.backlog,
            drops: q.drops,
            sent_packets: q.packets,
            sent_bytes: q.bytes,
        }),
        filters,
        tables,
        buffering: crate::state::recorded(dev),
    })
}
