//! How new connections are protected while the SO_REUSEPORT group changes.
//! The supervisor calls `hold` just before a listener leaves the group and
//! `release` right after the kernel shows it left (or at the hold limit). A strategy is one value behind this trait; socket handoff and
//! `tcp_migrate_req` strategies fit the same place.

use std::time::Duration;

use qdisc::Plug;

pub trait Swap {
    fn name(&self) -> &'static str;
    /// Whether `hold` really holds (the supervisor waits out half-open
    /// handshakes only then).
    fn protects(&self) -> bool;
    /// New connections must wait from now on.
    fn hold(&mut self) -> Result<(), qdisc::Error>;
    /// New connections may proceed; returns how long they were held.
    fn release(&mut self) -> Result<Option<Duration>, qdisc::Error>;
    /// Best effort release for error and exit paths; never fails.
    fn release_quietly(&mut self) {
        let _ = self.release();
    }
}

/// The plug qdiscs: SYNs wait in `40:` of each tree (the local one, and
/// one per ingress device) while held; all are toggled as one. Dropping it
/// releases. The hold's timing is the plugs' own (`qdisc::Plug`).
pub struct PlugSwap {
    plugs: Vec<Plug>,
}

impl PlugSwap {
    pub fn new(plugs: Vec<Plug>) -> PlugSwap {
        PlugSwap { plugs }
    }
}

impl Swap for PlugSwap {
    fn name(&self) -> &'static str {
        "plug"
    }

    fn protects(&self) -> bool {
        true
    }

    /// All or none: a plug that cannot buffer releases those that did.
    fn hold(&mut self) -> Result<(), qdisc::Error> {
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
            None => Ok(held),
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

    fn protects(&self) -> bool {
        false
    }

    fn hold(&mut self) -> Result<(), qdisc::Error> {
        Ok(())
    }

    fn release(&mut self) -> Result<Option<Duration>, qdisc::Error> {
        Ok(None)
    }
}
