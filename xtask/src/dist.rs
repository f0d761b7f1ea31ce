//! `cargo xtask dist`: the Debian package. Uses the statically linked
//! release build the guest gets too (`build::static_binaries`, one build
//! for both), has `reloader` and `qdisc` write their man pages and
//! completions (`generate`, from their own clap definitions), then runs
//! cargo-deb with the metadata in `reloader/Cargo.toml` (installed with
//! cargo when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::build::{static_binaries, TARGET, TARGET_DIR};
use crate::exec::{run_visible, which};

/// The cargo-deb release `cargo xtask dist` installs when it has none.
const CARGO_DEB: &str = "3.8.0";

/// Builds the package and returns its path.
pub fn dist() -> Result<PathBuf> {
    let root = crate::workspace_root();
    let bins = static_binaries(&root)?;
    package(&root, &bins)
}

fn package(root: &Path, bins: &[PathBuf]) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = root.join("target/dist");
    let _ = std::fs::remove_dir_all(&out);
    for name in ["reloader", "qdisc"] {
        let bin = bins
            .iter()
            .find(|b| b.file_name().is_some_and(|f| f == name))
            .with_context(|| format!("the build made no {name}"))?;
        run_visible(Command::new(bin).arg("generate").arg(&out))
            .with_context(|| format!("{name} generate"))?;
    }
    // The units as installed by the package: its binaries are in /usr/bin.
    let units = out.join("systemd");
    std::fs::create_dir_all(&units)?;
    for entry in std::fs::read_dir(root.join("contrib/systemd"))? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        std::fs::write(
            units.join(entry.file_name()),
            text.replace("/usr/local/bin/", "/usr/bin/"),
        )?;
    }
    if which("cargo-deb").is_none() {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB} (cargo install cargo-deb --locked)");
        run_visible(Command::new(&cargo).args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB,
        ]))
        .context("installing cargo-deb")?;
    }
    let deb = crate::exec::exec(
        Command::new(&cargo)
            .current_dir(root)
            .args(["deb", "-p", "reloader", "--no-build", "--target", TARGET])
            .env("CARGO_TARGET_DIR", root.join(TARGET_DIR)),
    )
    .context("cargo deb")?;
    let path = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    anyhow::ensure!(path.is_file(), "cargo deb named no package: {deb}");
    println!("{}", path.display());
    Ok(path)
}
