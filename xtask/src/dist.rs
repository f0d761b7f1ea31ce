//! `cargo xtask dist`: the Debian package. Builds the binaries (release),
//! has `reloader` and `qdisc` write their man pages and completions
//! (`generate`, from their own clap definitions), then runs cargo-deb with
//! the metadata in `reloader/Cargo.toml` (installed with cargo when
//! missing).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::exec::{run_visible, which};

pub fn dist() -> Result<PathBuf> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Stripped, in a target directory of their own (the workspace's
    // release profile keeps debug info for profiling).
    run_visible(
        Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "reloader",
                "-p",
                "qdisc",
                "-p",
                "server",
            ])
            .env("CARGO_TARGET_DIR", root.join("target/dist-build"))
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0"),
    )
    .context("building the release binaries")?;
    let out = root.join("target/dist");
    let _ = std::fs::remove_dir_all(&out);
    for bin in ["reloader", "qdisc"] {
        run_visible(
            Command::new(root.join("target/dist-build/release").join(bin))
                .arg("generate")
                .arg(&out),
        )
        .with_context(|| format!("{bin} generate"))?;
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
        eprintln!("xtask: installing cargo-deb (cargo install cargo-deb --locked)");
        run_visible(Command::new(&cargo).args(["install", "cargo-deb", "--locked"]))
            .context("installing cargo-deb")?;
    }
    let deb = crate::exec::exec(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["deb", "-p", "reloader", "--no-build"])
            .env("CARGO_TARGET_DIR", root.join("target/dist-build")),
    )
    .context("cargo deb")?;
    let path = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    println!("{}", path.display());
    Ok(path)
}
