//! `cargo xtask bench` and `cargo xtask demo`: the seed's experiment
//! (a new connection per request, baseline against constant reloading),
//! reproduced with our tools, measured per request, tabled beside the seed's
//! published figures, and plotted like the seed's `baseline.png` and
//! `reloading.png`.
//!
//! The runs happen where the kernel has sch_plug: on the host in a private
//! network namespace when it does, otherwise in the VM (`scenarios/bench.sh`
//! in both cases). TSVs, logs and plots land in the results folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use loadgen::stats::{read_tsv, Summary};

use crate::exec::{exec, is_root, run_visible};
use crate::workspace_root;

/// The seed's published runs (2016, `ab -n 100000`, hardware): mean,
/// stddev, p99, max in ms.
const SEED: [(&str, f64, f64, f64, f64); 2] = [
    ("seed: baseline (ab, 2016)", 0.367, 0.1, 1.0, 19.0),
    (
        "seed: reloading every 100 ms (ab, 2016)",
        0.492,
        1.1,
        1.0,
        45.0,
    ),
];

/// `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Requests per run (default: 100,000 on the host, 10,000 in the VM).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Concurrencies, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub concurrency: Vec<usize>,
    /// Strategies, comma-separated.
    #[arg(
        long = "strategy",
        value_delimiter = ',',
        default_value = "none,plug,migrate,handoff,steer,plug-k,handoff-k"
    )]
    pub strategies: Vec<Strategy>,
    /// Requests of the `ab` cross-check (default: min(requests, 10,000); 0: none).
    #[arg(long)]
    pub ab_requests: Option<usize>,
    /// Peers run under the same load and reload cadence (installed with apt
    /// when missing), comma-separated; `--peers ''` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nginx,nginx-reuseport,haproxy"
    )]
    pub peers: Vec<String>,
    /// Where the clients are, comma-separated: `local` (on the server's
    /// loopback) and `remote` (another network namespace across a veth
    /// pair; the plug strategies then hold on the veth's ingress).
    #[arg(long, value_delimiter = ',', default_value = "local,remote")]
    pub clients: Vec<Clients>,
    /// Strategies and peers reloaded back to back (each reload starts when
    /// the previous one ended), local clients, comma-separated; `''` for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,plug,migrate,handoff,steer,nginx,haproxy"
    )]
    pub back_to_back: Vec<String>,
    /// Alternate each system's baseline and its reloading run in this many
    /// slices (local clients and peers), under one process tree, every
    /// system told to reload by a signal every 100 ms: a drift of the
    /// machine's speed then lands on both halves of each ratio.
    #[arg(long)]
    pub interleave: Option<usize>,
    /// Run on this machine's kernel (as root, in a private network
    /// namespace) even when it lacks sch_plug: refused if a strategy asked
    /// for needs it (plug, plug-k). Real CPU instead of emulation, where
    /// starting a process costs tens of times more than the rest.
    #[arg(long)]
    pub host: bool,
    /// Results folder (default: results/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    Local,
    Remote,
}

impl Clients {
    fn name(self) -> &'static str {
        match self {
            Clients::Local => "local",
            Clients::Remote => "remote",
        }
    }
    /// File stems of the baseline and of a strategy's run.
    fn stems(self, s: &str) -> (&'static str, String) {
        match self {
            Clients::Local => ("baseline", format!("reloading-{s}")),
            Clients::Remote => ("remote-baseline", format!("remote-{s}")),
        }
    }
}

