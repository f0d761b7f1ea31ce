//! Small tasks: `setup-qdiscs` and `bench-plug`.

use std::process::Command;

use anyhow::{Context, Result};

use crate::exec::{is_root, run_visible};
use crate::workspace_root;

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo xtask setup-qdiscs [--dev lo] [--classifier fw|u32] [...]`: builds
/// `qdisc` and runs `qdisc setup` with those arguments, through sudo only
/// when not already root.
pub fn setup_qdiscs(args: &[String]) -> Result<()> {
    let root = workspace_root();
    run_visible(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "qdisc",
        "--bin",
        "qdisc",
    ]))?;
    let qdisc = root.join("target/release/qdisc");
    let mut cmd = if is_root() {
        Command::new(&qdisc)
    } else {
        eprintln!("xtask: not root: running `qdisc setup` through sudo (it needs CAP_NET_ADMIN)");
        let mut c = Command::new("sudo");
        c.arg(&qdisc);
        c
    };
    cmd.arg("setup").args(args);
    run_visible(&mut cmd).context("qdisc setup")
}

/// `cargo xtask bench-plug`: the plug+release cost, in-process against
/// spawning `tc`, on the host (for a change its kernel supports) and in the
/// VM (the real plug).
pub fn bench_plug(args: &[String]) -> Result<()> {
    let root = workspace_root();
    run_visible(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "xtask",
        "--bin",
        "plug-bench",
    ]))?;
    eprintln!("xtask: bench-plug on the host");
    run_visible(Command::new(root.join("target/release/plug-bench")).args(args))?;
    eprintln!("xtask: bench-plug in the VM");
    let mut command = vec!["plug-bench".to_string()];
    command.extend(args.iter().cloned());
    let prepared = crate::vm::prepare(None)?;
    let code = prepared.run(&command, std::time::Duration::from_secs(600), |l| {
        if l.starts_with("plug-bench") {
            println!("{l}");
        }
    })?;
    anyhow::ensure!(code == 0, "plug-bench failed in the VM (exit {code})");
    Ok(())
}
