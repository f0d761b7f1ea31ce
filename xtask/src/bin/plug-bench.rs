//! `plug-bench`: the median cost of one plug+release pair done in-process
//! over netlink, against spawning iproute2's `tc` for the same two changes,
//! measured in one run. A benchmark, not a test: it prints, it never fails
//! on a number.
//!
//! It works in a private network namespace it makes itself. Where the
//! kernel has sch_plug it toggles a real plug (`qdisc setup --classifier
//! u32`); where it does not (the host here), it times the nearest change the
//! kernel supports, a pfifo limit change, and says so.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qdisc::bench::RawToggle;
use qdisc::{Classifier, Config, Plug};

/// The median cost of a plug+release pair in-process against spawning `tc`.
#[derive(clap::Parser, Debug)]
#[command(name = "plug-bench")]
struct Cli {
    /// In-process pairs to time.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Pairs of `tc` spawns to time.
    #[arg(long, default_value_t = 100)]
    spawns: usize,
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    if let Err(e) = run(cli.iterations, cli.spawns) {
        eprintln!("plug-bench: {e}");
        std::process::exit(1);
    }
}

fn run(iterations: usize, spawns: usize) -> Result<(), String> {
    // SAFETY: unshare takes flags only; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "needs a private network namespace (run as root): {}",
            std::io::Error::last_os_error()
        ));
    }
    tc_cmd(&["link", "set", "lo", "up"], "ip")?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cfg = Config {
        classifier: Classifier::U32,
        ..Config::default()
    };
    let (what, in_process, spawned) = match qdisc::setup(&cfg) {
        Ok(()) => {
            let mut plug = Plug::open("lo").map_err(|e| e.to_string())?;
            let inproc = time(iterations, || {
                plug.buffer().unwrap();
                plug.release().unwrap();
            });
            // The same pair without Plug's state record (file operations
            // outside the window), to show what the round trips alone cost.
            let mut raw_toggle = RawToggle::open("lo").map_err(|e| e.to_string())?;
            let raw = time(iterations, || raw_toggle.plug_pair().unwrap());
            println!(
                "plug-bench: netlink round trips alone median {:>8.1} us  ({iterations} pairs)",
                micros(raw)
            );
            let spawn = time(spawns, || {
                tc_cmd(
                    &[
                        "qdisc", "change", "dev", "lo", "parent", "1:4", "handle", "40:", "plug",
                        "block",
                    ],
                    "tc",
                )
                .unwrap();
                tc_cmd(
                    &[
                        "qdisc",
                        "change",
                        "dev",
                        "lo",
                        "parent",
                        "1:4",
                        "handle",
                        "40:",
                        "plug",
                        "release_indefinite",
                    ],
                    "tc",
                )
                .unwrap();
            });
            ("plug buffer + release_indefinite on 40:", inproc, spawn)
        }
        Err(e) if e.is_unsupported() => {
            eprintln!("plug-bench: {e}\nplug-bench: timing a pfifo limit change pair instead (this kernel supports it)");
            let mut raw_toggle = RawToggle::open("lo").map_err(|e| e.to_string())?;
            raw_toggle.pfifo_setup().map_err(|e| e.to_string())?;
            let inproc = time(iterations, || raw_toggle.pfifo_pair().unwrap());
            let spawn = time(spawns, || {
                tc_cmd(
                    &[
                        "qdisc", "change", "dev", "lo", "root", "handle", "1:", "pfifo", "limit",
                        "999",
                    ],
                    "tc",
                )
                .unwrap();
                tc_cmd(
                    &[
                        "qdisc", "change", "dev", "lo", "root", "handle", "1:", "pfifo", "limit",
                        "1000",
                    ],
                    "tc",
                )
                .unwrap();
            });
            (
                "pfifo limit change pair on 1: (no sch_plug here)",
                inproc,
                spawn,
            )
        }
        Err(e) => return Err(e.to_string()),
    };
    println!("plug-bench: kernel {}", kernel.trim());
    println!("plug-bench: change measured: {what}");
    println!(
        "plug-bench: in-process (qdisc::Plug) median {:>10.1} us  ({iterations} pairs)",
        micros(in_process)
    );
    println!(
        "plug-bench: spawning tc twice        median {:>10.1} us  ({spawns} pairs)",
        micros(spawned)
    );
    println!(
        "plug-bench: in-process is {:.0}x cheaper (target: at least 100x)",
        spawned.as_secs_f64() / in_process.as_secs_f64()
    );
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The median of `n` timed runs of `f`.
fn time(n: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// Runs iproute2's `tool` (from /usr/sbin, /sbin or PATH) with `args`.
fn tc_cmd(args: &[&str], tool: &str) -> Result<(), String> {
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{tool}"))
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| tool.to_string());
    let status = Command::new(&path)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{path}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{path} {}` failed: {status}", args.join(" ")))
    }
}
