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

/// The plug qdisc: SYNs wait in `40:` while held. Dropping it releases.
/// The hold's timing is the plug's own (`qdisc::Plug`).
pub struct PlugSwap {
    plug: Plug,
}

impl PlugSwap {
    pub fn new(plug: Plug) -> PlugSwap {
        PlugSwap { plug }
    }
}

impl Swap for PlugSwap {
    fn name(&self) -> &'static str {
        "plug"
    }

    fn protects(&self) -> bool {
        true
    }

    fn hold(&mut self) -> Result<(), qdisc::Error> {
        self.plug.buffer()
    }

    fn release(&mut self) -> Result<Option<Duration>, qdisc::Error> {
        self.plug.release()
    }
}

impl Drop for PlugSwap {
    fn drop(&mut self) {
        if self.plug.is_buffering() {
            let _ = self.plug.release();
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
