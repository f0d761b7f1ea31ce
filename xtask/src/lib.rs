//! The project's developer tasks, as a library so the tests can drive them.
//!
//! - [`vm`]: boot a kernel with sch_plug under qemu and run a command in it.
//! - [`provision`]: host packages and the Debian kernel, found or installed.
//! - [`initramfs`]: the guest's root file system; [`cpio`] packs it.
//! - [`build`]: static builds of the project's binaries for the guest.
//! - [`bench`]: `bench` and `demo`, the seed's experiment reproduced.
//! - [`soak`]: the long run under reloading, leaks and zombies watched.
//! - [`matrix`]: the core guest scenarios on several Debian kernels.
//! - [`flaky`]: the host tests N times, each failing test counted.
//! - [`tasks`]: `setup-qdiscs`, `bench-plug`.
//! - [`exec`]: running external tools with errors that name the command.

pub mod bench;
pub mod build;
pub mod cpio;
pub mod dist;
pub mod exec;
pub mod flaky;
pub mod initramfs;
pub mod matrix;
pub mod provision;
pub mod soak;
pub mod tasks;
pub mod vm;

use std::path::PathBuf;

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