/// `cargo xtask demo`: the seed's experiment, c=1, the plug.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    #[arg(long)]
    pub requests: Option<usize>,
    #[arg(long)]
    pub ab_requests: Option<usize>,
    /// Results folder (default: results/demo).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    None,
    Plug,
    Migrate,
    Handoff,
    Steer,
    /// Handoff with kept-alive connections (loadgen -k).
    #[value(name = "handoff-k")]
    HandoffK,
    /// The plug with kept-alive connections (loadgen -k).
    #[value(name = "plug-k")]
    PlugK,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::Plug => "plug",
            Strategy::Migrate => "migrate",
            Strategy::Handoff => "handoff",
            Strategy::Steer => "steer",
            Strategy::HandoffK => "handoff-k",
            Strategy::PlugK => "plug-k",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    peers: Vec<String>,
    back_to_back: Vec<String>,
    requests: Option<usize>,
    concurrency: Vec<usize>,
    strategies: Vec<String>,
    clients: Vec<Clients>,
    ab_requests: Option<usize>,
    interleave: usize,
    host: bool,
    out: PathBuf,
}

/// Where the runs can happen.
enum Place {
    Host,
    Vm(String),
}

fn place(a: &Args) -> Result<Place> {
    if a.host {
        if !is_root() {
            bail!("--host: the bench runs in a private network namespace, which needs root");
        }
        let plugs = |s: &String| matches!(s.as_str(), "plug" | "plug-k");
        if let Some(s) = a
            .strategies
            .iter()
            .chain(&a.back_to_back)
            .find(|s| plugs(s))
        {
            let probe = qdisc::probe().context("--host: probing this kernel for sch_plug")?;
            if !probe.missing().is_empty() {
                bail!("--host: strategy {s} needs sch_plug, which this kernel lacks (leave --host out to run it in the VM, or drop {s})");
            }
        }
        return Ok(Place::Host);
    }
    Ok(auto_place())
}

fn auto_place() -> Place {
    if !is_root() {
        return Place::Vm(
            "not root, so the host cannot be probed in a private network namespace".into(),
        );
    }
    match qdisc::probe() {
        Ok(p) if p.missing().is_empty() => Place::Host,
        Ok(p) => Place::Vm(format!("the host kernel lacks {}", p.missing().join(", "))),
        Err(e) => Place::Vm(format!("cannot probe the host kernel ({e})")),
    }
}

pub fn bench(b: BenchArgs) -> Result<()> {
    let a = Args {
        peers: b.peers.into_iter().filter(|p| !p.is_empty()).collect(),
        back_to_back: b
            .back_to_back
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect(),
        requests: b.requests,
        concurrency: b.concurrency,
        strategies: b.strategies.iter().map(|s| s.name().to_owned()).collect(),
        clients: b.clients,
        ab_requests: b.ab_requests,
        interleave: b.interleave.unwrap_or(0),
        host: b.host,
        out: b
            .out
            .unwrap_or_else(|| workspace_root().join("results/bench")),
    };
    run(a, false)
}

pub fn demo(d: DemoArgs) -> Result<()> {
    let a = Args {
        peers: Vec::new(),
        back_to_back: Vec::new(),
        requests: d.requests,
        concurrency: vec![1],
        strategies: vec!["plug".into()],
        clients: vec![Clients::Local],
        ab_requests: d.ab_requests,
        interleave: 0,
        host: false,
        out: d
            .out
            .unwrap_or_else(|| workspace_root().join("results/demo")),
    };
    run(a, true)
}

