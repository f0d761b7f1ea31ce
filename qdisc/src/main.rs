//! `qdisc`: the plug tree from the command line. Parse, act through the
//! library, print; never spawns a process.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qdisc::{policy, Classifier, Config, Plug, Sources};

/// Build, toggle and inspect the prio/pfifo/plug tree that holds new TCP
/// connections (SYNs) during a server reload. Talks to the kernel over
/// netlink; needs CAP_NET_ADMIN.
#[derive(Parser, Debug)]
#[command(name = "qdisc", version)]
struct Cli {
    /// Network device the tree lives on.
    #[arg(long, global = true, default_value = "lo")]
    dev: String,

    /// Hold SYNs arriving on --dev (remote clients) instead of those it
    /// sends: an ifb device of ours (`ifb-DEV-PORT`, one per service) carries the plug tree, and
    /// u32 filters on DEV's ingress redirect SYNs to the port there (u32,
    /// since tc ingress runs before netfilter's marks exist). plug, release,
    /// status and teardown then act on that path.
    #[arg(long, global = true)]
    ingress: bool,

    /// As root, act on an ingress path recorded as another user's.
    #[arg(long, global = true)]
    force: bool,

    /// The served port (repeatable): setup holds only SYNs to it, so no
    /// other connection on the machine ever waits. With --ingress, the
    /// ports are one service (named by the lowest), with its own ifb and
    /// plug beside the device's other services; plug, release, teardown and
    /// status act on that service (status without --port lists them all).
    /// Default for setup: every port.
    #[arg(long = "port", global = true, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add prio 1: (4 bands), pfifos 10: 20: 30:, plug 40: (released) and the
    /// SYN classifier. Idempotent; on failure removes what it added.
    Setup {
        /// fw: an nf_tables rule marks SYNs and an fw filter sends mark 1 to
        /// the plug (as the seed). u32: a u32 filter matches SYNs itself, no
        /// netfilter. Default fw; with --ingress only u32 applies.
        #[arg(long)]
        classifier: Option<Classifier>,
        /// The plug's limit in bytes; SYNs beyond it are dropped (clients retry ~1 s later).
        #[arg(long, value_name = "BYTES", default_value_t = qdisc::DEFAULT_LIMIT)]
        limit: u32,
        /// Hold SYNs only from this source address (repeatable), or `any`.
        /// Default: 127.0.0.1 and ::1 (local clients, as the seed).
        #[arg(long = "source", value_name = "ADDR|any")]
        sources: Vec<String>,
    },
    /// Remove our tree (releasing the plug first) and our nf_tables tables.
    /// Touches nothing else.
    Teardown,
    /// Start holding new connections.
    Plug,
    /// Let held connections go, and all new ones until the next plug.
    Release,
    /// Let go what was held when the plug began; keep holding the rest.
    ReleaseOne,
    /// Show whether the tree is complete, the plug's state and its counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Find which of prio, pfifo, plug, fw, u32 and nf_tables this kernel
    /// supports, by trying each in a throwaway network namespace.
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// (packaging) Write the man pages (qdisc.1, qdisc-setup.1, ...) into
    /// DIR/man and the bash, zsh and fish completions into DIR/completions.
    #[command(hide = true)]
    Generate {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// The man pages and shell completions, from the same clap definitions.
fn generate(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "qdisc", &completions)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // `qdisc status | grep -q` closes the pipe early: end quietly, as a
    // shell tool does, instead of panicking on the write.
    // SAFETY: restoring the default disposition of one signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    if let Command::Generate { dir } = &cli.command {
        return match generate(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qdisc: error: writing into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qdisc: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `command` changes anything (status and probe only look).
fn changes(command: &Command) -> bool {
    !matches!(command, Command::Status { .. } | Command::Probe { .. })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.ingress {
        return run_ingress(cli);
    }
    let caller = policy::Caller::current();
    if caller != policy::Caller::Unrestricted && changes(&cli.command) {
        anyhow::bail!(
            "as {}, only the ingress path (--ingress) may be used: the tree on a device's root queues every packet the device sends, so it is root's to set up",
            caller.name()
        );
    }
    let dev = cli.dev;
    match cli.command {
        Command::Setup {
            classifier,
            limit,
            sources,
        } => {
            let ports = cli.ports;
            anyhow::ensure!(
                ports.len() <= 1,
                "the tree on a device's root holds one port: give one --port, or use --ingress for several"
            );
            let port = ports.first().copied();
            authorize_setup(&dev, &ports, limit)?;
            let classifier = classifier.unwrap_or(Classifier::Fw);
            let sources = parse_sources(&sources)?;
            qdisc::setup(&Config {
                dev: dev.clone(),
                limit,
                classifier,
                sources,
                port,
            })?;
            println!(
                "qdisc: tree ready on {dev} (classifier {}, {}, plug released)",
                classifier.kind(),
                port.map_or("every port".into(), |p| format!("port {p}"))
            );
        }
        Command::Teardown => {
            qdisc::teardown(&dev)?;
            println!("qdisc: removed our tree and nf_tables tables from {dev}");
        }
        Command::Plug => {
            Plug::open(&dev)?.buffer()?;
            println!("qdisc: plug on {dev} is buffering new connections");
        }
        Command::Release => {
            Plug::open(&dev)?.release()?;
            println!("qdisc: plug on {dev} released");
        }
        Command::ReleaseOne => {
            Plug::open(&dev)?.release_one()?;
            println!("qdisc: plug on {dev} released what it held before the last plug");
        }
        Command::Status { json } => {
            let s = qdisc::status(&dev)?;
            if json {
                println!("{}", status_json(&s));
            } else {
                print!("{}", status_text(&s));
            }
            // Scripts can test completeness by the exit status.
            return Ok(if s.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            });
        }
        Command::Generate { .. } => unreachable!("handled in main"),
        Command::Probe { json } => {
            let p = qdisc::probe()?;
            if json {
                let map: serde_json::Map<String, serde_json::Value> = p
                    .features
                    .iter()
                    .map(|(n, s)| {
                        let v = match s {
                            Ok(()) => serde_json::json!({ "supported": true }),
                            Err(why) => serde_json::json!({ "supported": false, "error": why }),
                        };
                        (n.to_string(), v)
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                for (n, s) in &p.features {
                    match s {
                        Ok(()) => println!("{n:10} yes"),
                        Err(why) => println!("{n:10} NO   {why}"),
                    }
                }
            }
            return Ok(if p.missing().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same commands on the ingress path of `--dev`.
fn run_ingress(cli: Cli) -> anyhow::Result<ExitCode> {
    let dev = cli.dev;
    // Who may act at all comes first (setup checks its ports itself).
    if changes(&cli.command) && !matches!(cli.command, Command::Setup { .. }) {
        policy::authorize_device(&dev)?;
    }
    let ports = match (&cli.command, cli.ports.is_empty()) {
        (Command::Setup { .. } | Command::Status { .. } | Command::Probe { .. }, _)
        | (_, false) => cli.ports.clone(),
        // No --port: the device's one service, if it has just one.
        (_, true) => only_service(&dev)?,
    };
    let ifb = qdisc::ifb_of(&dev, &ports);
    match cli.command {
        Command::Setup {
            classifier,
            limit,
            sources,
        } => {
            anyhow::ensure!(
                classifier.unwrap_or(Classifier::U32) == Classifier::U32,
                "--ingress classifies with u32 (tc ingress runs before netfilter's marks exist): drop --classifier fw"
            );
            anyhow::ensure!(
                sources.is_empty(),
                "--ingress holds SYNs from every source to the port; --source does not apply"
            );
            let which = match ports.as_slice() {
                [] => "every port".to_owned(),
                [p] => format!("port {p}"),
                many => format!("ports {many:?}"),
            };
            authorize_setup(&dev, &ports, limit)?;
            qdisc::ingress::setup(&qdisc::IngressConfig {
                dev: dev.clone(),
                ports: ports.clone(),
                limit,
                force: cli.force,
            })?;
            println!("qdisc: ingress path ready on {dev} -> {ifb} ({which}, plug released)");
        }
        Command::Teardown => {
            policy::authorize_device(&dev)?;
            qdisc::ingress::teardown(&dev, &ports, cli.force)?;
            println!("qdisc: removed {ifb} with its tree and its redirects on {dev}");
        }
        Command::Plug => {
            let limits = policy::authorize_device(&dev)?;
            qdisc::ingress::check_owner(&dev, &ports, cli.force)?;
            if policy::Caller::current() != policy::Caller::Unrestricted {
                return bounded_plug(&dev, &ifb, limits.max_hold);
            }
            Plug::open(&ifb)?.buffer()?;
            println!("qdisc: plug on {ifb} is buffering new connections arriving on {dev}");
        }
        Command::Release => {
            policy::authorize_device(&dev)?;
            qdisc::ingress::check_owner(&dev, &ports, cli.force)?;
            Plug::open(&ifb)?.release()?;
            println!("qdisc: plug on {ifb} released");
        }
        Command::ReleaseOne => {
            policy::authorize_device(&dev)?;
            qdisc::ingress::check_owner(&dev, &ports, cli.force)?;
            Plug::open(&ifb)?.release_one()?;
            println!("qdisc: plug on {ifb} released what it held before the last plug");
        }
        Command::Status { json } => {
            let all = match ports.is_empty() {
                true => qdisc::ingress::services(&dev)?,
                false => vec![qdisc::ingress::status(&dev, &ports)?],
            };
            if json {
                let v: Vec<serde_json::Value> = all.iter().map(ingress_json).collect();
                // One service asked for: its object; else the list.
                match (ports.is_empty(), v.as_slice()) {
                    (false, [one]) => println!("{one}"),
                    _ => println!("{}", serde_json::Value::Array(v)),
                }
            } else {
                if all.is_empty() {
                    println!("device     {dev}\nservices   none");
                }
                for s in &all {
                    print!("{}", ingress_text(s));
                }
            }
            return Ok(if !all.is_empty() && all.iter().all(|s| s.complete()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            });
        }
        Command::Generate { .. } => unreachable!("handled in main"),
        Command::Probe { .. } => {
            return run(Cli {
                ingress: false,
                force: cli.force,
                ports: cli.ports,
                dev,
                command: cli.command,
            })
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A setup's ports, device and plug limit, against the policy.
fn authorize_setup(dev: &str, ports: &[u16], limit: u32) -> anyhow::Result<()> {
    policy::authorize_hold(&policy::Hold {
        ports,
        devices: &[dev.to_owned()],
        hold: Duration::ZERO,
        limit,
    })?;
    Ok(())
}

/// A user's plug: held in the foreground for at most `bound` (their
/// policy's longest hold), released at the bound or at SIGINT/SIGTERM,
/// and by a watchdog if this process is killed.
fn bounded_plug(dev: &str, ifb: &str, bound: Duration) -> anyhow::Result<ExitCode> {
    let mut watchdog = qdisc::watchdog::Watchdog::spawn(vec![ifb.to_owned()], bound)?;
    let signals = block_stop_signals()?;
    let mut plug = Plug::open(ifb)?;
    watchdog.holding();
    plug.buffer()?;
    println!(
        "qdisc: plug on {ifb} is buffering new connections arriving on {dev}, for at most {bound:?} (the policy's bound; SIGINT or SIGTERM releases sooner)"
    );
    let ts = libc::timespec {
        tv_sec: bound.as_secs() as libc::time_t,
        tv_nsec: bound.subsec_nanos() as libc::c_long,
    };
    // SAFETY: waits on the signals we blocked, with a timeout; no handler runs.
    unsafe { libc::sigtimedwait(&signals, std::ptr::null_mut(), &ts) };
    let held = plug.release()?;
    watchdog.released();
    println!(
        "qdisc: plug on {ifb} released after {:?}",
        held.unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset_t is initialised by sigemptyset before use;
    // sigprocmask changes only this (single) thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// The ports of the one service on `dev`'s ingress, or an error that
/// lists them when there are several (or none).
fn only_service(dev: &str) -> anyhow::Result<Vec<u16>> {
    let all = qdisc::ingress::services(dev)?;
    match all.as_slice() {
        [one] => Ok(one.ports.clone()),
        [] => anyhow::bail!(
            "no service of ours on {dev}'s ingress: set one up with `qdisc --dev {dev} --ingress setup --port PORT`"
        ),
        many => anyhow::bail!(
            "{} services on {dev}'s ingress ({}): say which with --port",
            many.len(),
            many.iter()
                .map(|s| format!("{} ports {:?}", s.ifb, s.ports))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

fn ingress_json(s: &qdisc::IngressStatus) -> serde_json::Value {
    serde_json::json!({
        "dev": s.dev,
        "ifb": s.ifb,
        "ifb_present": s.ifb_present,
        "owner": s.owner.map(|(uid, pid)| serde_json::json!({ "uid": uid, "pid": pid })),
        "ports": s.ports,
        "ingress": s.ingress,
        "redirects": s.redirects,
        "complete": s.complete(),
        "tree": s.tree.as_ref().map(|t| serde_json::from_str::<serde_json::Value>(&status_json(t)).expect("our own JSON")),
    })
}

fn ingress_text(s: &qdisc::IngressStatus) -> String {
    let mut out = format!(
        "device     {}\ningress    {}\nifb        {} {}\n",
        s.dev,
        s.ingress.as_deref().unwrap_or("absent"),
        s.ifb,
        if s.ifb_present { "present" } else { "absent" }
    );
    if let Some((uid, pid)) = s.owner {
        let ports = match s.ports.as_slice() {
            [] => "every port".to_string(),
            p => format!("ports {p:?}"),
        };
        out += &format!("owner      uid {uid} (set up by PID {pid}), {ports}\n");
    }
    out += &format!(
        "redirects  {}\n",
        if s.redirects.is_empty() {
            "none".to_string()
        } else {
            s.redirects.join(", ")
        }
    );
    if let Some(t) = &s.tree {
        out += &status_text(t);
    }
    out
}

fn parse_sources(args: &[String]) -> anyhow::Result<Sources> {
    if args.is_empty() {
        return Ok(Sources::default());
    }
    if args.iter().any(|a| a == "any") {
        return Ok(Sources::Any);
    }
    let addrs = args
        .iter()
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| anyhow::anyhow!("--source {a:?} is not an IP address or `any`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Sources::Only(addrs))
}

fn buffering_word(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "buffering",
        Some(false) => "released",
        None => "unknown (never toggled here)",
    }
}

fn status_text(s: &qdisc::Status) -> String {
    let mut out = format!("device     {}\n", s.dev);
    let yes = |b: bool| if b { "present" } else { "MISSING" };
    match &s.other_root {
        Some(kind) => out += &format!("root       not ours ({kind})\n"),
        None => out += &format!("root       prio 1: {}\n", yes(s.root)),
    }
    out += &format!(
        "fifos      10: {}  20: {}  30: {}\n",
        yes(s.fifos[0]),
        yes(s.fifos[1]),
        yes(s.fifos[2])
    );
    match &s.plug {
        Some(p) => {
            out += &format!("plug       40: {}\n", buffering_word(s.buffering));
            out += &format!(
                "  held     {} packets, {} bytes\n",
                p.held_packets, p.held_bytes
            );
            out += &format!("  dropped  {}\n", p.drops);
            out += &format!(
                "  sent     {} packets, {} bytes through band 4\n",
                p.sent_packets, p.sent_bytes
            );
        }
        None => out += "plug       40: MISSING\n",
    }
    let filters: Vec<String> = s
        .filters
        .iter()
        .map(|(k, f)| format!("{k} ({f})"))
        .collect();
    out += &format!(
        "filters    {}\n",
        if filters.is_empty() {
            "none".into()
        } else {
            filters.join(", ")
        }
    );
    out += &format!(
        "nf_tables  {}\n",
        if s.tables.is_empty() {
            "no table of ours".into()
        } else {
            s.tables
                .iter()
                .map(|f| format!("{f} reuse_plug"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    out += &format!("complete   {}\n", if s.complete() { "yes" } else { "no" });
    out
}

/// `status --json`: the kernel's answers (tree, filters, tables, the
/// plug's counters) and, marked as such, our record of whether the plug is
/// buffering (the kernel does not report it).
fn status_json(s: &qdisc::Status) -> String {
    #[derive(serde::Serialize)]
    struct PlugJson {
        /// From our record, not the kernel.
        buffering: Option<bool>,
        held_packets: u32,
        held_bytes: u32,
        drops: u32,
        sent_packets: u32,
        sent_bytes: u64,
        buffering_from: &'static str,
        counters_from: &'static str,
    }
    #[derive(serde::Serialize)]
    struct FilterJson<'a> {
        kind: &'a str,
        family: &'a str,
    }
    #[derive(serde::Serialize)]
    struct StatusJson<'a> {
        dev: &'a str,
        complete: bool,
        root: bool,
        other_root: Option<&'a str>,
        fifos: [bool; 3],
        plug: Option<PlugJson>,
        filters: Vec<FilterJson<'a>>,
        nf_tables: &'a [&'static str],
    }
    let out = StatusJson {
        dev: &s.dev,
        complete: s.complete(),
        root: s.root,
        other_root: s.other_root.as_deref(),
        fifos: s.fifos,
        plug: s.plug.as_ref().map(|p| PlugJson {
            buffering: s.buffering,
            held_packets: p.held_packets,
            held_bytes: p.held_bytes,
            drops: p.drops,
            sent_packets: p.sent_packets,
            sent_bytes: p.sent_bytes,
            buffering_from: "record",
            counters_from: "kernel",
        }),
        filters: s
            .filters
            .iter()
            .map(|(k, f)| FilterJson { kind: k, family: f })
            .collect(),
        nf_tables: &s.tables,
    };
    serde_json::to_string(&out).expect("plain data serializes")
}
