//! Plugging and releasing in-process: one netlink round trip each, nothing
//! spawned. This is the hot path of every reload.

use std::time::{Duration, Instant};

use crate::error::{Object, Result};
use crate::socket::Socket;
use crate::tc::plug::{self, Action};
use crate::tree::{PLUG, PLUG_CLASS};

/// A handle on the plug `40:` of one device.
pub struct Plug {
    rt: Socket,
    ifindex: i32,
    dev: String,
    buffering: bool,
    record: crate::state::Record,
}

impl Plug {
    /// Opens a netlink socket for `dev`. Does not touch the plug.
    pub fn open(dev: &str) -> Result<Plug> {
        Ok(Plug {
            ifindex: crate::sys::ifindex(dev)?,
            rt: Socket::route()?,
            dev: dev.to_owned(),
            buffering: false,
            record: crate::state::Record::for_dev(dev),
        })
    }

    pub fn dev(&self) -> &str {
        &self.dev
    }

    /// Whether this handle last left the plug buffering.
    pub fn is_buffering(&self) -> bool {
        self.buffering
    }

    fn act(&mut self, action: Action) -> Result<()> {
        let (ifindex, dev) = (self.ifindex, &self.dev);
        let what = match action {
            Action::Buffer => "plug (buffer)",
            Action::ReleaseOne => "release-one",
            _ => "release",
        };
        self.rt
            .request(plug::action(ifindex, PLUG, PLUG_CLASS, action), &|| {
                (
                    format!("{what} the plug 40: on {dev}"),
                    Object::Existing(plug::KIND),
                )
            })
    }

    /// Starts holding every packet that reaches band 4 (new-connection SYNs).
    pub fn buffer(&mut self) -> Result<()> {
        // Recorded before, and cleared after, the kernel's change: the record
        // costs file operations that must not lengthen the plug window.
        self.record.set(true);
        if let Err(e) = self.act(Action::Buffer) {
            self.record.set(self.buffering);
            return Err(e);
        }
        self.buffering = true;
        Ok(())
    }

    /// Lets everything held go, and everything after it, until the next buffer.
    pub fn release(&mut self) -> Result<()> {
        self.act(Action::ReleaseIndefinite)?;
        self.buffering = false;
        self.record.set(false);
        Ok(())
    }

    /// Lets go what was held when buffering began; keeps holding the rest.
    pub fn release_one(&mut self) -> Result<()> {
        self.act(Action::ReleaseOne)
    }

    /// Buffers and returns a guard that releases when dropped.
    pub fn hold(&mut self) -> Result<PlugGuard<'_>> {
        self.buffer()?;
        Ok(PlugGuard {
            plug: self,
            since: Instant::now(),
            released: false,
        })
    }
}

/// The plug is buffering while this lives. Release it with
/// [`release`](PlugGuard::release) to see errors and the hold time; `Drop`
/// releases as a fallback (errors ignored, never panics).
pub struct PlugGuard<'a> {
    plug: &'a mut Plug,
    since: Instant,
    released: bool,
}

impl PlugGuard<'_> {
    /// How long the plug has been buffering.
    pub fn held_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// Releases and returns how long the plug held.
    pub fn release(mut self) -> Result<Duration> {
        let held = self.since.elapsed();
        self.released = true;
        self.plug.release()?;
        Ok(held)
    }
}

impl Drop for PlugGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.plug.release();
        }
    }
}