fn run(mut a: Args, demo: bool) -> Result<()> {
    crate::provision::ensure(&[("gnuplot", "gnuplot-nox")])?;
    for p in &a.peers {
        match p.as_str() {
            "nginx" | "nginx-reuseport" => crate::provision::ensure(&[("nginx", "nginx")])?,
            "haproxy" => crate::provision::ensure(&[("haproxy", "haproxy")])?,
            other => bail!("--peers {other}: nginx, nginx-reuseport or haproxy"),
        }
    }
    for b in &a.back_to_back {
        match b.as_str() {
            "nginx" => crate::provision::ensure(&[("nginx", "nginx")])?,
            "haproxy" => crate::provision::ensure(&[("haproxy", "haproxy")])?,
            "none" | "plug" | "migrate" | "handoff" | "steer" => {}
            other => bail!(
                "--back-to-back {other}: a strategy (none, plug, migrate, handoff, steer), nginx or haproxy"
            ),
        }
    }
    let where_ = place(&a)?;
    // Under emulation everything is 20-50x slower: a smaller default keeps
    // the run to minutes. The seed's own count is one flag away.
    let default_n = match where_ {
        Place::Host => 100_000,
        Place::Vm(_) => 10_000,
    };
    let n = *a.requests.get_or_insert(default_n);
    let ab_n = *a.ab_requests.get_or_insert(n.min(10_000));
    if a.interleave > 0 && !n.is_multiple_of(a.interleave) {
        bail!(
            "--interleave {}: the requests ({n}) must divide into that many slices",
            a.interleave
        );
    }
    let _ = std::fs::remove_dir_all(&a.out);
    std::fs::create_dir_all(&a.out)?;
    let concs = a
        .concurrency
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let strategies = a.strategies.join(" ");
    let script_args = [
        n.to_string(),
        concs,
        strategies,
        ab_n.to_string(),
        a.peers.join(" "),
        a.clients
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" "),
        a.back_to_back.join(" "),
        a.interleave.to_string(),
    ];
    let kernel;
    match &where_ {
        Place::Host => {
            eprintln!(
                "xtask: running on the host's kernel in a private network namespace ({})",
                match a.host {
                    true => "--host",
                    false => "it has sch_prio, sch_plug and cls_fw",
                }
            );
            let root = workspace_root();
            // The binaries the VM runs (statically linked): one build
            // measured in both places, and the cheaper start (no dynamic
            // loader: about 0.7x a generation's CPU here).
            crate::build::static_binaries(&root)?;
            let bins = root
                .join(crate::build::TARGET_DIR)
                .join(crate::build::TARGET)
                .join("release");
            let path = format!(
                "{}:{}",
                bins.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let ab =
                crate::exec::which("ab").context("ab not found (apt-get install apache2-utils)")?;
            run_visible(
                Command::new("unshare")
                    .args([
                        "-n",
                        "sh",
                        "-c",
                        "ip link set lo up && exec sh \"$0\" \"$@\"",
                    ])
                    .arg(root.join("xtask/scenarios/bench.sh"))
                    .args(&script_args)
                    .env("PATH", path)
                    .env("RESULTS", &a.out)
                    .env("AB", ab),
            )?;
            kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        Place::Vm(why) => {
            eprintln!("xtask: running in the VM: {why}");
            let prepared = crate::vm::prepare(None)?;
            let mut command = vec!["sh".to_string(), "/scenarios/bench.sh".into()];
            command.extend(script_args.iter().cloned());
            let mut failed = None;
            let code = prepared.run_sharing(
                &command,
                Some(&a.out),
                Duration::from_secs(6 * 3600),
                |l| {
                    if l.starts_with("BENCH")
                        || l.starts_with('[')
                        || l.starts_with("requests=")
                        || l.contains("requests,")
                    {
                        eprintln!("{l}");
                    }
                    if let Some(why) = l.strip_prefix("BENCH-FAIL: ") {
                        failed = Some(why.to_string());
                    }
                },
            )?;
            if let Some(why) = failed {
                bail!("the bench failed in the VM: {why}");
            }
            if code != 0 {
                bail!("the bench exited {code} in the VM");
            }
            kernel = format!("{} (guest, qemu TCG)", prepared.kernel.version());
        }
    }
    let table = report(&a, &kernel, matches!(where_, Place::Vm(_)))?;
    std::fs::write(a.out.join("table.md"), &table)?;
    println!("{table}");
    println!("results: {}", a.out.display());
    if demo {
        println!(
            "plots: {} and {}",
            a.out.join("baseline-c1.png").display(),
            a.out.join("reloading-plug-c1.png").display()
        );
    }
    Ok(())
}

/// One row of the table, from one TSV.
fn row(
    name: &str,
    tsv: &Path,
    reloads: Option<(u64, u64)>,
    held: Option<(f64, f64)>,
) -> Result<(String, Summary)> {
    let text =
        std::fs::read_to_string(tsv).with_context(|| format!("reading {}", tsv.display()))?;
    let records = read_tsv(&text);
    let s = Summary::of(&records);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for r in records.iter().filter(|r| r.pid.is_none()) {
        *kinds.entry(r.outcome).or_default() += 1;
    }
    let failed: usize = kinds.values().sum();
    let failures = if failed == 0 {
        "**0**".to_string()
    } else {
        format!(
            "{failed} ({})",
            kinds
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let reloads = reloads.map_or("-".into(), |(ok, bad)| {
        if bad > 0 {
            format!("{ok} ({bad} rolled back)")
        } else {
            ok.to_string()
        }
    });
    let held = held.map_or("-".into(), |(p50, max)| format!("{p50:.1} / {max:.1}"));
    let line = format!(
        "| {name} | {} | {failures} | {reloads} | {held} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        records.len(),
        s.mean,
        s.stddev,
        s.p50,
        s.p99,
        s.p999,
        s.max
    );
    Ok((line, s))
}

/// Held time per successful reload (median, max, in ms) from a reloader
/// log's `reload #N: ok ... | held X.Yms |` lines; a reload that held
/// nothing (`held -`) counts as 0.
fn held_times(log: &str) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = log
        .lines()
        .filter(|l| l.contains(": ok, PID"))
        .filter_map(|l| {
            let rest = l.split("| held ").nth(1)?;
            let word = rest.split_whitespace().next()?;
            Some(word.trim_end_matches("ms").parse().unwrap_or(0.0))
        })
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[v.len() - 1]))
}

