//! `reloader`: zero-downtime reloads of a SO_REUSEPORT server. Parse,
//! restrict privileges (before any thread exists), then supervise.

mod control;
mod error;
mod generation;
mod handoff;
mod health;
mod kernel;
mod listeners;
mod logging;
mod metrics;
mod notify;
mod owner;
mod privs;
mod report;
mod serve;
mod service;
mod softnet;
mod steer;
mod strategy;
mod supervisor;
mod swap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use qdisc::Classifier;

use crate::logging::log;
use crate::supervisor::{Options, Supervisor};

/// Replace a SO_REUSEPORT server with a new generation without a failed
/// request. Needs CAP_NET_ADMIN (`sudo setcap cap_net_admin+ep reloader`),
/// not root; the servers it starts get no capabilities.
#[derive(Parser, Debug)]
#[command(name = "reloader", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start COMMAND and keep one healthy generation serving; reload on
    /// SIGHUP, on `reloader reload`, or every --every.
    Run(Box<RunArgs>),
    /// Ask the running supervisor to reload; exits 0 when the new server
    /// took over, 1 with the reason when it rolled back.
    Reload {
        /// The supervisor's control socket.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Show what the running supervisor is doing: strategy, serving
    /// generation, reloads, the last reload's timings and held time, and
    /// the plug's state as the kernel reports it.
    Status {
        /// The supervisor's control socket.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// One JSON object (stable field names) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// (packaging) Write the man pages (reloader.1, reloader-run.1, ...) into
    /// DIR/man and the bash, zsh and fish completions into DIR/completions.
    #[command(hide = true)]
    Generate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// (internal) Set LISTEN_PID to our own PID and exec COMMAND: how
    /// `--strategy handoff` gives a server sockets libsystemd accepts.
    #[command(hide = true)]
    ExecListen {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The server's address (repeatable): the first one's port is the one
    /// whose listeners are watched, and where the default check sends `GET
    /// /` expecting the new server's PID. With `--strategy handoff` the
    /// reloader listens on every one of them and hands the sockets over.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: Vec<SocketAddr>,
    /// Check this URL instead (http://IP:PORT/PATH must answer 2xx, from the
    /// new server when the response has `x-server-pid`).
    #[arg(long, value_name = "URL", value_parser = health::Check::from_url)]
    health: Option<health::Check>,
    /// How long a new server may take to listen and pass its check.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// The signal that makes the server drain and exit. Servers differ:
    /// nginx QUIT (its TERM is a fast shutdown that drops connections),
    /// HAProxy USR1 (TERM is its hard stop), gunicorn, uvicorn, reuse-server
    /// TERM, puma TERM, unicorn QUIT. A name (QUIT, SIGQUIT) or a number.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    stop_signal: i32,
    /// Capabilities the servers keep (comma-separated; root only). By
    /// default they get none. nginx started as root to bind port 80 and
    /// switch to its `user` wants CAP_NET_BIND_SERVICE,CAP_SETUID,
    /// CAP_SETGID,CAP_CHOWN.
    #[arg(long, value_name = "CAPS", value_delimiter = ',', value_parser = privs::parse_cap)]
    server_caps: Vec<privs::Capability>,
    /// How long an old server may take to drain before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// The longest one hold may last: past it the hold is released, logged,
    /// and the reload carries on (a listener that did not close by then is
    /// SIGKILLed at --drain-timeout, held again for that instant).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    hold_limit: Duration,
    /// steer only: after its check, the new server gets a share of new
    /// connections (--canary) for this long beside the old one; if it
    /// exits or fails a check meanwhile, everything goes back to the old
    /// one and the new one is retired; otherwise it takes over.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    probation: Option<Duration>,
    /// The new server's share of new connections during --probation, in
    /// percent (default 10).
    #[arg(long, value_name = "PERCENT", requires = "probation", value_parser = clap::value_parser!(u32).range(1..=100))]
    canary: Option<u32>,
    /// Reload continuously, waiting this long after each reload ends before
    /// the next (like the seed's `bin/reload` loop: reload, sleep 0.1).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    every: Option<Duration>,
    /// plug: hold new connections in a plug qdisc while the listener set
    /// changes (CAP_NET_ADMIN). migrate: the kernel's tcp_migrate_req
    /// (rare resets under load). handoff: every generation gets the
    /// reloader's own sockets (LISTEN_FDS). steer: a BPF program on the
    /// SO_REUSEPORT group picks each connection's generation (Linux 5.14+,
    /// CAP_BPF at start). none: no protection, for comparison only.
    #[arg(long, value_enum, default_value = "plug")]
    strategy: Strategy,
    /// Device the local clients' SYNs cross (lo).
    #[arg(long, default_value = "lo")]
    dev: String,
    /// Where local clients' SYNs are held. ingress: redirected on DEV's
    /// ingress to an ifb of ours that holds them, so only those SYNs ever
    /// wait in a queue. egress: the prio tree on DEV's root (the seed's);
    /// every packet DEV sends then passes a queue that any CPU may dequeue,
    /// which reorders a connection's packets on lo and veth (ab stalls on
    /// it; see the README).
    #[arg(long, value_enum, default_value = "ingress")]
    local_hold: LocalHold,
    /// Classifier used when the egress tree has to be set up (fw or u32).
    #[arg(long, default_value = "fw")]
    classifier: Classifier,
    /// Also hold remote clients arriving on DEV (repeatable): SYNs to our
    /// port are redirected on DEV's ingress to an ifb device of ours, where
    /// a plug holds them together with the local one (one hold, one bound).
    /// Classified with u32: tc ingress runs before netfilter's marks.
    #[arg(long = "ingress", value_name = "DEV")]
    ingress: Vec<String>,
    /// Refuse to start when the plug tree is missing instead of setting it up.
    #[arg(long)]
    no_setup: bool,
    /// As root, take over an ingress path recorded as another user's.
    #[arg(long)]
    force: bool,
    /// Control socket for `reloader reload` and `reloader status`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (`GET /metrics`): reloads by
    /// outcome, reload duration and held time, the plug's kernel counters.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// text: `reloader: ...` lines for a person; json: one object per line,
    /// with fields (event, number, held_ms, ...), for a log pipeline.
    #[arg(long, value_enum, default_value = "text")]
    log_format: logging::LogFormat,
    /// The server command and its arguments (run directly, no shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    Plug,
    Migrate,
    Handoff,
    /// A BPF program on each served SO_REUSEPORT group picks each new
    /// connection's generation: nothing held (Linux 5.14+, CAP_BPF).
    Steer,
    None,
}

/// `100ms`, `2s`, `1m 30s` (humantime's syntax).
/// The signals a server may take as "drain and exit".
const STOP_SIGNALS: &[(&str, i32)] = &[
    ("TERM", libc::SIGTERM),
    ("QUIT", libc::SIGQUIT),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
];

fn parse_signal(s: &str) -> Result<i32, String> {
    let name = s.trim_start_matches("SIG");
    if let Some((_, n)) = STOP_SIGNALS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        return Ok(*n);
    }
    match s.parse::<i32>() {
        Ok(n) if STOP_SIGNALS.iter().any(|(_, v)| *v == n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a stop signal: one of {} (a name or its number)",
            STOP_SIGNALS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (want e.g. 100ms, 2s, 1m)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Generate { dir } => match generate(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("reloader: error: writing into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Cmd::Reload { control } => {
            let path = match control.map_or_else(control::default_path, Ok) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("reloader: control socket: {e} (or --control PATH)");
                    return ExitCode::from(2);
                }
            };
            match control::ask(&path, "reload") {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("reloader: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { control, json } => {
            let path = match control.map_or_else(control::default_path, Ok) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("reloader: control socket: {e} (or --control PATH)");
                    return ExitCode::from(2);
                }
            };
            let status = control::ask(&path, "status").and_then(|reply| {
                serde_json::from_str::<report::Status>(&reply)
                    .map_err(|e| format!("unreadable status from the reloader ({e}): {reply}"))
            });
            // Written, not printed: `reloader status | head -3` closes the
            // pipe early, which is no error of ours (print! would panic).
            use std::io::Write as _;
            match status {
                Ok(s) if json => {
                    let json = serde_json::to_string(&s).expect("plain data");
                    let _ = writeln!(std::io::stdout(), "{json}");
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    let _ = write!(std::io::stdout(), "{s}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("reloader: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::ExecListen { command } => {
            let err = handoff::exec_listen(&command);
            eprintln!("reloader: cannot start {:?}: {err}", command[0]);
            ExitCode::from(127)
        }
        Cmd::Run(args) => {
            logging::init(args.log_format);
            let early = match strategy::start(&args) {
                Ok(early) => early,
                Err(refused) => {
                    eprintln!("reloader: error: {}", refused.message);
                    return ExitCode::from(refused.code);
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(*args, early)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("reloader: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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
        clap_complete::generate_to(shell, &mut Cli::command(), "reloader", &completions)?;
    }
    Ok(())
}

/// How long past `--hold-limit` the watchdog waits before it releases a
/// hold itself: the supervisor releases at the limit; this is the backstop.
const WATCHDOG_MARGIN: Duration = Duration::from_millis(250);

/// A server that listens on a port it was not given (`--addr`) has that
/// port's listener closed unwatched and unheld at each reload: said at
/// start, with the flag that would protect it.
fn warn_unwatched_ports(gen: &generation::Generation, ports: &[u16]) {
    let mine = match gen.sockets() {
        Ok(s) => s,
        Err(e) => return log(&format!("cannot list the server's sockets: {e}")),
    };
    let all = match listeners::Listeners::open().and_then(|mut l| l.all_listening()) {
        Ok(a) => a,
        Err(e) => return log(&format!("cannot list the listening sockets: {e}")),
    };
    let mut other: Vec<u16> = all
        .into_iter()
        .filter(|(port, inode)| mine.contains(inode) && !ports.contains(port))
        .map(|(port, _)| port)
        .collect();
    other.sort_unstable();
    other.dedup();
    if !other.is_empty() {
        let flags: Vec<String> = other.iter().map(|p| format!("--addr HOST:{p}")).collect();
        log(&format!(
            "warning: PID {} also listens on port(s) {other:?}, which are not watched or held at a reload (clients there can be reset): add {}",
            gen.pid,
            flags.join(" ")
        ));
    }
}

/// A binary of ours with a file capability that anyone may run gives
/// everyone on the machine what the policy allows: said at start.
fn warn_if_open_to_all() {
    use std::os::unix::fs::PermissionsExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let Ok(meta) = std::fs::metadata(&exe) else {
        return;
    };
    let Some(c) = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).ok() else {
        return;
    };
    // SAFETY: a size query (NULL buffer, length 0) of an attribute by path.
    let caps = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    if caps > 0 && meta.permissions().mode() & 0o001 != 0 {
        log(&format!(
            "warning: {} has a file capability and every user may run it (mode {:o}): install it root:reloader mode 0750 so only the allowed group can",
            exe.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LocalHold {
    Ingress,
    Egress,
}

impl RunArgs {
    /// Every `--addr`'s port, once each.
    fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.addr.iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The devices whose ingress path we hold (an ifb each): DEV's own for
    /// local clients unless its egress tree does that, then each --ingress.
    fn ingress_devs(&self) -> Vec<&str> {
        let local = (self.local_hold == LocalHold::Ingress).then_some(self.dev.as_str());
        let mut devs: Vec<&str> = local.into_iter().collect();
        for d in &self.ingress {
            if !devs.contains(&d.as_str()) {
                devs.push(d);
            }
        }
        devs
    }

    /// The ifb that holds our ports' SYNs arriving on `dev` (ours alone:
    /// other services on `dev` have their own).
    fn ifb_of(&self, dev: &str) -> String {
        qdisc::ifb_of(dev, &self.ports())
    }

    /// Every plug we hold: the egress tree's device, then each ifb.
    fn plug_devs(&self) -> Vec<String> {
        let egress = (self.local_hold == LocalHold::Egress).then(|| self.dev.clone());
        egress
            .into_iter()
            .chain(self.ingress_devs().into_iter().map(|d| self.ifb_of(d)))
            .collect()
    }
}

async fn run(args: RunArgs, early: strategy::Early) -> anyhow::Result<()> {
    // A generation's processes whose parent exits (a launcher's child, a
    // daemon's fork) are reparented to us, not to init: they stay ours to
    // track, stop and reap (see `generation`).
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) changes only our own attribute.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    let prepared = strategy::prepare(&args, early)?;
    let check = match &args.health {
        Some(check) => check.clone(),
        None => health::Check::Pid(args.addr[0]),
    };
    let report = report::Report::new(prepared.swap.name(), prepared.plug_devs.clone());
    if let Some(addr) = args.metrics {
        let bound = metrics::serve(addr, report.clone())
            .with_context(|| format!("metrics endpoint {addr}"))?;
        log(&format!("metrics on http://{bound}/metrics"));
    }
    let control_path = match args.control.clone() {
        Some(p) => p,
        None => control::default_path().context("the control socket (or pass --control PATH)")?,
    };
    let requests = control::serve(&control_path, report.clone())
        .with_context(|| format!("control socket {}", control_path.display()))?;
    let notify_path = PathBuf::from(format!("{}.notify", control_path.display()));
    let on_cut = {
        let report = report.clone();
        move |pid, n| {
            tracing::warn!(
                event = "drain_cut",
                pid,
                connections = n,
                "PID {pid}: its drain timeout cut {n} connection(s) (requests may have been lost; see its drain line)"
            );
            report.connections_cut(n);
        }
    };
    let notify = notify::Notify::bind(&notify_path, on_cut)
        .with_context(|| format!("notify socket {}", notify_path.display()))?;
    let triggers = serve::Triggers::new(requests, args.every)?;

    log(&strategy::describe(&args, prepared.handoff.as_ref()));
    let opts = Options {
        handoff: prepared.handoff,
        ports: args.ports(),
        check,
        ready_timeout: args.ready_timeout,
        drain_timeout: args.drain_timeout,
        hold_limit: args.hold_limit,
        probation: args.probation.map(|d| (d, args.canary.unwrap_or(10) * 100)),
        stop_signal: args.stop_signal,
    };
    let kernel = Box::new(kernel::Real::open(&prepared.ifbs)?);
    let spawn = Box::new(kernel::Argv(args.command.clone()));
    let mut sup = Supervisor::start(opts, prepared.swap, kernel, spawn, notify).await?;
    report.serving(&sup.current);
    warn_unwatched_ports(&sup.current, &args.ports());
    service::ready(&format!("serving: PID {}", sup.current.pid));
    log(&format!(
        "serving; strategy {:?}; reload with SIGHUP or `reloader reload --control {}`",
        args.strategy,
        control_path.display()
    ));
    let result = sup.serve(triggers, &report).await;
    service::stopping();
    sup.shutdown().await;
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(&notify_path);
    let counts = report.counts();
    log(&format!(
        "exit: {} reloads succeeded, {} rolled back",
        counts.ok,
        counts.rolled_back + counts.failed
    ));
    drop(prepared.owners);
    result
}
