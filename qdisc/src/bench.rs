//! Raw round trips for `plug-bench` (xtask), without `Plug`'s bookkeeping:
//! what one toggle costs the kernel and the socket alone. Not for products.

use crate::error::{Object, Result};
use crate::socket::{Request, Socket};
use crate::tc::plug::{self, Action};
use crate::tc::{self, pfifo, TC_H_ROOT};
use crate::tree::{PLUG, PLUG_CLASS};

pub struct RawToggle {
    rt: Socket,
    ifindex: i32,
}

impl RawToggle {
    pub fn open(dev: &str) -> Result<RawToggle> {
        Ok(RawToggle {
            rt: Socket::route()?,
            ifindex: crate::sys::ifindex(dev)?,
        })
    }

    /// `plug block` then `plug release_indefinite` on our plug `40:`.
    pub fn plug_pair(&mut self) -> Result<()> {
        for a in [Action::Buffer, Action::ReleaseIndefinite] {
            self.rt.request(Request::new(
                plug::action(self.ifindex, PLUG, PLUG_CLASS, a),
                Object::Other,
                format_args!("toggle the plug"),
            ))?;
        }
        Ok(())
    }

    /// Adds a pfifo root `1:` (on a kernel without sch_plug, the nearest
    /// comparable change).
    pub fn pfifo_setup(&mut self) -> Result<()> {
        let root = tc::handle(1, 0);
        self.rt.request(Request::new(
            pfifo::add(self.ifindex, root, TC_H_ROOT, 1000),
            Object::Qdisc(pfifo::KIND),
            format_args!("add a pfifo root"),
        ))
    }

    /// Changes that pfifo's limit to 999 and back.
    pub fn pfifo_pair(&mut self) -> Result<()> {
        for limit in [999u32, 1000] {
            let m = tc::qdisc(
                tc::CHANGE,
                self.ifindex,
                tc::handle(1, 0),
                TC_H_ROOT,
                pfifo::KIND,
                Some(limit.to_ne_bytes().to_vec()),
            );
            self.rt.request(Request::new(
                m,
                Object::Other,
                format_args!("change the pfifo"),
            ))?;
        }
        Ok(())
    }
}
