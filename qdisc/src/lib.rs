//! The plug tree over pure netlink: the library the reloader links and the
//! `qdisc` binary wraps. Nothing here spawns a process.
//!
//! - [`setup`], [`status`], [`teardown`]: set up, tear down and report on the whole tree of one device.
//! - [`control`]: [`Plug`] — buffer, release (with the hold's duration), release-one.
//! - [`probe()`]: which kernel features are here, tried in a throwaway netns.
//! - `tc` (one module per qdisc/classifier) and `nft` (the mark rule):
//!   each message built with netlink-packet-route / -netfilter types, equal
//!   byte for byte to what `tc` and `nft` send (the golden tests).
//! - `wire`: what no crate offers (a message as bytes with its sequence
//!   number, the extended-ack text); `socket`: the only I/O.
//! - [`error`]: errors that keep the errno and the kernel's own text.
//! - [`policy`]: who may hold what when run by a file capability (`/etc/reloader/policy.toml`).
//! - `state`: where "the plug is buffering" is recorded (the kernel does not say).

#[cfg(feature = "bench")]
pub mod bench;
mod control;
pub mod error;
pub mod ingress;
mod link;
mod nft;
mod owner;
pub mod policy;
mod probe;
pub mod runtime;
mod socket;
mod state;
mod sys;
mod tc;
mod tree;
pub mod watchdog;
mod wire;

#[cfg(test)]
mod golden;

pub use control::Plug;
pub use error::{Error, Missing, Object, Result};
pub use ingress::{ifb_of, IngressConfig, IngressStatus};
pub use probe::{probe, Probe};
pub use tree::{
    setup, status, teardown, Classifier, Config, PlugStats, Sources, Status, DEFAULT_LIMIT,
};

/// A file for `dev` named with `suffix`, beside the plug's state record
/// (network namespace in the name), in the caller's runtime directory.
pub fn runtime_path(
    dev: &str,
    suffix: &str,
) -> std::result::Result<std::path::PathBuf, runtime::RuntimeError> {
    state::path_for(dev, suffix)
}
