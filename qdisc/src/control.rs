//! Plugging and releasing in-process: one netlink round trip each, nothing
//! spawned. This is the hot path of every reload.

use std::time::{Duration, Instant};

use crate::error::{Object, Result};
use crate::socket::{Request, Socket};
use crate::tc::plug::{self, Action};
use crate::tree::{PLUG, PLUG_CLASS};

/// A handle on the plug `40:` of one device.
pub struct Plug {
    rt: Socket,
    ifindex: i32,
    dev: String,
    /// Since when this handle has the plug buffering.
    since: Option<Instant>,
    record: crate::state::Record,
}

impl Plug {
    /// Opens a netlink socket for `dev`. Does not touch the plug.
    pub fn open(dev: &str) -> Result<Plug> {
        Ok(Plug {
            ifindex: crate::sys::ifindex(dev)?,
            rt: Socket::route()?,
            dev: dev.to_owned(),
            since: None,
            record: crate::state::Record::for_dev(dev),
        })
    }

    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// Whether this handle last left the plug buffering.
    pub fn is_buffering(&self) -> bool {
        self.since.is_some()
    }

    fn act(&mut self, action: Action) -> Result<()> {
        let (ifindex, dev) = (self.ifindex, &self.dev);
        let what = match action {
            Action::Buffer => "plug (buffer)",
            Action::ReleaseOne => "release-one",
            _ => "release",
        };
        self.rt.request(Request::new(
            plug::action(ifindex, PLUG, PLUG_CLASS, action),
            Object::Existing(plug::KIND),
            format_args!("{what} the plug 40: on {dev}"),
        ))
    }

    /// Starts holding every packet that reaches band 4 (new-connection
    /// SYNs). Already buffering: nothing to do (the hold keeps its start).
    pub fn buffer(&mut self) -> Result<()> {
        if self.since.is_some() {
            return Ok(());
        }
        // Recorded before, and cleared after, the kernel's change: the record
        // costs file operations that must not lengthen the plug window.
        self.record.set(true);
        if let Err(e) = self.act(Action::Buffer) {
            self.record.set(false);
            return Err(e);
        }
        self.since = Some(Instant::now());
        Ok(())
    }

    /// Lets everything held go, and everything after it, until the next
    /// buffer. Returns how long this handle held (`None`: it was not
    /// holding, e.g. a release of a plug a killed process left buffering).
    pub fn release(&mut self) -> Result<Option<Duration>> {
        self.act(Action::ReleaseIndefinite)?;
        let held = self.since.take().map(|t| t.elapsed());
        self.record.set(false);
        Ok(held)
    }

    /// Lets go what was held when buffering began; keeps holding the rest.
    pub fn release_one(&mut self) -> Result<()> {
        self.act(Action::ReleaseOne)
    }
}
