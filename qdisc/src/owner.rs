//! Who owns an ifb of ours, and which service it holds for: a record in
//! the ifb's alias (`IFLA_IFALIAS`).
//! Only a holder of CAP_NET_ADMIN can write an alias, so no other user can
//! forge one, and the kernel keeps it whatever happens to the process that
//! wrote it. The record names the owner's uid, the PID that set it up and
//! the device whose ingress it serves, so a device that merely has our
//! name (an admin's, or a second device whose long name cut alike) is
//! never taken for ours.

use crate::error::{Error, Result};

const TAG: &str = "reuse-plug:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    pub pid: u32,
    /// The ifindex of the device whose SYNs the ifb holds.
    pub dev: i32,
    /// The service's slot among the device's ingress filters (its redirects
    /// sit at priorities 2*slot+1 and 2*slot+2).
    pub slot: u16,
    /// The service's ports (empty: every port).
    pub ports: Vec<u16>,
}

impl Record {
    /// Ours: this process, for `dev`.
    pub fn mine(dev: i32, slot: u16, ports: &[u16]) -> Record {
        Record {
            uid: caller(),
            pid: std::process::id(),
            dev,
            slot,
            ports: ports.to_vec(),
        }
    }

    pub fn to_alias(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        format!(
            "{TAG} uid={} pid={} dev={} slot={} ports={}",
            self.uid,
            self.pid,
            self.dev,
            self.slot,
            if ports.is_empty() {
                "any".into()
            } else {
                ports.join(",")
            }
        )
    }

    pub fn parse(alias: &str) -> Option<Record> {
        let rest = alias.strip_prefix(TAG)?;
        let (mut uid, mut pid, mut dev, mut slot, mut ports) = (None, None, None, None, None);
        for kv in rest.split_whitespace() {
            match kv.split_once('=')? {
                ("uid", v) => uid = v.parse().ok(),
                ("pid", v) => pid = v.parse().ok(),
                ("dev", v) => dev = v.parse().ok(),
                ("slot", v) => slot = v.parse().ok(),
                ("ports", "any") => ports = Some(Vec::new()),
                ("ports", v) => ports = v.split(',').map(|p| p.parse().ok()).collect(),
                _ => return None,
            }
        }
        Some(Record {
            uid: uid?,
            pid: pid?,
            dev: dev?,
            slot: slot?,
            ports: ports?,
        })
    }

    /// The filter priorities of this service's redirects (IPv4, IPv6).
    pub fn prios(&self) -> (u16, u16) {
        prios(self.slot)
    }
}

/// The filter priorities of `slot`'s redirects (IPv4, IPv6).
pub fn prios(slot: u16) -> (u16, u16) {
    (2 * slot + 1, 2 * slot + 2)
}

/// How many services one device can carry: two filter priorities each,
/// in the kernel's 16 bits.
pub const MAX_SLOTS: u16 = u16::MAX / 2;

/// The real uid: who ran us, whatever capability the binary carries.
pub fn caller() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// May the caller act on `ifb`, which exists with `alias`, as the path of
/// device `dev`? Root may take another user's over with `force`; a
/// device with no record of ours, or ours for another device, is never
/// taken.
pub fn check_record(
    ifb: &str,
    dev: (&str, i32),
    record: Option<Record>,
    force: bool,
) -> Result<Record> {
    let not_ours = |what: String| Error::NotOurs {
        dev: dev.0.to_owned(),
        what,
    };
    let Some(record) = record else {
        return Err(not_ours(format!(
            "a device named {ifb} with no record of ours (its alias)"
        )));
    };
    if record.dev != dev.1 {
        return Err(not_ours(format!(
            "{ifb}, which serves another device (ifindex {})",
            record.dev
        )));
    }
    let me = caller();
    if record.uid != me && !(force && me == 0) {
        return Err(Error::Owned {
            what: format!("{ifb} (the ingress path of {})", dev.0),
            uid: record.uid,
            pid: record.pid,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: u32, dev: i32) -> Record {
        Record {
            uid,
            pid: 42,
            dev,
            slot: 2,
            ports: vec![8000, 8443],
        }
    }

    #[test]
    fn a_record_reads_back() {
        let r = record(1000, 3);
        assert_eq!(Record::parse(&r.to_alias()), Some(r.clone()));
        let any = Record { ports: vec![], ..r };
        assert_eq!(Record::parse(&any.to_alias()), Some(any));
        assert_eq!(record(1, 1).prios(), (5, 6));
        for bad in [
            "",
            "webserver uplink",
            "reuse-plug: uid=1",
            "reuse-plug: uid=x pid=1 dev=1 slot=0 ports=1",
            "reuse-plug: uid=1 pid=1 dev=1 slot=0 ports=1,x",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_owner_and_only_for_its_device() {
        let me = caller();
        let mine = Some(record(me, 3));
        assert!(check_record("ifb-x", ("x", 3), mine.clone(), false).is_ok());
        let e = check_record("ifb-x", ("x", 4), mine, true).unwrap_err();
        assert!(matches!(e, Error::NotOurs { .. }), "{e}");
        let e = check_record("ifb-x", ("x", 3), None, true).unwrap_err();
        assert!(matches!(e, Error::NotOurs { .. }), "{e}");
        let theirs = Some(record(me + 1, 3));
        let e = check_record("ifb-x", ("x", 3), theirs.clone(), false).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("belongs to uid {}", me + 1)),
            "{e}"
        );
        assert_eq!(
            check_record("ifb-x", ("x", 3), theirs, true).is_ok(),
            me == 0
        );
    }
}
