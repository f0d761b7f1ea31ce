//! The plug tree over pure netlink: the library the reloader links and the
//! `qdisc` binary wraps. Nothing here spawns a process.
//!
//! - [`tree`]: set up, tear down and report on the whole tree of one device.
//! - [`control`]: [`Plug`] — buffer, release, release-one; [`PlugGuard`].
//! - [`probe`]: which kernel features are here, tried in a throwaway netns.
//! - [`tc`] (one module per qdisc/classifier) and [`nft`] (the mark rule):
//!   pure encoding of each message, equal to what `tc` and `nft` send.
//! - [`wire`]: netlink framing, pure; [`socket`]: the only I/O.
//! - [`error`]: errors that keep the errno and the kernel's own text.
//! - [`state`]: where "the plug is buffering" is recorded (the kernel does not say).

pub mod control;
pub mod error;
pub mod nft;
pub mod probe;
pub mod socket;
pub mod state;
pub mod sys;
pub mod tc;
pub mod tree;
pub mod wire;

pub use control::{Plug, PlugGuard};
pub use error::{Error, Result};
pub use probe::{probe, Probe};
pub use tree::{setup, status, teardown, Classifier, Config, PlugStats, Sources, Status};
