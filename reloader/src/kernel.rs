//! What the supervisor asks of the world, as two small traits, so the
//! reload protocol can run against fakes in unit tests (`supervisor::tests`):
//!
//! - [`Kernel`]: the kernel's answers (sock_diag, the receive backlogs, the
//!   ifb queues). [`Real`] asks the kernel.
//! - [`Spawn`]: starting a generation. [`Argv`] runs the server command.
//!
//! The strategy is the third ([`crate::swap::Swap`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::Error;
use crate::generation::Generation;
use crate::handoff::Handoff;
use crate::listeners::Listeners;

/// Every question is about the served ports (all of `--addr`'s): a
/// generation is one server however many ports it serves, and they are
/// watched, held and released as one.
pub trait Kernel {
    /// The listening sockets on `ports`, both families: inode and port.
    fn on_port(&mut self, ports: &[u16]) -> Result<BTreeMap<u32, u16>, Error>;
    /// Handshakes to `ports` that are half done.
    fn half_open(&mut self, ports: &[u16]) -> Result<usize, Error>;
    /// Inodes of established connections to `ports` (0: still queued).
    fn established(&mut self, ports: &[u16]) -> Result<Vec<u32>, Error>;
    /// Connections waiting in the accept queues of `listeners` (inodes of
    /// listeners on `ports`).
    fn accept_queued(&mut self, ports: &[u16], listeners: &BTreeSet<u32>) -> Result<u32, Error>;
    /// Each CPU's receive backlog, `None` when the kernel does not say.
    fn backlogs(&mut self) -> Result<Option<Vec<u64>>, Error>;
    /// Packets in the queues of our ifb devices (`--ingress`), `None`
    /// when there are none.
    fn ifb_queued(&mut self) -> Result<Option<u64>, Error>;
}

pub trait Spawn {
    /// What is started, for messages.
    fn name(&self) -> &str;
    fn spawn(
        &mut self,
        number: u64,
        notify: &Path,
        handoff: Option<&Handoff>,
    ) -> std::io::Result<Generation>;
}

/// The kernel itself.
pub struct Real {
    diag: Listeners,
    ifbs: Vec<qdisc::ingress::IfbQueue>,
}

impl Real {
    /// `ifbs`: the ifb devices of the ingress paths, if any.
    pub fn open(ifbs: &[String]) -> Result<Real, Error> {
        Ok(Real {
            diag: Listeners::open()?,
            ifbs: ifbs
                .iter()
                .map(|i| qdisc::ingress::IfbQueue::open(i))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Kernel for Real {
    fn on_port(&mut self, ports: &[u16]) -> Result<BTreeMap<u32, u16>, Error> {
        Ok(self.diag.on_ports(ports)?)
    }
    fn half_open(&mut self, ports: &[u16]) -> Result<usize, Error> {
        Ok(self.diag.half_open(ports)?)
    }
    fn established(&mut self, ports: &[u16]) -> Result<Vec<u32>, Error> {
        let mut all = Vec::new();
        for p in ports {
            all.extend(self.diag.established(*p)?);
        }
        Ok(all)
    }
    fn accept_queued(&mut self, ports: &[u16], listeners: &BTreeSet<u32>) -> Result<u32, Error> {
        Ok(self
            .diag
            .accept_queues(ports)?
            .into_iter()
            .filter(|(inode, _)| listeners.contains(inode))
            .map(|(_, queued)| queued)
            .sum())
    }
    fn backlogs(&mut self) -> Result<Option<Vec<u64>>, Error> {
        crate::softnet::backlogs().map_err(Error::Softnet)
    }
    fn ifb_queued(&mut self) -> Result<Option<u64>, Error> {
        if self.ifbs.is_empty() {
            return Ok(None);
        }
        let mut n = 0;
        for q in &mut self.ifbs {
            n += q.queued()?;
        }
        Ok(Some(n))
    }
}

/// Whether `net.ipv4.tcp_migrate_req` is on in our network namespace (the
/// server's). Absent (Linux < 5.14) means off.
pub fn migrate_req() -> Result<bool, Error> {
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(s) => Ok(s.trim() == "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Sysctl(e)),
    }
}

/// The server command, run by argv (no shell).
pub struct Argv(pub Vec<String>);

impl Spawn for Argv {
    fn name(&self) -> &str {
        &self.0[0]
    }
    fn spawn(
        &mut self,
        number: u64,
        notify: &Path,
        handoff: Option<&Handoff>,
    ) -> std::io::Result<Generation> {
        Generation::spawn(number, &self.0, notify, handoff)
    }
}
