//! How new connections are protected while the SO_REUSEPORT group changes.
//! A strategy says what it does when a generation closes (`AtClose`); one
//! that holds is called `hold` just before a listener leaves the group and
//! `release` right after the kernel shows it left (or at the hold limit).

use std::net::SocketAddr;
use std::time::Duration;

use qdisc::Plug;

use crate::error::Error;
use crate::generation::Generation;

/// What a strategy does when a generation closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtClose {
    /// New connections wait (`hold`/`release`) while the listener leaves;
    /// half-open handshakes are waited out.
    Hold,
    /// Nothing: the listener leaves unprotected (none; migrate, whose
    /// kernel hands the leftovers on).
    Nothing,
    /// Every generation has the same sockets (handoff): the group never
    /// changes, so a close has nothing to wait for.
    Shared,
    /// The closing generation gets no new connection already (`cut_over`):
    /// its accept queue is waited out, the kernel migrates the rest.
    Steered,
}

pub trait Swap {
    fn name(&self) -> &'static str;
    fn at_close(&self) -> AtClose;
    /// New connections must wait from now on (strategies that hold nothing
    /// keep this default).
    fn hold(&mut self) -> Result<(), qdisc::Error> {
        Ok(())
    }
    /// New connections may proceed; returns how long they were held.
    fn release(&mut self) -> Result<Option<Duration>, qdisc::Error> {
        Ok(None)
    }
    /// Whether new connections are held now (a release that failed leaves
    /// them held; the supervisor retries until one succeeds).
    fn holding(&self) -> bool {
        false
    }
    /// Best effort release for error and exit paths; never fails.
    fn release_quietly(&mut self) {
        let _ = self.release();
    }
    /// Steering strategies: `gens` are in the group now, and must get no
    /// client but the check's until `cut_over`.
    fn admit(&mut self, _gens: &[&Generation]) -> Result<(), Error> {
        Ok(())
    }
    /// The check connects from `src` (`None`: it ended): to the admitted.
    fn probe(&mut self, _src: Option<SocketAddr>) -> Result<(), Error> {
        Ok(())
    }
    /// The admitted generation gets every new connection from now on.
    fn cut_over(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// The admitted generation was refused: it gets nothing.
    fn dismiss(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// The admitted generation gets `share` (of 10,000) of new connections.
    fn canary(&mut self, _share: u32) -> Result<(), Error> {
        Ok(())
    }
    /// New connections sent so far to (the serving generation, the admitted one).
    fn shares(&self) -> Result<(u64, u64), Error> {
        Ok((0, 0))
    }
}

/// `--strategy steer` (see `steer`): nothing is held.
pub struct SteerSwap(pub crate::steer::Steer);

impl Drop for SteerSwap {
    fn drop(&mut self) {
        match self.0.counts() {
            Ok((chosen, migrated, kernel)) => tracing::info!(
                event = "steer_counts",
                chosen,
                migrated,
                kernel,
                "steer: {chosen} connection(s) sent to the chosen generation, {migrated} migrated from a closing listener, {kernel} left to the kernel's choice (no listener in either slot)"
            ),
            Err(e) => tracing::warn!("steer: cannot read the program's counters: {e}"),
        }
    }
}

impl Swap for SteerSwap {
    fn name(&self) -> &'static str {
        "steer"
    }
    fn at_close(&self) -> AtClose {
        AtClose::Steered
    }
    fn admit(&mut self, gens: &[&Generation]) -> Result<(), Error> {
        Ok(self.0.admit(gens)?)
    }
    fn probe(&mut self, src: Option<SocketAddr>) -> Result<(), Error> {
        Ok(self.0.probe(src)?)
    }
    fn cut_over(&mut self) -> Result<(), Error> {
        Ok(self.0.cut_over()?)
    }
    fn dismiss(&mut self) -> Result<(), Error> {
        Ok(self.0.dismiss()?)
    }
    fn canary(&mut self, share: u32) -> Result<(), Error> {
        Ok(self.0.canary(share)?)
    }
    fn shares(&self) -> Result<(u64, u64), Error> {
        Ok(self.0.shares()?)
    }
}

/// The plug qdiscs: SYNs wait in `40:` of each tree (the local one, and
/// one per ingress device) while held; all are toggled as one. Dropping it
/// releases. The hold's timing is the plugs' own (`qdisc::Plug`).
pub struct PlugSwap {
    plugs: Vec<Plug>,
    /// Told when each hold begins and ends, so it can release if we die.
    watchdog: Option<qdisc::watchdog::Watchdog>,
    /// Each plug's kernel drop counter when last looked at (after a release).
    drops: Vec<Option<u32>>,
}

impl PlugSwap {
    pub fn new(plugs: Vec<Plug>, watchdog: Option<qdisc::watchdog::Watchdog>) -> PlugSwap {
        let drops = vec![None; plugs.len()];
        let mut swap = PlugSwap {
            plugs,
            watchdog,
            drops,
        };
        swap.check_drops();
        swap
    }

