//! Holding remote clients: SYNs arriving on a real device, held the same
//! way as local ones.
//!
//! ```text
//! DEV ingress qdisc ffff:
//!   u32 prio 1 (ip) / prio 2 (ipv6): TCP SYN-without-ACK to PORT
//!     -> action mirred egress redirect dev ifb-DEV
//! ifb-DEV (ours, up): the plug tree (prio 1:, fifos, plug 40:, u32 -> 1:4)
//! ```
//!
//! tc ingress runs before netfilter, so no mark exists there yet: both the
//! redirect and the tree on the ifb classify with u32. Everything else that
//! arrives on DEV (other ports, other protocols, established connections,
//! ICMP) is not touched. A held SYN leaves the ifb on release and continues
//! up the stack as if it had just arrived.

use crate::error::{Error, Object, Result};
use crate::link;
use crate::nft::Family;
use crate::owner;
use crate::socket::Socket;
use crate::sys;
use crate::tc::{self, ingress, u32, TcObject, ETH_P_IP, ETH_P_IPV6};
use crate::tree::{self, Classifier, Config, MarkRule, Sources};

/// Filter priorities of the redirects, one per family.
const PRIO_V4: u16 = 1;
const PRIO_V6: u16 = 2;

/// Setup for an ingress tree on `dev`.
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

/// The device whose plug holds `dev`'s incoming SYNs.
pub fn ifb_of(dev: &str) -> String {
    link::ifb_name(dev)
}

/// What is on the device and its ifb, as far as the ingress path goes.
struct Present {
    ifb: Option<i32>,
    /// The ifb's alias, where its owner is recorded.
    alias: Option<String>,
    /// The device's ingress (or clsact) qdisc, if any.
    ingress: Option<TcObject>,
    /// Our redirect filters under `ffff:` (by family).
    redirects: Vec<Family>,
}

impl Present {
    fn read(rt: &mut Socket, dev: &str, ifindex: i32) -> Result<Present> {
        let ifb_name = link::ifb_name(dev);
        let ifb = sys::ifindex(&ifb_name).ok();
        let alias = match ifb {
            Some(i) => rt
                .request_replies(link::get(i as u32), &|| {
                    (format!("get link {ifb_name}"), Object::Other)
                })?
                .iter()
                .find_map(|p| link::alias(p)),
            None => None,
        };
        let qdiscs = rt.dump(tc::dump_qdiscs(ifindex), &|| {
            (format!("list qdiscs on {dev}"), Object::Other)
        })?;
        let ingress = qdiscs
            .iter()
            .filter_map(|b| TcObject::parse(b))
            .find(|q| q.ifindex == ifindex && q.parent == ingress::PARENT);
        let mut redirects = Vec::new();
        if ingress.is_some() {
            let filters = rt.dump(tc::dump_filters(ifindex, ingress::HANDLE), &|| {
                (format!("list ingress filters on {dev}"), Object::Other)
            })?;
            for f in filters.iter().filter_map(|b| TcObject::parse(b)) {
                let node = u32::from(f.handle) & 0xfff != 0;
                if f.kind == u32::KIND && node {
                    match (f.prio(), f.protocol()) {
                        (PRIO_V4, ETH_P_IP) => redirects.push(Family::Ipv4),
                        (PRIO_V6, ETH_P_IPV6) => redirects.push(Family::Ipv6),
                        _ => {}
                    }
                }
            }
        }
        redirects.dedup();
        Ok(Present {
            ifb,
            alias,
            ingress,
            redirects,
        })
    }
}

impl Present {
    /// The ifb's owner record, checked as the caller's (see `owner`).
    fn owned(&self, dev: &str, ifindex: i32, force: bool) -> Result<Option<owner::Record>> {
        match self.ifb {
            None => Ok(None),
            Some(_) => owner::check(
                &link::ifb_name(dev),
                (dev, ifindex),
                self.alias.as_deref(),
                force,
            )
            .map(Some),
        }
    }
}

/// May the caller plug and release `dev`'s ingress path? Only its
/// recorded owner may (root with `force`).
pub fn check_owner(dev: &str, force: bool) -> Result<()> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    Present::read(&mut rt, dev, ifindex)?.owned(dev, ifindex, force)?;
    Ok(())
}

