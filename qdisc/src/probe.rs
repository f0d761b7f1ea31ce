//! Which of the kernel features the tree needs are here, found by trying
//! each in a throwaway network namespace (on its `lo`). It touches no real
//! device, and where modules can be loaded the attempt autoloads them.

use crate::error::{Error, Object, Result};
use crate::nft::{self, Family};
use crate::socket::{Request, Socket};
use crate::tc::{self, fw, handle, pfifo, plug, prio, u32, ETH_P_IP, TC_H_ROOT};
use crate::wire::Message;

/// One feature: `Ok(())` if the kernel accepted it, or why not.
pub type Support = std::result::Result<(), String>;

#[derive(Debug, Clone)]
pub struct Probe {
    pub features: Vec<(&'static str, Support)>,
}

impl Probe {
    pub fn supports(&self, name: &str) -> bool {
        self.features.iter().any(|(n, s)| *n == name && s.is_ok())
    }

    pub fn missing(&self) -> Vec<&'static str> {
        self.features
            .iter()
            .filter(|(_, s)| s.is_err())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Tries prio, pfifo, plug, fw, u32 and nf_tables. Needs CAP_SYS_ADMIN (to
/// make the namespace) and CAP_NET_ADMIN.
pub fn probe() -> Result<Probe> {
    let t = std::thread::spawn(|| -> Result<Probe> {
        crate::sys::unshare_netns().map_err(|source| Error::Io {
            op: "make a throwaway network namespace to probe in (needs CAP_SYS_ADMIN: run as root)"
                .into(),
            source,
        })?;
        let lo = crate::sys::ifindex("lo")?;
        let mut rt = Socket::route()?;
        let mut features = Vec::new();
        let try_qdisc = |rt: &mut Socket, kind: &'static str, m: Message| -> Support {
            let r = rt.request(Request::new(
                m,
                Object::Qdisc(kind),
                format_args!("add {kind} qdisc"),
            ));
            let _ = rt.request(Request::unnamed(tc::delete_root(lo)));
            r.map_err(|e| e.to_string())
        };
        features.push((
            "prio",
            try_qdisc(
                &mut rt,
                prio::KIND,
                prio::add(lo, handle(1, 0), TC_H_ROOT, 4),
            ),
        ));
        features.push((
            "pfifo",
            try_qdisc(
                &mut rt,
                pfifo::KIND,
                pfifo::add(lo, handle(1, 0), TC_H_ROOT, 10),
            ),
        ));
        features.push((
            "plug",
            try_qdisc(
                &mut rt,
                plug::KIND,
                plug::add(lo, handle(1, 0), TC_H_ROOT, 1000),
            ),
        ));

        // Classifiers hang off the ingress qdisc here, which every kernel
        // with tc has; that tests the classifier alone.
        let ingress = rt
            .request(Request::new(
                tc::ingress::add(lo),
                Object::Qdisc(tc::ingress::KIND),
                format_args!("add ingress qdisc"),
            ))
            .map_err(|e| e.to_string());
        let ingress_ok = ingress.is_ok();
        let parent = handle(0xffff, 0);
        let mut try_filter = |kind: &'static str, m: Message| -> Support {
            if !ingress_ok {
                return Err("untested: no ingress qdisc to attach a filter to".into());
            }
            let r = rt.request(Request::new(
                m,
                Object::Filter(kind),
                format_args!("add {kind} filter"),
            ));
            let _ = rt.request(Request::unnamed(tc::delete_filters(
                lo, parent, 1, ETH_P_IP,
            )));
            r.map_err(|e| e.to_string())
        };
        features.push((
            "fw",
            try_filter(fw::KIND, fw::add(lo, parent, 1, ETH_P_IP, 1, handle(1, 4))),
        ));
        features.push((
            "u32",
            try_filter(
                u32::KIND,
                u32::add(
                    lo,
                    parent,
                    1,
                    ETH_P_IP,
                    &u32::syn_keys_v4(None),
                    handle(1, 4),
                ),
            ),
        ));

        // The ingress path for remote clients: the ingress qdisc, an ifb
        // device, and a u32 filter with a mirred redirect to it.
        features.push(("ingress", ingress));
        let ifb = rt
            .request(Request::new(
                crate::link::add_ifb("ifb-probe"),
                Object::Link("ifb"),
                format_args!("add ifb device"),
            ))
            .and_then(|()| crate::sys::ifindex("ifb-probe"));
        let mirred = match (&ifb, ingress_ok) {
            (Ok(i), true) => {
                let r = rt.request(Request::new(
                    tc::ingress::redirect(lo, 1, ETH_P_IP, &u32::syn_keys_v4(None), *i as u32),
                    Object::Filter(u32::KIND),
                    format_args!("add u32 filter with mirred"),
                ));
                let _ = rt.request(Request::unnamed(tc::delete_filters(
                    lo, parent, 1, ETH_P_IP,
                )));
                r.map_err(|e| e.to_string())
            }
            (Err(_), _) => Err("untested: no ifb device to redirect to".into()),
            (_, false) => Err("untested: no ingress qdisc to attach a filter to".into()),
        };
        features.push(("ifb", ifb.as_ref().map(|_| ()).map_err(|e| e.to_string())));
        features.push(("mirred", mirred));

        let nf = Socket::netfilter().and_then(|mut nf| {
            nf.batch(
                nft::batch(nft::install(Family::Ipv4, None, 1)),
                nft::get_gen(),
                &|_| ("install an nf_tables route chain".into(), Object::NfTables),
            )
        });
        features.push(("nf_tables", nf.map_err(|e| e.to_string())));
        Ok(Probe { features })
    });
    t.join()
        .map_err(|_| Error::Protocol("the probe thread panicked".into()))?
}