    /// A plug drops what exceeds its limit while it holds (the clients
    /// retry their SYN about 1 s later): asked of the kernel after each
    /// release, when no client waits on us, and logged when it grew.
    fn check_drops(&mut self) {
        for (p, last) in self.plugs.iter().zip(self.drops.iter_mut()) {
            match qdisc::status(p.dev()).map(|s| s.plug.map(|x| x.drops)) {
                Ok(Some(now)) => {
                    if let Some(before) = *last {
                        if now > before {
                            tracing::warn!(
                                event = "plug_overflow",
                                dev = p.dev(),
                                dropped = now - before,
                                "the plug on {} dropped {} SYN(s) over its limit during the hold; their clients retry in about 1 s (raise `qdisc setup --limit`)",
                                p.dev(),
                                now - before
                            );
                        }
                    }
                    *last = Some(now);
                }
                Ok(None) => {
                    tracing::warn!("the plug on {} is gone from the kernel", p.dev());
                    *last = None;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot read the drop counter of the plug on {}: {e}",
                        p.dev()
                    );
                    *last = None;
                }
            }
        }
    }
}

impl Swap for PlugSwap {
    fn name(&self) -> &'static str {
        "plug"
    }

    fn at_close(&self) -> AtClose {
        AtClose::Hold
    }

    fn holding(&self) -> bool {
        self.plugs.iter().any(|p| p.is_buffering())
    }

    /// All or none: a plug that cannot buffer releases those that did.
    fn hold(&mut self) -> Result<(), qdisc::Error> {
        // Said first: a hold the watchdog does not know of could outlive us.
        if let Some(w) = &mut self.watchdog {
            w.holding();
        }
        for i in 0..self.plugs.len() {
            if let Err(e) = self.plugs[i].buffer() {
                for p in &mut self.plugs[..i] {
                    let _ = p.release();
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Releases every plug (even if one fails); the longest hold.
    fn release(&mut self) -> Result<Option<Duration>, qdisc::Error> {
        let mut held = None;
        let mut failed = None;
        for p in &mut self.plugs {
            match p.release() {
                Ok(h) => held = held.max(h),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => {
                if let Some(w) = &mut self.watchdog {
                    w.released();
                }
                self.check_drops();
                Ok(held)
            }
        }
    }
}

impl Drop for PlugSwap {
    fn drop(&mut self) {
        for p in &mut self.plugs {
            if p.is_buffering() {
                let _ = p.release();
            }
        }
    }
}

/// No protection at all: start the new server, SIGTERM the old. For
/// comparison only; connections can fail while the group changes.
pub struct NoSwap;

impl Swap for NoSwap {
    fn name(&self) -> &'static str {
        "none"
    }

    fn at_close(&self) -> AtClose {
        AtClose::Nothing
    }
}

/// `tcp_migrate_req=1` in our network namespace: a closing listener hands
/// its queued and half-open connections to another listener of its group
/// (Linux >= 5.14), so a close needs no hold. Set at start when needed (it
/// takes CAP_NET_ADMIN), the previous value restored at exit.
pub struct MigrateSwap {
    restore: Option<String>,
    /// Puts the old value back if we die without doing it.
    watchdog: Option<qdisc::watchdog::Watchdog>,
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("this kernel ({release}) has no net.ipv4.tcp_migrate_req (Linux 5.14 or later): use --strategy plug or handoff")]
    Unsupported { release: String },
    #[error("cannot set net.ipv4.tcp_migrate_req=1: {0} (needs CAP_NET_ADMIN in this network namespace)")]
    Set(#[source] std::io::Error),
    #[error("reading net.ipv4.tcp_migrate_req: {0}")]
    Read(#[source] std::io::Error),
}

impl MigrateSwap {
    /// Whether the sysctl is already on (no privilege needed then).
    pub fn already_on() -> Result<bool, MigrateError> {
        match std::fs::read_to_string(MIGRATE_REQ) {
            Ok(v) => Ok(v.trim() == "1"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MigrateError::Unsupported {
                release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|r| r.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".into()),
            }),
            Err(e) => Err(MigrateError::Read(e)),
        }
    }

    pub fn enable(
        mut watchdog: Option<qdisc::watchdog::Watchdog>,
    ) -> Result<MigrateSwap, MigrateError> {
        if Self::already_on()? {
            return Ok(MigrateSwap {
                restore: None,
                watchdog,
            });
        }
        let old = std::fs::read_to_string(MIGRATE_REQ).map_err(MigrateError::Read)?;
        let old = old.trim().to_owned();
        if let Some(w) = &mut watchdog {
            w.migrate_changed(old == "1");
        }
        std::fs::write(MIGRATE_REQ, "1").map_err(MigrateError::Set)?;
        Ok(MigrateSwap {
            restore: Some(old),
            watchdog,
        })
    }
}

impl Swap for MigrateSwap {
    fn name(&self) -> &'static str {
        "migrate"
    }

    fn at_close(&self) -> AtClose {
        AtClose::Nothing
    }
}

impl Drop for MigrateSwap {
    fn drop(&mut self) {
        if let Some(old) = &self.restore {
            if std::fs::write(MIGRATE_REQ, old).is_ok() {
                if let Some(w) = &mut self.watchdog {
                    w.migrate_restored();
                }
            }
        }
    }
}

/// `--strategy handoff`: the sockets are the reloader's and every
/// generation gets the same ones; nothing is ever held.
pub struct HandoffSwap;

impl Swap for HandoffSwap {
    fn name(&self) -> &'static str {
        "handoff"
    }

    fn at_close(&self) -> AtClose {
        AtClose::Shared
    }
}
