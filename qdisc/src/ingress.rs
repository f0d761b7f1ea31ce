//! Holding SYNs as they arrive on a device (remote clients on a real
//! device; local ones on `lo`), one service at a time.
//!
//! ```text
//! DEV ingress qdisc ffff: (shared by the services on DEV)
//!   service A: u32 prio 1 (ip) / 2 (ipv6): TCP SYN-without-ACK to A's ports
//!     -> action mirred egress redirect dev ifb-DEV-PORTA
//!   service B: u32 prio 3 / 4: ... -> ifb-DEV-PORTB
//! ifb-DEV-PORTA (ours, up, its owner in its alias): the plug tree
//!   (prio 1:, fifos, plug 40:, u32 -> 1:4)
//! ```
//!
//! Each service (a set of ports, named by its lowest) has its own ifb, so
//! its own plug and its own kernel counters: holding one never holds
//! another's SYNs, and tearing one down leaves the others working. A
//! service's redirects sit at a pair of filter priorities of its own (its
//! slot, recorded with its owner in the ifb's alias, see `owner`), so a
//! device carries up to 32,767 services. The ingress qdisc is added by the
//! first service and removed with the last.
//!
//! tc ingress runs before netfilter, so no mark exists there yet: both the
//! redirect and the tree on the ifb classify with u32. Everything else that
//! arrives on DEV (other ports, other protocols, established connections,
//! ICMP) is not touched. A held SYN leaves the ifb on release and continues
//! up the stack as if it had just arrived.

use crate::error::{Error, Object, Result};
use crate::link;
use crate::nft::Family;
use crate::owner::{self, Record};
use crate::socket::{Request, Socket};
use crate::sys;
use crate::tc::{self, ingress, u32, TcObject, ETH_P_IP, ETH_P_IPV6};
use crate::tree::{self, Classifier, Config, MarkRule, Sources};

/// Setup for one service's ingress path on `dev`.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub dev: String,
    /// The served ports (empty: SYNs to every port).
    pub ports: Vec<u16>,
    /// The plug's limit in bytes.
    pub limit: u32,
    /// As root, take over a path recorded as another user's.
    pub force: bool,
}

/// A service is named by its lowest port (0: every port).
fn key(ports: &[u16]) -> u16 {
    ports.iter().copied().min().unwrap_or(0)
}

/// The device whose plug holds the SYNs to `ports` arriving on `dev`.
pub fn ifb_of(dev: &str, ports: &[u16]) -> String {
    link::ifb_name(dev, key(ports))
}

/// An ifb of ours for the device, with its record.
#[derive(Debug, Clone)]
struct Ours {
    name: String,
    record: Record,
}

/// What is on the device, as far as its ingress paths go, seen from one
/// service's ifb.
struct Present {
    /// This service's ifb, if a device of that name exists.
    ifb: Option<i32>,
    /// Its record, if it has one of ours for this device.
    own: Option<Record>,
    /// The other services' ifbs on this device.
    others: Vec<Ours>,
    /// The device's ingress (or clsact) qdisc, if any.
    ingress: Option<TcObject>,
    /// The filters under `ffff:`: (priority, protocol).
    filters: Vec<(u16, u16)>,
}

impl Present {
    fn read(rt: &mut Socket, dev: &str, ifindex: i32, ifb_name: &str) -> Result<Present> {
        let ifb = sys::ifindex(ifb_name).ok();
        let links = rt.dump(Request::new(
            link::dump(),
            Object::Other,
            format_args!("list links"),
        ))?;
        let mut own = None;
        let mut others = Vec::new();
        for l in links.iter().filter_map(|b| link::listed(b)) {
            let record = l.alias.as_deref().and_then(Record::parse);
            if Some(l.index as i32) == ifb {
                own = record.filter(|r| r.dev == ifindex);
            } else if let Some(r) = record.filter(|r| r.dev == ifindex) {
                others.push(Ours {
                    name: l.name,
                    record: r,
                });
            }
        }
        let qdiscs = rt.dump(Request::new(
            tc::dump_qdiscs(ifindex),
            Object::Other,
            format_args!("list qdiscs on {dev}"),
        ))?;
        let ingress = qdiscs
            .iter()
            .filter_map(|b| TcObject::parse(b))
            .find(|q| q.ifindex == ifindex && q.parent == ingress::PARENT);
        let mut filters = Vec::new();
        if ingress.is_some() {
            let dumped = rt.dump(Request::new(
                tc::dump_filters(ifindex, ingress::HANDLE),
                Object::Other,
                format_args!("list ingress filters on {dev}"),
            ))?;
            for f in dumped.iter().filter_map(|b| TcObject::parse(b)) {
                let node = u32::from(f.handle) & 0xfff != 0;
                if f.kind == u32::KIND && node {
                    filters.push((f.prio(), f.protocol()));
                }
            }
        }
        filters.sort_unstable();
        filters.dedup();
        Ok(Present {
            ifb,
            own,
            others,
            ingress,
            filters,
        })
    }