fn report(a: &Args, kernel: &str, emulated: bool) -> Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "| run | requests | failed | reloads | held ms per reload (p50 / max) | mean ms | stddev | p50 | p99 | p99.9 | max |"
    )?;
    writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (name, mean, sd, p99, max) in SEED {
        writeln!(
            t,
            "| {name} | 100000 | 0 | - | - | {mean:.3} | {sd:.1} | - | {p99:.0} | - | {max:.0} |"
        )?;
    }
    let mut ratios = String::new();
    for clients in &a.clients {
        for c in &a.concurrency {
            strategy_rows(a, *clients, *c, &mut t, &mut ratios)?;
        }
    }
    for p in &a.peers {
        for c in &a.concurrency {
            let base = a.out.join(format!("peer-{p}-baseline-c{c}.tsv"));
            let tsv = a.out.join(format!("peer-{p}-reloading-c{c}.tsv"));
            if !base.exists() || !tsv.exists() {
                writeln!(
                    t,
                    "| peer {p}, c={c} | not run (see the bench log) | | | | | | | | | |"
                )?;
                continue;
            }
            let reloads =
                std::fs::read_to_string(a.out.join(format!("peer-{p}-reloading-c{c}.reloads")))
                    .ok()
                    .and_then(|x| x.lines().next()?.trim().parse::<u64>().ok())
                    .map(|n| (n, 0));
            let (bl, bs) = row(&format!("peer {p}: baseline, c={c}"), &base, None, None)?;
            let name = match a.interleave {
                0 => format!("peer {p}: reloading every 100 ms, c={c}"),
                _ => format!("peer {p}, interleaved: its reload signal every 100 ms, c={c}"),
            };
            let (rl, rs) = row(&name, &tsv, reloads, None)?;
            writeln!(t, "{bl}")?;
            writeln!(t, "{rl}")?;
            plot(&tsv, &name)?;
            writeln!(
                ratios,
                "- c={c}: peer {p} / its baseline: mean {:.2}x, p99 {:.2}x, max {:.2}x",
                rs.mean / bs.mean,
                rs.p99 / bs.p99,
                rs.max / bs.max
            )?;
        }
    }
    if a.clients.contains(&Clients::Local) {
        for c in &a.concurrency {
            back_to_back_rows(a, *c, &mut t, &mut ratios)?;
        }
    }
    writeln!(t)?;
    if !ratios.is_empty() {
        writeln!(
            t,
            "Ratios to the same run's baseline (one reuse-server, no reloads) and to `--strategy none` (`-k`: kept-alive connections):\n{ratios}"
        )?;
    }
    writeln!(
        t,
        "kernel {kernel}; {} requests per run, a new TCP connection per request.{}",
        a.requests.unwrap_or(0),
        if emulated {
            " Under qemu TCG absolute times are inflated by emulation (20-50x); compare ratios."
        } else {
            ""
        }
    )?;
    Ok(t)
}

