//! Static builds of the project's binaries for the guest, in a target
//! directory of their own (so a build from inside `cargo test` never waits
//! on the outer build's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::exec::run_visible;

/// The binaries the guest gets on PATH.
pub const BINARIES: &[&str] = &["reuse-server", "qdisc", "reloader", "loadgen", "plug-bench"];

/// The target triple of that build (its own directory under `TARGET_DIR`).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where it is built.
pub const TARGET_DIR: &str = "target/vm-build";

/// Builds every binary of the workspace (release, statically linked against
/// glibc) and returns the paths of those in [`BINARIES`] that exist.
pub fn static_binaries(root: &Path) -> Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join(TARGET_DIR);
    run_visible(
        Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--workspace",
                "--bins",
                "--target",
                TARGET,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            ),
    )
    .context("building static binaries for the guest")?;
    let dir = target_dir.join(TARGET).join("release");
    Ok(BINARIES
        .iter()
        .map(|b| dir.join(b))
        .filter(|p| p.is_file())
        .collect())
}