    /// The ifb's owner record, checked as the caller's (see `owner`).
    fn owned(&self, dev: &str, ifindex: i32, ifb: &str, force: bool) -> Result<Option<Record>> {
        match self.ifb {
            None => Ok(None),
            Some(_) => owner::check_record(ifb, (dev, ifindex), self.own.clone(), force).map(Some),
        }
    }

    /// A slot no other service of ours uses and no filter sits in.
    fn free_slot(&self) -> Option<u16> {
        (0..owner::MAX_SLOTS).find(|s| {
            let (p4, p6) = owner::prios(*s);
            !self.others.iter().any(|o| o.record.slot == *s)
                && !self.filters.iter().any(|(p, _)| *p == p4 || *p == p6)
        })
    }

    /// Families with a redirect at `slot`'s priorities.
    fn redirects(&self, slot: u16) -> Vec<Family> {
        let (p4, p6) = owner::prios(slot);
        let mut v = Vec::new();
        if self.filters.contains(&(p4, ETH_P_IP)) {
            v.push(Family::Ipv4);
        }
        if self.filters.contains(&(p6, ETH_P_IPV6)) {
            v.push(Family::Ipv6);
        }
        v
    }
}

/// May the caller plug and release the path of `ports` on `dev`? Only its
/// recorded owner may (root with `force`).
pub fn check_owner(dev: &str, ports: &[u16], force: bool) -> Result<()> {
    let ifindex = sys::ifindex(dev)?;
    let ifb = ifb_of(dev, ports);
    let mut rt = Socket::route()?;
    Present::read(&mut rt, dev, ifindex, &ifb)?.owned(dev, ifindex, &ifb, force)?;
    Ok(())
}

/// Sets up the service's ifb, its plug tree, the device's ingress qdisc
/// (if it is the first service) and the service's redirects. Idempotent;
/// all or nothing (a failure removes what this call added). A device whose
/// ingress qdisc is not ours (no ifb of ours for it) is refused, never
/// replaced; another user's path is refused (root: `force`).
pub fn setup(cfg: &IngressConfig) -> Result<()> {
    let dev = cfg.dev.as_str();
    let ifindex = sys::ifindex(dev)?;
    let ifb = ifb_of(dev, &cfg.ports);
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex, &ifb)?;
    let ours_beside = present.ifb.is_some() || !present.others.is_empty();
    if let (Some(q), false) = (&present.ingress, ours_beside) {
        return Err(Error::NotOurs {
            dev: dev.to_owned(),
            what: format!("an {} qdisc", q.kind),
        });
    }
    let own = present.owned(dev, ifindex, &ifb, cfg.force)?;
    let slot = match own.as_ref().map(|r| r.slot) {
        Some(s) => s,
        None => present.free_slot().ok_or_else(|| Error::NotOurs {
            dev: dev.to_owned(),
            what: format!("{} services already", owner::MAX_SLOTS),
        })?,
    };
    let mut added = Added::default();
    let result = build(cfg, ifindex, &ifb, slot, &mut rt, &present, &mut added);
    if result.is_err() {
        undo(ifindex, &ifb, slot, &mut rt, &added);
    }
    result
}

#[derive(Default)]
struct Added {
    ifb: Option<i32>,
    tree: bool,
    ingress: bool,
    redirects: bool,
}