/// The back-to-back rows for one concurrency: each reload started when the
/// previous one ended, under the same load; the reloads per second over
/// the load's span, and the p99 against the same system's baseline.
fn back_to_back_rows(a: &Args, c: usize, t: &mut String, ratios: &mut String) -> Result<()> {
    for b in &a.back_to_back {
        let stem = format!("b2b-{b}-c{c}");
        let tsv = a.out.join(format!("{stem}.tsv"));
        if !tsv.exists() {
            writeln!(
                t,
                "| back-to-back {b}, c={c} | not run (see the bench log) | | | | | | | | | |"
            )?;
            continue;
        }
        let reloads = std::fs::read_to_string(a.out.join(format!("{stem}.reloads")))
            .ok()
            .and_then(|x| {
                let mut it = x.lines().map(|l| l.trim().parse::<u64>().unwrap_or(0));
                Some((it.next()?, it.next().unwrap_or(0)))
            });
        let span = read_tsv(&std::fs::read_to_string(&tsv)?)
            .iter()
            .map(|r| (r.start + r.total).as_secs_f64())
            .fold(0.0, f64::max);
        let rate = match (reloads, span > 0.0) {
            (Some((ok, _)), true) => format!("{:.1} reloads/s", ok as f64 / span),
            _ => "reloads/s unknown".into(),
        };
        let held = std::fs::read_to_string(a.out.join(format!("{stem}.log")))
            .ok()
            .and_then(|log| held_times(&log));
        let peer = matches!(b.as_str(), "nginx" | "haproxy");
        let what = if peer {
            format!("peer {b}")
        } else {
            format!("strategy {b}")
        };
        let name = format!("back-to-back reloads, {what}, c={c} ({rate})");
        let (line, x) = row(&name, &tsv, reloads, held)?;
        writeln!(t, "{line}")?;
        let base = match peer {
            true => a.out.join(format!("peer-{b}-baseline-c{c}.tsv")),
            false => a.out.join(format!("baseline-c{c}.tsv")),
        };
        let vs_base = match base.exists() {
            true => {
                let s = Summary::of(&read_tsv(&std::fs::read_to_string(&base)?));
                format!("p99 {:.2}x its baseline's", x.p99 / s.p99)
            }
            false => "no baseline in this run".into(),
        };
        let cpu = cpu_note(&a.out.join(format!("{stem}.cpu")));
        writeln!(
            ratios,
            "- c={c}: back-to-back {what}: {rate}, {vs_base}{cpu}"
        )?;
    }
    Ok(())
}

