//! `cargo xtask flaky --runs N`: the host tests (every test but the guest
//! scenarios, which are named `guest_*`) N times in a row, as the README's
//! test command runs them; prints each run's time and result, then every
//! test that failed with how often, and keeps each failing run's output
//! (`target/flaky/run-N.log`). A suite that passes once proves little
//! about the next run; this is how the next run is asked.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::workspace_root;

#[derive(clap::Args, Debug, Clone)]
pub struct FlakyArgs {
    /// How many runs.
    #[arg(long, default_value_t = 20)]
    pub runs: u32,
    /// Stop at the first failing run.
    #[arg(long)]
    pub stop: bool,
}

pub fn flaky(a: FlakyArgs) -> Result<ExitCode> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = |extra: &[&str]| {
        let mut c = Command::new(&cargo);
        c.current_dir(&root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra);
        c
    };
    let built = test(&["--no-run"])
        .status()
        .context("cargo test --no-run")?;
    anyhow::ensure!(built.success(), "the tests do not build");
    // Only this invocation's failures: an older run-N.log would mislead.
    let logs = root.join("target/flaky");
    match std::fs::remove_dir_all(&logs) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("clearing {}", logs.display()))
        }
        _ => {}
    }
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed_runs = 0;
    for run in 1..=a.runs {
        let t0 = Instant::now();
        let out = test(&["--", "--skip", "guest_"])
            .output()
            .context("cargo test")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let failed: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
            .map(str::to_owned)
            .collect();
        let passed: usize = text
            .lines()
            .filter(|l| l.starts_with("test ") && l.ends_with(" ... ok"))
            .count();
        let secs = t0.elapsed().as_secs_f64();
        let ok = out.status.success() && failed.is_empty();
        println!(
            "flaky: run {run}/{}: {} in {secs:.1} s ({passed} passed{})",
            a.runs,
            if ok { "ok" } else { "FAILED" },
            if failed.is_empty() {
                String::new()
            } else {
                format!(", failed: {}", failed.join(", "))
            }
        );
        if !ok {
            failed_runs += 1;
            // A failure is worth only what its output says: kept whole.
            let log = logs.join(format!("run-{run}.log"));
            std::fs::create_dir_all(&logs)
                .and_then(|()| std::fs::write(&log, [&out.stdout[..], &out.stderr[..]].concat()))
                .with_context(|| format!("keeping the output in {}", log.display()))?;
            println!("flaky: run {run}'s output: {}", log.display());
            if failed.is_empty() {
                *failures
                    .entry("(a test binary failed without a test line)".into())
                    .or_default() += 1;
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
            for f in failed {
                *failures.entry(f).or_default() += 1;
            }
            if a.stop {
                break;
            }
        }
    }
    println!("flaky: {failed_runs} of {} runs failed", a.runs);
    for (test, n) in &failures {
        println!("flaky:   {test}: failed {n} time(s)");
    }
    Ok(if failed_runs == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