fn build(
    cfg: &IngressConfig,
    ifindex: i32,
    ifb: &str,
    slot: u16,
    rt: &mut Socket,
    present: &Present,
    added: &mut Added,
) -> Result<()> {
    let dev = cfg.dev.as_str();
    let ifb_index = match present.ifb {
        Some(i) => i,
        None => {
            rt.request(Request::new(
                link::add_ifb(ifb),
                Object::Link("ifb"),
                format_args!("add ifb device {ifb}"),
            ))?;
            let i = sys::ifindex(ifb)?;
            added.ifb = Some(i);
            i
        }
    };
    // Recorded first, so even a setup cut short leaves the ifb owned.
    let mut ports = cfg.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    rt.request(Request::new(
        link::set_alias(
            ifb_index as u32,
            &Record::mine(ifindex, slot, &ports).to_alias(),
        ),
        Object::Other,
        format_args!("record the owner of {ifb}"),
    ))?;
    rt.request(Request::new(
        link::set_up(ifb_index as u32),
        Object::Other,
        format_args!("set {ifb} up"),
    ))?;

    // The plug tree on the ifb: every source (the ifb sees only what the
    // redirects send it), u32 (no netfilter mark on this path).
    added.tree = present.ifb.is_none();
    // The nf_tables mark rule is the lo tree's, never this one's.
    tree::setup_on(
        &Config {
            dev: ifb.to_owned(),
            limit: cfg.limit,
            classifier: Classifier::U32,
            sources: Sources::Any,
            // Only redirected SYNs reach the ifb: its plug takes them all.
            port: None,
        },
        MarkRule::NotOurs,
    )?;

    if present.ingress.is_none() {
        rt.request(Request::new(
            ingress::add(ifindex),
            Object::Qdisc(ingress::KIND),
            format_args!("add ingress qdisc on {dev}"),
        ))?;
        added.ingress = true;
    }
    // The redirects are replaced whole, so a setup for other ports takes effect.
    let (p4, p6) = owner::prios(slot);
    let had = present.redirects(slot);
    for (family, prio, proto) in [(Family::Ipv4, p4, ETH_P_IP), (Family::Ipv6, p6, ETH_P_IPV6)] {
        if had.contains(&family) {
            rt.request(Request::new(
                tc::delete_filters(ifindex, ingress::HANDLE, prio, proto),
                Object::Filter(u32::KIND),
                format_args!("replace the {} redirect on {dev}", family.name()),
            ))?;
        }
        // One filter per port, all at the family's priority (so one
        // delete removes them together); none for every port.
        let ports: Vec<Option<u16>> = match ports.is_empty() {
            true => vec![None],
            false => ports.iter().copied().map(Some).collect(),
        };
        for port in ports {
            let mut keys = match family {
                Family::Ipv4 => u32::syn_keys_v4(None),
                Family::Ipv6 => u32::syn_keys_v6(None),
            };
            if let Some(port) = port {
                keys.push(match family {
                    Family::Ipv4 => u32::dport_key_v4(port),
                    Family::Ipv6 => u32::dport_key_v6(port),
                });
            }
            rt.request(Request::new(
                ingress::redirect(ifindex, prio, proto, &keys, ifb_index as u32),
                Object::Filter(u32::KIND),
                format_args!(
                    "add u32 redirect of {} SYNs on {dev} to {ifb}",
                    family.name()
                ),
            ))?;
        }
        added.redirects = true;
    }
    Ok(())
}

/// Best effort: removes what a failed setup added, newest first.
fn undo(ifindex: i32, ifb: &str, slot: u16, rt: &mut Socket, added: &Added) {
    if added.ingress {
        let _ = rt.request(Request::unnamed(ingress::delete(ifindex)));
    } else if added.redirects {
        let (p4, p6) = owner::prios(slot);
        for (prio, proto) in [(p4, ETH_P_IP), (p6, ETH_P_IPV6)] {
            let _ = rt.request(Request::unnamed(tc::delete_filters(
                ifindex,
                ingress::HANDLE,
                prio,
                proto,
            )));
        }
    }
    if added.tree {
        let _ = tree::teardown_on(ifb, MarkRule::NotOurs);
    }
    if let Some(i) = added.ifb {
        let _ = rt.request(Request::unnamed(link::delete(i as u32)));
    }
}

/// Removes what `setup` adds for the service of `ports`: its redirects,
/// its ifb's tree (releasing the plug first) and the ifb, and the
/// device's ingress qdisc when no other service of ours is left on it.
/// Nothing else; only the path's recorded owner may (root: `force`).
pub fn teardown(dev: &str, ports: &[u16], force: bool) -> Result<()> {
    let ifindex = sys::ifindex(dev)?;
    let ifb = ifb_of(dev, ports);
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex, &ifb)?;
    let Some(ifb_index) = present.ifb else {
        return Ok(()); // nothing of ours
    };
    let own = present
        .owned(dev, ifindex, &ifb, force)?
        .expect("an ifb that exists has a checked record");
    let (p4, p6) = own.prios();
    for (family, prio, proto) in [(Family::Ipv4, p4, ETH_P_IP), (Family::Ipv6, p6, ETH_P_IPV6)] {
        if present.redirects(own.slot).contains(&family) {
            rt.request(Request::new(
                tc::delete_filters(ifindex, ingress::HANDLE, prio, proto),
                Object::Filter(u32::KIND),
                format_args!("delete the {} redirect on {dev}", family.name()),
            ))?;
        }
    }
    tree::teardown_on(&ifb, MarkRule::NotOurs)?;
    rt.request(Request::new(
        link::delete(ifb_index as u32),
        Object::Link("ifb"),
        format_args!("delete {ifb}"),
    ))?;
    let left = present.filters.iter().any(|(p, _)| *p != p4 && *p != p6);
    if present.ingress.is_some() && present.others.is_empty() && !left {
        rt.request(Request::new(
            ingress::delete(ifindex),
            Object::Qdisc(ingress::KIND),
            format_args!("delete ingress qdisc on {dev}"),
        ))?;
    }
    Ok(())
}