/// The baseline and every strategy's row for one place of the clients and
/// one concurrency, with their ratios to the baseline and to `none`.
fn strategy_rows(
    a: &Args,
    clients: Clients,
    c: usize,
    t: &mut String,
    ratios: &mut String,
) -> Result<()> {
    let (base_stem, _) = clients.stems("");
    let who = match clients {
        Clients::Local => String::new(),
        Clients::Remote => "remote clients: ".into(),
    };
    let mut by_strategy = Vec::new();
    let base = a.out.join(format!("{base_stem}-c{c}.tsv"));
    let (base_line, base_summary) = row(&format!("{who}baseline, c={c}"), &base, None, None)?;
    writeln!(t, "{base_line}")?;
    plot(&base, &format!("{who}baseline, c={c}"))?;
    if c == 1 && clients == Clients::Local {
        if let Some(ab) = ab_row(&a.out)? {
            writeln!(t, "{ab}")?;
        }
    }
    for s in &a.strategies {
        let (_, stem) = clients.stems(s);
        let tsv = a.out.join(format!("{stem}-c{c}.tsv"));
        let reloads = std::fs::read_to_string(a.out.join(format!("{stem}-c{c}.reloads")))
            .ok()
            .and_then(|x| {
                let mut it = x.lines().map(|l| l.trim().parse::<u64>().unwrap_or(0));
                Some((it.next()?, it.next().unwrap_or(0)))
            });
        let held = std::fs::read_to_string(a.out.join(format!("{stem}-c{c}.log")))
            .ok()
            .and_then(|log| held_times(&log));
        // Under --interleave, the strategy's own baseline: slices of the
        // same run with nothing reloading.
        let own_base = a.out.join(format!("baseline-{s}-c{c}.tsv"));
        let own_base = match clients == Clients::Local && own_base.exists() {
            true => {
                let name = format!("interleaved: baseline, strategy {s}, c={c}");
                let (line, summary) = row(&name, &own_base, None, None)?;
                writeln!(t, "{line}")?;
                Some(summary)
            }
            false => None,
        };
        let name = match own_base {
            Some(_) => format!("interleaved: SIGHUP every 100 ms, strategy {s}, c={c}"),
            None => format!("{who}reloading every 100 ms, strategy {s}, c={c}"),
        };
        let (line, summary) = row(&name, &tsv, reloads, held)?;
        writeln!(t, "{line}")?;
        by_strategy.push((s.clone(), summary, own_base));
        plot(&tsv, &name)?;
    }
    let none = by_strategy
        .iter()
        .find(|(s, _, _)| s == "none")
        .map(|(_, x, _)| x.clone());
    for (s, x, own_base) in &by_strategy {
        let (base, its) = match own_base {
            Some(b) => (b, "its interleaved baseline"),
            None => (&base_summary, "baseline"),
        };
        let vs_none = match (&none, s.as_str()) {
            (Some(n), name) if name != "none" => format!(
                "; / none: mean {:.2}x, p99 {:.2}x, max {:.2}x",
                x.mean / n.mean,
                x.p99 / n.p99,
                x.max / n.max
            ),
            _ => String::new(),
        };
        let (_, stem) = clients.stems(s);
        let cpu = cpu_note(&a.out.join(format!("{stem}-c{c}.cpu")));
        writeln!(
            ratios,
            "- {who}c={c}: {s} / {its}: mean {:.2}x, p99 {:.2}x, max {:.2}x{vs_none}{cpu}",
            x.mean / base.mean,
            x.p99 / base.p99,
            x.max / base.max
        )?;
    }
    Ok(())
}

/// "; CPU per reload: ..." from a run's `.cpu` file, or nothing without one.
fn cpu_note(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| cpu_per_reload(&t))
        .map_or(String::new(), |(own, gens)| {
            format!("; CPU per reload: reloader {own:.2} ms, its generations {gens:.2} ms")
        })
}

/// CPU per reload over a reloading run, in ms: the reloader's own and that
/// of the generations it reaped, from bench.sh's line `reloads0 utime
/// stime cutime cstime reloads1 utime stime cutime cstime` (1/100 s).
fn cpu_per_reload(line: &str) -> Option<(f64, f64)> {
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    let [r0, u0, s0, cu0, cs0, r1, u1, s1, cu1, cs1] = v[..] else {
        return None;
    };
    let n = r1 - r0;
    (n > 0.0).then(|| {
        (
            ((u1 - u0) + (s1 - s0)) * 10.0 / n,
            ((cu1 - cu0) + (cs1 - cs0)) * 10.0 / n,
        )
    })
}

