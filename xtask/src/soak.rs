//! `cargo xtask soak`: the long run (`scenarios/soak.sh` in the VM). Each
//! strategy reloads every 100 ms for its share of `--minutes` under a mixed
//! load; the reloader's RSS, fds, threads and children, zombies and the
//! plug's drops are sampled every 10 s. It fails on a failed request, a
//! zombie, a leftover server, or a reloader that still grows at the end.
//! Samples land in `results/soak/soak-STRATEGY.tsv`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::workspace_root;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Minutes in all, shared evenly by the strategies.
    #[arg(long, default_value_t = 2)]
    pub minutes: u64,
    /// Strategies, comma-separated. By default the two that lose nothing;
    /// `migrate` is accepted, and lost requests in the 30-minute soak
    /// (README); `none` fails requests by design.
    #[arg(long, value_delimiter = ',', default_value = "plug,handoff")]
    pub strategies: Vec<String>,
    /// Results folder (default: results/soak).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn soak(a: SoakArgs) -> Result<()> {
    for s in &a.strategies {
        if !["plug", "migrate", "handoff"].contains(&s.as_str()) {
            bail!("--strategies {s}: plug, migrate or handoff");
        }
    }
    if a.minutes == 0 {
        bail!("--minutes 0: give at least 1");
    }
    let out = a
        .out
        .unwrap_or_else(|| workspace_root().join("results/soak"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let prepared = crate::vm::prepare(None)?;
    let command = vec![
        "sh".to_string(),
        "/scenarios/soak.sh".into(),
        a.minutes.to_string(),
        a.strategies.join(" "),
    ];
    let mut failed = None;
    let mut summary = Vec::new();
    let code = prepared.run_sharing(
        &command,
        Some(&out),
        Duration::from_secs(a.minutes * 60 + 600),
        |l| {
            if l.starts_with("SOAK") {
                eprintln!("{l}");
            }
            if l.starts_with("SOAK-RESULT") || l.starts_with("SOAK-GROWTH") {
                summary.push(l.to_string());
            }
            if let Some(why) = l.strip_prefix("SOAK-FAIL: ") {
                failed = Some(why.to_string());
            }
        },
    )?;
    std::fs::write(out.join("summary.txt"), summary.join("\n") + "\n")?;
    if let Some(why) = failed {
        bail!("the soak failed: {why} (samples in {})", out.display());
    }
    if code != 0 {
        bail!("the soak exited {code} in the VM");
    }
    println!("{}", summary.join("\n"));
    println!(
        "kernel {} (guest, qemu TCG); samples: {}",
        prepared.kernel.version(),
        out.display()
    );
    Ok(())
}