/// What `qdisc status --ingress` reports of one service's path.
#[derive(Debug, Clone)]
pub struct IngressStatus {
    pub dev: String,
    pub ifb: String,
    pub ifb_present: bool,
    /// Who owns the path, from the ifb's record (`None`: no record of ours).
    pub owner: Option<(u32, u32)>,
    /// The service's ports, from its record (empty: every port).
    pub ports: Vec<u16>,
    /// The kind of the device's ingress-side qdisc, if any.
    pub ingress: Option<String>,
    /// Families with a redirect of this service's.
    pub redirects: Vec<&'static str>,
    /// The ifb's plug tree.
    pub tree: Option<tree::Status>,
}

impl IngressStatus {
    pub fn complete(&self) -> bool {
        self.ifb_present
            && self.ingress.is_some()
            && !self.redirects.is_empty()
            && self.tree.as_ref().is_some_and(|t| t.complete())
    }
}

/// The path of the service of `ports` on `dev`.
pub fn status(dev: &str, ports: &[u16]) -> Result<IngressStatus> {
    let ifindex = sys::ifindex(dev)?;
    let ifb = ifb_of(dev, ports);
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex, &ifb)?;
    let tree = match present.ifb {
        Some(_) => Some(tree::status(&ifb)?),
        None => None,
    };
    Ok(IngressStatus {
        dev: dev.to_owned(),
        ifb,
        ifb_present: present.ifb.is_some(),
        owner: present.own.as_ref().map(|r| (r.uid, r.pid)),
        ports: present
            .own
            .as_ref()
            .map(|r| r.ports.clone())
            .unwrap_or_default(),
        ingress: present.ingress.as_ref().map(|q| q.kind.clone()),
        redirects: present
            .own
            .as_ref()
            .map(|r| present.redirects(r.slot).iter().map(|f| f.name()).collect())
            .unwrap_or_default(),
        tree,
    })
}

/// Every service of ours on `dev`, by slot.
pub fn services(dev: &str) -> Result<Vec<IngressStatus>> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    // Seen from no service in particular: every ifb of ours is "another".
    let present = Present::read(&mut rt, dev, ifindex, "")?;
    let mut all = present.others.clone();
    all.sort_by_key(|o| o.record.slot);
    let mut out = Vec::new();
    for o in all {
        out.push(IngressStatus {
            dev: dev.to_owned(),
            ifb: o.name.clone(),
            ifb_present: true,
            owner: Some((o.record.uid, o.record.pid)),
            ports: o.record.ports.clone(),
            ingress: present.ingress.as_ref().map(|q| q.kind.clone()),
            redirects: present
                .redirects(o.record.slot)
                .iter()
                .map(|f| f.name())
                .collect(),
            tree: Some(tree::status(&o.name)?),
        });
    }
    Ok(out)
}

/// The packets an ifb of ours holds in its own queue (past its qdisc, not
/// yet passed up the stack), asked of the kernel on one reused socket: what
/// a supervisor waits on before a listener closes, since a SYN the plug let
/// through just before a hold may still be there.
pub struct IfbQueue {
    rt: Socket,
    ifb: String,
    ifindex: u32,
}

impl IfbQueue {
    /// `ifb` is the ifb device's name (`ifb_of(dev)`).
    pub fn open(ifb: &str) -> Result<IfbQueue> {
        Ok(IfbQueue {
            rt: Socket::route()?,
            ifb: ifb.to_owned(),
            ifindex: sys::ifindex(ifb)? as u32,
        })
    }

    pub fn queued(&mut self) -> Result<u64> {
        let (ifb, ifindex) = (&self.ifb, self.ifindex);
        let replies = self.rt.request_replies(Request::new(
            link::get(ifindex),
            Object::Other,
            format_args!("get link {ifb}"),
        ))?;
        replies
            .iter()
            .find_map(|p| link::ifb_queued(p))
            .ok_or_else(|| Error::Protocol(format!("no counters for {ifb} in the kernel's answer")))
    }
}