/// The `ab` cross-check of the c=1 baseline: its own mean and failures, and
/// percentiles from its `-g` file (whole milliseconds: ab's resolution).
fn ab_row(out: &Path) -> Result<Option<String>> {
    let Ok(txt) = std::fs::read_to_string(out.join("ab-baseline-c1.txt")) else {
        return Ok(None);
    };
    let field = |prefix: &str| {
        txt.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    let complete = field("Complete requests");
    let failed = field("Failed requests");
    let mean = field("Time per request");
    let g = std::fs::read_to_string(out.join("ab-baseline-c1.tsv")).unwrap_or_default();
    let mut ttime: Vec<f64> = g
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(4)?.trim().parse().ok())
        .collect();
    ttime.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        ttime
            .get(((q * ttime.len() as f64).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Some(format!(
        "| cross-check: ab -n {complete}, same baseline server | {complete} | {failed} | - | - | {mean} | - | {:.0} | {:.0} | {:.0} | {:.0} |",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        ttime.last().copied().unwrap_or(0.0)
    )))
}

/// A scatter plot like the seed's: response time against time, one colour
/// per serving PID, failures as red crosses. Drawn by gnuplot.
fn plot(tsv: &Path, title: &str) -> Result<()> {
    let text = std::fs::read_to_string(tsv)?;
    let records = read_tsv(&text);
    let mut pids: Vec<u32> = records.iter().filter_map(|r| r.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let mut ok = String::new();
    let mut bad = String::new();
    for r in &records {
        let (x, y) = (r.start.as_secs_f64(), r.total.as_secs_f64() * 1e3);
        match r.pid {
            Some(p) => {
                let colour = pids.binary_search(&p).unwrap_or(0) % 8 + 1;
                writeln!(ok, "{x:.6} {y:.3} {colour}")?;
            }
            None => writeln!(bad, "{x:.6} {y:.3}")?,
        }
    }
    let stem = tsv.with_extension("");
    let (okf, badf, png) = (
        stem.with_extension("ok.dat"),
        stem.with_extension("failed.dat"),
        tsv.with_extension("png"),
    );
    std::fs::write(&okf, ok)?;
    std::fs::write(
        &badf,
        if bad.is_empty() {
            "nan nan\n".to_string()
        } else {
            bad
        },
    )?;
    let failed = records.iter().filter(|r| r.pid.is_none()).count();
    let script = format!(
        "set terminal pngcairo size 1000,500\nset output '{png}'\nset title '{title}: {n} requests, {failed} failed, {np} server PIDs'\n\
         set xlabel 'time (s)'\nset ylabel 'response time (ms)'\nset key top right\nset grid\n\
         plot '{okf}' using 1:2:3 with points pt 7 ps 0.3 lc variable title 'ok (colour: serving PID)', \
         '{badf}' using 1:2 with points pt 2 ps 1.5 lc rgb 'red' title 'failed'\n",
        png = png.display(),
        okf = okf.display(),
        badf = badf.display(),
        n = records.len(),
        np = pids.len(),
    );
    let gp = stem.with_extension("gp");
    std::fs::write(&gp, script)?;
    exec(Command::new("gnuplot").arg(&gp))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_reload_reads_bench_sh_lines() {
        // 10 reloads; the reloader used 20 + 5 ticks, its generations 40 + 10.
        let (own, gens) = cpu_per_reload("2 100 50 0 0 12 120 55 40 10\n").unwrap();
        assert!((own - 25.0).abs() < 1e-9, "{own}");
        assert!((gens - 50.0).abs() < 1e-9, "{gens}");
        assert_eq!(cpu_per_reload("3 1 1 1 1 3 2 2 2 2"), None, "no reload");
        assert_eq!(cpu_per_reload("garbage"), None);
    }
}
