//! `cargo xtask matrix`: the core guest scenarios on several Debian kernels
//! (by default 6.1 and 6.12, generic and `cloud`), one boot per scenario,
//! and a table of what passed, how long it took and which fallbacks the
//! kernel made the reloader use (lines the scenarios print as `fallback:`
//! or `feature:`). The README's test command keeps the default kernel; this
//! is the wider run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::exec::exec;

#[derive(clap::Args, Debug, Clone)]
pub struct MatrixArgs {
    /// Debian kernel packages (repeatable; metapackages are followed).
    /// Default: linux-image-amd64, linux-image-cloud-amd64 and the newest
    /// 6.12 generic and cloud images apt knows.
    #[arg(long = "kernel-package", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Only the scenarios whose name contains this (repeatable).
    #[arg(long = "only", value_name = "TEXT")]
    pub only: Vec<String>,
}

/// (name, scenario command, timeout): plug c=32, handoff, remote ingress,
/// faults, least privilege, ab across reloads, and what the kernel has.
const SCENARIOS: &[(&str, &[&str], u64)] = &[
    (
        "kernel-features",
        &["sh", "/scenarios/kernel-features.sh"],
        120,
    ),
    (
        "plug c=32",
        &[
            "sh",
            "/scenarios/reloader-load.sh",
            "plug",
            "32",
            "10000",
            "zero",
        ],
        1200,
    ),
    (
        "handoff c=32",
        &[
            "sh",
            "/scenarios/reloader-load.sh",
            "handoff",
            "32",
            "10000",
            "zero",
        ],
        1200,
    ),
    (
        "remote ingress c=32",
        &[
            "sh",
            "/scenarios/reloader-remote.sh",
            "load",
            "plug",
            "32",
            "5000",
            "zero",
        ],
        1200,
    ),
    ("faults", &["sh", "/scenarios/reloader-faults.sh"], 600),
    (
        "least privilege",
        &["sh", "/scenarios/reloader-caps.sh"],
        600,
    ),
    (
        "ab c=1,32 reloading",
        &["sh", "/scenarios/reloader-ab.sh", "reload", "5000"],
        900,
    ),
];

struct Row {
    kernel: String,
    scenario: &'static str,
    result: String,
    secs: f64,
    notes: Vec<String>,
}

pub fn matrix(a: MatrixArgs) -> Result<()> {
    let kernels = if a.kernels.is_empty() {
        default_kernels()?
    } else {
        a.kernels.clone()
    };
    let mut rows = Vec::new();
    for k in &kernels {
        let prepared = crate::vm::prepare_package(k)?;
        let version = prepared.kernel.version();
        for (name, command, timeout) in SCENARIOS {
            if !a.only.is_empty() && !a.only.iter().any(|o| name.contains(o.as_str())) {
                continue;
            }
            eprintln!("matrix: {version}: {name}");
            let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            let mut notes = Vec::new();
            let mut tail = Vec::new();
            let t0 = Instant::now();
            let result = prepared.run(&command, Duration::from_secs(*timeout), |l| {
                if let Some(i) = l.find("fallback:").or_else(|| l.find("feature:")) {
                    let note = l[i..].to_owned();
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                }
                tail.push(l.to_owned());
                if tail.len() > 30 {
                    tail.remove(0);
                }
            });
            let result = match result {
                Ok(0) => "passed".to_owned(),
                Ok(code) => format!("FAILED (exit {code})"),
                Err(e) => format!("FAILED ({e:#})"),
            };
            if result != "passed" {
                eprintln!("matrix: {version}: {name}: {result}; the console's end:");
                for l in &tail {
                    eprintln!("  | {l}");
                }
            }
            rows.push(Row {
                kernel: version.clone(),
                scenario: name,
                result,
                secs: t0.elapsed().as_secs_f64(),
                notes,
            });
        }
    }
    println!("| kernel | scenario | result | time | fallbacks and features |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} s | {} |",
            r.kernel,
            r.scenario,
            r.result,
            r.secs,
            if r.notes.is_empty() {
                "-".to_owned()
            } else {
                r.notes.join("; ")
            }
        );
    }
    let failed = rows.iter().filter(|r| r.result != "passed").count();
    if failed > 0 {
        bail!("{failed} of {} matrix cells failed", rows.len());
    }
    Ok(())
}

/// The 6.1 images (the metapackages) and the newest 6.12 ones apt knows.
fn default_kernels() -> Result<Vec<String>> {
    let out = exec(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.12\.[0-9.]*\+deb12-(cloud-)?amd64$",
    ]))?;
    let mut generic = Vec::new();
    let mut cloud = Vec::new();
    for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
        match name.ends_with("-cloud-amd64") {
            true => cloud.push(name.to_owned()),
            false => generic.push(name.to_owned()),
        }
    }
    let newest = |v: &mut Vec<String>| {
        v.sort_by_key(|n| version_key(n));
        v.pop()
    };
    let mut kernels = vec![
        "linux-image-amd64".to_owned(),
        "linux-image-cloud-amd64".to_owned(),
    ];
    match (newest(&mut generic), newest(&mut cloud)) {
        (Some(g), Some(c)) => kernels.extend([g, c]),
        _ => bail!("apt knows no linux-image-6.12.*+deb12-amd64 and -cloud-amd64 (run `apt-get update`, or give --kernel-package)"),
    }
    Ok(kernels)
}

/// `linux-image-6.12.117+deb12-amd64` -> [6, 12, 117]: sorts by number.
fn version_key(name: &str) -> Vec<u64> {
    name.trim_start_matches("linux-image-")
        .split(|c: char| !c.is_ascii_digit())
        .take_while(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_sort_by_number() {
        let mut v = [
            "linux-image-6.12.9+deb12-amd64",
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.43+deb12-amd64",
        ];
        v.sort_by_key(|n| super::version_key(n));
        assert_eq!(v.last(), Some(&"linux-image-6.12.117+deb12-amd64"));
    }
}