/// Sets up the ifb, its plug tree, the ingress qdisc and the redirects.
/// Idempotent; all or nothing (a failure removes what this call added). A
/// device whose ingress qdisc is not ours (no ifb of ours beside it) is
/// refused, never replaced.
pub fn setup(cfg: &IngressConfig) -> Result<()> {
    let dev = cfg.dev.as_str();
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex)?;
    if let (Some(q), None) = (&present.ingress, present.ifb) {
        return Err(Error::NotOurs {
            dev: dev.to_owned(),
            what: format!("an {} qdisc", q.kind),
        });
    }
    present.owned(dev, ifindex, cfg.force)?;
    let mut added = Added::default();
    let result = build(cfg, ifindex, &mut rt, &present, &mut added);
    if result.is_err() {
        undo(dev, ifindex, &mut rt, &added);
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
    rt: &mut Socket,
    present: &Present,
    added: &mut Added,
) -> Result<()> {
    let dev = cfg.dev.as_str();
    let ifb = link::ifb_name(dev);
    let ifb_index = match present.ifb {
        Some(i) => i,
        None => {
            rt.request(link::add_ifb(&ifb), &|| {
                (format!("add ifb device {ifb}"), Object::Link("ifb"))
            })?;
            let i = sys::ifindex(&ifb)?;
            added.ifb = Some(i);
            i
        }
    };
    // Recorded first, so even a setup cut short leaves the ifb owned.
    rt.request(
        link::set_alias(ifb_index as u32, &owner::Record::mine(ifindex).to_alias()),
        &|| (format!("record the owner of {ifb}"), Object::Other),
    )?;
    rt.request(link::set_up(ifb_index as u32), &|| {
        (format!("set {ifb} up"), Object::Other)
    })?;

    // The plug tree on the ifb: every source (the ifb sees only what the
    // redirects send it), u32 (no netfilter mark on this path).
    added.tree = present.ifb.is_none();
    // The nf_tables mark rule is the lo tree's, never this one's.
    tree::setup_on(
        &Config {
            dev: ifb.clone(),
            limit: cfg.limit,
            classifier: Classifier::U32,
            sources: Sources::Any,
            // Only redirected SYNs reach the ifb: its plug takes them all.
            port: None,
        },
        MarkRule::NotOurs,
    )?;

    if present.ingress.is_none() {
        rt.request(ingress::add(ifindex), &|| {
            (
                format!("add ingress qdisc on {dev}"),
                Object::Qdisc(ingress::KIND),
            )
        })?;
        added.ingress = true;
    }
    // The redirects are replaced whole, so a setup for another port takes effect.
    for (family, prio, proto) in [
        (Family::Ipv4, PRIO_V4, ETH_P_IP),
        (Family::Ipv6, PRIO_V6, ETH_P_IPV6),
    ] {
        if present.redirects.contains(&family) {
            rt.request(
                tc::delete_filters(ifindex, ingress::HANDLE, prio, proto),
                &|| {
                    (
                        format!("replace the {} redirect on {dev}", family.name()),
                        Object::Filter(u32::KIND),
                    )
                },
            )?;
        }
        // One filter per port, all at the family's priority (so one
        // delete removes them together); none for every port.
        let ports: Vec<Option<u16>> = match cfg.ports.is_empty() {
            true => vec![None],
            false => cfg.ports.iter().copied().map(Some).collect(),
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
            rt.request(
                ingress::redirect(ifindex, prio, proto, &keys, ifb_index as u32),
                &|| {
                    (
                        format!(
                            "add u32 redirect of {} SYNs on {dev} to {ifb}",
                            family.name()
                        ),
                        Object::Filter(u32::KIND),
                    )
                },
            )?;
        }
        added.redirects = true;
    }
    Ok(())
}

/// Best effort: removes what a failed setup added, newest first.
fn undo(dev: &str, ifindex: i32, rt: &mut Socket, added: &Added) {
    let nothing = &|| (String::new(), Object::Other);
    if added.ingress {
        let _ = rt.request(ingress::delete(ifindex), nothing);
    } else if added.redirects {
        for (prio, proto) in [(PRIO_V4, ETH_P_IP), (PRIO_V6, ETH_P_IPV6)] {
            let _ = rt.request(
                tc::delete_filters(ifindex, ingress::HANDLE, prio, proto),
                nothing,
            );
        }
    }
    if added.tree {
        let _ = tree::teardown_on(&link::ifb_name(dev), MarkRule::NotOurs);
    }
    if let Some(i) = added.ifb {
        let _ = rt.request(link::delete(i as u32), nothing);
    }
}

/// Removes what `setup` adds: the ingress qdisc on `dev` (with its
/// filters) when the ifb of ours beside it shows it is ours, the ifb's
/// tree (releasing the plug first) and the ifb. Nothing else.
pub fn teardown(dev: &str, force: bool) -> Result<()> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex)?;
    let Some(ifb_index) = present.ifb else {
        return Ok(()); // nothing of ours
    };
    present.owned(dev, ifindex, force)?;
    if present.ingress.is_some() {
        rt.request(ingress::delete(ifindex), &|| {
            (
                format!("delete ingress qdisc on {dev}"),
                Object::Qdisc(ingress::KIND),
            )
        })?;
    }
    let ifb = link::ifb_name(dev);
    tree::teardown_on(&ifb, MarkRule::NotOurs)?;
    rt.request(link::delete(ifb_index as u32), &|| {
        (format!("delete {ifb}"), Object::Link("ifb"))
    })
}

/// What `qdisc status --ingress` reports beyond the ifb's tree.
#[derive(Debug, Clone)]
pub struct IngressStatus {
    pub dev: String,
    pub ifb: String,
    pub ifb_present: bool,
    /// Who owns the path, from the ifb's record (`None`: no record of ours).
    pub owner: Option<(u32, u32)>,
    /// The kind of the device's ingress-side qdisc, if any.
    pub ingress: Option<String>,
    /// Families with a redirect filter of ours.
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

pub fn status(dev: &str) -> Result<IngressStatus> {
    let ifindex = sys::ifindex(dev)?;
    let mut rt = Socket::route()?;
    let present = Present::read(&mut rt, dev, ifindex)?;
    let ifb = link::ifb_name(dev);
    let tree = match present.ifb {
        Some(_) => Some(tree::status(&ifb)?),
        None => None,
    };
    Ok(IngressStatus {
        dev: dev.to_owned(),
        ifb,
        ifb_present: present.ifb.is_some(),
        owner: present
            .alias
            .as_deref()
            .and_then(owner::Record::parse)
            .filter(|r| r.dev == ifindex)
            .map(|r| (r.uid, r.pid)),
        ingress: present.ingress.map(|q| q.kind),
        redirects: present.redirects.iter().map(|f| f.name()).collect(),
        tree,
    })
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
        let replies = self.rt.request_replies(link::get(ifindex), &|| {
            (format!("get link {ifb}"), Object::Other)
        })?;
        replies
            .iter()
            .find_map(|p| link::ifb_queued(p))
            .ok_or_else(|| Error::Protocol(format!("no counters for {ifb} in the kernel's answer")))
    }
}
