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
mod service;
mod softnet;
mod steer;
mod supervisor;
mod swap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use qdisc::{Classifier, Config, Plug};
use tokio::signal::unix::{signal, SignalKind};

use crate::supervisor::{log, Options, Supervisor};
use crate::swap::{NoSwap, PlugSwap, Swap};

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

/// How often draining generations are looked at between reloads.
const REAP_EVERY: Duration = Duration::from_millis(50);

/// One line at start: the strategy, and what in this kernel and this
/// process makes it work (or not).
fn why_strategy(args: &RunArgs, handoff: Option<&handoff::Handoff>) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let migrate = match kernel::migrate_req() {
        Ok(true) => "tcp_migrate_req=1",
        Ok(false) => "tcp_migrate_req=0",
        Err(_) => "tcp_migrate_req unreadable",
    };
    match args.strategy {
        Strategy::Plug if migrate == "tcp_migrate_req=1" => format!(
            "strategy plug (kernel {kernel}, CAP_NET_ADMIN, plug tree ready): {migrate}, and each listener close is held anyway, at most {:?}: the kernel's migration alone lost 7 of 560,326 requests in our soak",
            args.hold_limit
        ),
        Strategy::Plug => format!(
            "strategy plug (kernel {kernel}, CAP_NET_ADMIN, plug tree ready): {migrate}, so each listener close is held, at most {:?}",
            args.hold_limit
        ),
        Strategy::Migrate => format!(
            "strategy migrate (kernel {kernel}): {migrate} in this network namespace, restored at exit; nothing is held. Not zero-loss under load (7 of 560,326 requests reset in our soak on Linux 6.1): use plug or handoff for that"
        ),
        Strategy::Handoff => format!(
            "strategy handoff (kernel {kernel}): the reloader listens on {} and gives every generation these sockets (LISTEN_FDS, LISTEN_FDNAMES={}); nothing is held, no CAP_NET_ADMIN",
            handoff.map(|h| h.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
            handoff.map(|h| h.names()).unwrap_or_default(),
        ),
        Strategy::Steer => format!(
            "strategy steer (kernel {kernel}, program loaded on {} group(s)): each new connection goes to the generation chosen, by a BPF program on the SO_REUSEPORT group; a closing listener's leftovers migrate to it; nothing is held",
            args.addr.len()
        ),
        Strategy::None => format!(
            "strategy none (kernel {kernel}): no protection; for comparison only"
        ),
    }
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
            if args.probation.is_some() && args.strategy != Strategy::Steer {
                eprintln!("reloader: error: --probation needs --strategy steer (only the BPF program can send a share of new connections to the new server)");
                return ExitCode::from(2);
            }
            if let Err(e) = authorize(&args) {
                eprintln!("reloader: error: {e}");
                return ExitCode::from(2);
            }
            warn_if_open_to_all();
            // Forked while we have one thread, before any privilege is dropped.
            let watchdog = match needs_watchdog(&args) {
                Ok(false) => None,
                Ok(true) => match qdisc::watchdog::Watchdog::spawn(
                    plug_devs_of(&args),
                    args.hold_limit + WATCHDOG_MARGIN,
                ) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        eprintln!("reloader: error: cannot start the watchdog: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                Err(e) => {
                    eprintln!("reloader: error: {e}");
                    return ExitCode::from(2);
                }
            };
            // Loaded with the capabilities we start with; the maps are then
            // written through their fds, which needs none.
            let steer = match args.strategy {
                Strategy::Steer => match steer::Steer::load(&args.addr) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("reloader: error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                _ => None,
            };
            // Capability sets are per thread: restrict before the runtime exists.
            let restricted = match args.strategy {
                Strategy::Plug => privs::restrict_to(
                    privs::Capability::CAP_NET_ADMIN,
                    "plug and release",
                    &args.server_caps,
                ),
                Strategy::Migrate => match swap::MigrateSwap::already_on() {
                    Ok(true) => privs::drop_all(&args.server_caps),
                    Ok(false) => privs::restrict_to(
                        privs::Capability::CAP_NET_ADMIN,
                        "set net.ipv4.tcp_migrate_req",
                        &args.server_caps,
                    ),
                    Err(e) => Err(e.to_string()),
                },
                Strategy::Handoff
                    if args.addr.iter().any(|a| a.port() < 1024) && !handoff::activated() =>
                {
                    privs::restrict_to(
                        privs::Capability::CAP_NET_BIND_SERVICE,
                        "listen on a port below 1024",
                        &args.server_caps,
                    )
                }
                Strategy::Handoff | Strategy::Steer | Strategy::None => {
                    privs::drop_all(&args.server_caps)
                }
            };
            if let Err(e) = restricted {
                eprintln!("reloader: error: {e}");
                return ExitCode::from(2);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(run(*args, watchdog, steer)))
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

/// What the policy (`qdisc::policy`) says of this run: the ports and
/// devices held, the hold's bound, a change of `tcp_migrate_req`.
fn authorize(args: &RunArgs) -> Result<(), String> {
    use qdisc::policy;
    match args.strategy {
        Strategy::Plug => {
            let user = policy::Caller::current();
            if user != policy::Caller::Unrestricted && args.local_hold == LocalHold::Egress {
                return Err(format!(
                    "as {}, --local-hold egress is refused: the tree on {}'s root queues every packet it sends; it is root's (the default, ingress, holds only your ports' SYNs)",
                    user.name(),
                    args.dev
                ));
            }
            let mut devices: Vec<String> =
                args.ingress_devs().into_iter().map(String::from).collect();
            if args.local_hold == LocalHold::Egress {
                devices.insert(0, args.dev.clone());
            }
            policy::authorize_hold(&policy::Hold {
                ports: &args.ports(),
                devices: &devices,
                hold: args.hold_limit,
                limit: qdisc::DEFAULT_LIMIT,
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
        Strategy::Migrate => match swap::MigrateSwap::already_on() {
            Ok(true) => Ok(()),
            Ok(false) => policy::authorize_migrate().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Strategy::Handoff | Strategy::Steer | Strategy::None => Ok(()),
    }
}

/// The plug strategy, and migrate when it will change the sysctl.
fn needs_watchdog(args: &RunArgs) -> Result<bool, String> {
    match args.strategy {
        Strategy::Plug => Ok(true),
        Strategy::Migrate => swap::MigrateSwap::already_on()
            .map(|on| !on)
            .map_err(|e| e.to_string()),
        Strategy::Handoff | Strategy::Steer | Strategy::None => Ok(false),
    }
}

fn plug_devs_of(args: &RunArgs) -> Vec<String> {
    match args.strategy {
        Strategy::Plug => args.plug_devs(),
        _ => Vec::new(),
    }
}

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

/// Makes sure the plug tree is there (setting it up unless told not to) and
/// releases a plug a killed predecessor may have left buffering.
fn prepare_plug(args: &RunArgs) -> anyhow::Result<Plug> {
    let status = qdisc::status(&args.dev)?;
    if args.no_setup {
        if !status.complete() {
            anyhow::bail!(
                "the plug tree is missing or incomplete on {}: run `qdisc setup --dev {} --port {}`, or drop --no-setup",
                args.dev, args.dev, args.addr[0].port()
            );
        }
    } else {
        // Set up, or scope an existing tree to our port: only SYNs to the
        // served port are held, never the machine's other connections.
        let classifier = match status.complete() {
            true => status.classifier().unwrap_or(args.classifier),
            false => args.classifier,
        };
        qdisc::setup(&Config {
            dev: args.dev.clone(),
            classifier,
            port: Some(args.addr[0].port()),
            ..Config::default()
        })
        .context("setting up the plug tree")?;
        log(&format!(
            "plug tree on {} holds SYNs to port {} only (classifier {})",
            args.dev,
            args.addr[0].port(),
            classifier.kind()
        ));
    }
    open_released(&args.dev)
}

/// An egress tree left on `dev` (`qdisc setup`, or an older reloader)
/// queues every packet `dev` sends: said at start, so the user can remove it.
fn warn_egress_tree(dev: &str) -> anyhow::Result<()> {
    let status = qdisc::status(dev)?;
    if status.root {
        log(&format!(
            "warning: an egress plug tree is installed on {dev}: every packet {dev} sends passes its queue (reordered across CPUs on lo and veth); this reloader holds on {dev}'s ingress and does not need it; remove it with `qdisc --dev {dev} teardown`"
        ));
        if status.buffering == Some(true) {
            open_released(dev)?;
        }
    }
    Ok(())
}

/// Opens the plug on `dev` and releases it: a reloader killed mid-reload
/// leaves it buffering, and nobody else would.
fn open_released(dev: &str) -> anyhow::Result<Plug> {
    let mut plug = Plug::open(dev)?;
    let was = qdisc::status(dev)?.buffering;
    plug.release()?;
    if was == Some(true) {
        log(&format!(
            "released a plug left buffering by an earlier reloader ({dev})"
        ));
    }
    Ok(plug)
}

/// The ingress path of `dev` (an ifb of ours holds the SYNs to our port
/// that arrive on it), set up unless told not to.
fn prepare_ingress(args: &RunArgs, dev: &str) -> anyhow::Result<Plug> {
    let ports = args.ports();
    if args.no_setup {
        let s = qdisc::ingress::status(dev, &ports)?;
        let flags: Vec<String> = ports.iter().map(|p| format!("--port {p}")).collect();
        anyhow::ensure!(
            s.complete(),
            "the ingress path is missing or incomplete on {dev}: run `qdisc --dev {dev} --ingress setup {}`, or drop --no-setup",
            flags.join(" ")
        );
    } else {
        qdisc::ingress::setup(&qdisc::IngressConfig {
            dev: dev.to_owned(),
            ports: ports.clone(),
            limit: qdisc::DEFAULT_LIMIT,
            force: args.force,
        })
        .with_context(|| format!("setting up the ingress path on {dev}"))?;
        let which = match ports.as_slice() {
            [p] => format!("port {p}"),
            many => format!("ports {many:?}"),
        };
        log(&format!(
            "ingress path on {dev} holds SYNs to {which} only (u32 redirect to {})",
            args.ifb_of(dev)
        ));
    }
    open_released(&args.ifb_of(dev))
}

/// The handoff strategy's sockets: those our own supervisor passed us
/// (socket activation), which must include `--addr`'s first address (the
/// watched port, the check), or else ours, bound now.
fn handoff_sockets(addrs: &[SocketAddr]) -> anyhow::Result<handoff::Handoff> {
    match handoff::Handoff::inherited().context("the sockets passed by systemd")? {
        Some(h) => {
            anyhow::ensure!(
                h.addrs.contains(&addrs[0]),
                "systemd passed sockets on {:?}, but --addr {} is not among them: give --addr one of those",
                h.addrs,
                addrs[0]
            );
            log(&format!(
                "handoff: serving the sockets systemd passed (LISTEN_FDS): {:?}",
                h.addrs
            ));
            Ok(h)
        }
        None => handoff::Handoff::open(addrs, 4096).context("opening the handed-over sockets"),
    }
}

async fn run(
    args: RunArgs,
    watchdog: Option<qdisc::watchdog::Watchdog>,
    steer: Option<steer::Steer>,
) -> anyhow::Result<()> {
    // A generation's processes whose parent exits (a launcher's child, a
    // daemon's fork) are reparented to us, not to init: they stay ours to
    // track, stop and reap (see `generation`).
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) changes only our own attribute.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_CHILD_SUBREAPER)");
    }
    let mut _owners = Vec::new();
    let swap: Box<dyn Swap> = match args.strategy {
        Strategy::Plug => {
            let mut plugs = Vec::new();
            if args.local_hold == LocalHold::Egress {
                anyhow::ensure!(
                    args.ports().len() == 1,
                    "--local-hold egress holds one port (the tree's filter); drop it to hold ports {:?} on {}'s ingress",
                    args.ports(),
                    args.dev
                );
                _owners.push(owner::take(&args.dev, args.addr[0].port())?);
                plugs.push(prepare_plug(&args)?);
            } else {
                warn_egress_tree(&args.dev)?;
            }
            for dev in args.ingress_devs() {
                _owners.push(owner::take(&args.ifb_of(dev), args.addr[0].port())?);
                plugs.push(prepare_ingress(&args, dev)?);
            }
            Box::new(PlugSwap::new(plugs, watchdog))
        }
        Strategy::Migrate => Box::new(swap::MigrateSwap::enable(watchdog)?),
        Strategy::Handoff => Box::new(swap::HandoffSwap),
        Strategy::Steer => Box::new(swap::SteerSwap(steer.expect("loaded in main"))),
        Strategy::None => Box::new(NoSwap),
    };
    let handoff = match args.strategy {
        Strategy::Handoff => Some(handoff_sockets(&args.addr)?),
        _ => None,
    };
    let check = match &args.health {
        Some(check) => check.clone(),
        None => health::Check::Pid(args.addr[0]),
    };
    let plug_devs = match args.strategy {
        Strategy::Plug => args.plug_devs(),
        _ => Vec::new(),
    };
    let report = report::Report::new(swap.name(), plug_devs);
    if let Some(addr) = args.metrics {
        let bound = metrics::serve(addr, report.clone())
            .with_context(|| format!("metrics endpoint {addr}"))?;
        log(&format!("metrics on http://{bound}/metrics"));
    }
    let control_path = match args.control.clone() {
        Some(p) => p,
        None => control::default_path().context("the control socket (or pass --control PATH)")?,
    };
    let mut requests = control::serve(&control_path, report.clone())
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

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;

    log(&why_strategy(&args, handoff.as_ref()));
    if args.strategy == Strategy::Plug && softnet::backlogs()?.is_none() {
        log("fallback: this kernel's /proc/net/softnet_stat has no backlog column (before 5.10): each hold waits a fixed 5 ms for SYNs still in a CPU's backlog");
    }
    let opts = Options {
        handoff,
        ports: args.ports(),
        check,
        ready_timeout: args.ready_timeout,
        drain_timeout: args.drain_timeout,
        hold_limit: args.hold_limit,
        probation: args.probation.map(|d| (d, args.canary.unwrap_or(10) * 100)),
        stop_signal: args.stop_signal,
    };
    let ifbs: Vec<String> = match args.strategy {
        Strategy::Plug => args
            .ingress_devs()
            .into_iter()
            .map(|d| args.ifb_of(d))
            .collect(),
        _ => Vec::new(),
    };
    let kernel = Box::new(kernel::Real::open(&ifbs)?);
    let spawn = Box::new(kernel::Argv(args.command.clone()));
    let mut sup = Supervisor::start(opts, swap, kernel, spawn, notify).await?;
    report.serving(&sup.current);
    warn_unwatched_ports(&sup.current, &args.ports());
    service::ready(&format!("serving: PID {}", sup.current.pid));
    log(&format!(
        "serving; strategy {:?}; reload with SIGHUP or `reloader reload --control {}`",
        args.strategy,
        control_path.display()
    ));
    let mut every = args.every.map(|d| Box::pin(tokio::time::sleep(d)));
    let (mut ok, mut failed) = (0u64, 0u64);
    let result = loop {
        let reply = tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            status = sup.current.wait() => {
                break Err(anyhow::anyhow!("server PID {} exited on its own ({})", sup.current.pid,
                    status.map_or("unknown status".into(), |s| s.to_string())));
            }
            _ = tokio::time::sleep(REAP_EVERY), if sup.needs_tending() => {
                sup.reap().await;
                report.sigkilled(sup.sigkills, sup.cut_by_sigkill);
                continue;
            }
            _ = hup.recv() => None,
            Some(reply) = requests.recv() => Some(reply),
            _ = async { every.as_mut().unwrap().as_mut().await }, if every.is_some() => None,
        };
        // SIGTERM/SIGINT end a reload half-way: `shutdown` stops whatever it
        // started and releases the plug.
        service::reloading();
        let outcome = tokio::select! {
            outcome = sup.reload() => outcome,
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        };
        if let (Some(sleep), Some(d)) = (every.as_mut(), args.every) {
            sleep.as_mut().reset(tokio::time::Instant::now() + d);
        }
        report.sigkilled(sup.sigkills, sup.cut_by_sigkill);
        match &outcome {
            Ok(r) => {
                ok += 1;
                let held_ms = r.held.map(|d| d.as_secs_f64() * 1e3);
                tracing::info!(
                    event = "reload",
                    number = r.number,
                    outcome = "ok",
                    old_pid = r.old_pid,
                    new_pid = r.new_pid,
                    up_ms = r.up.as_secs_f64() * 1e3,
                    held_ms,
                    total_ms = r.total.as_secs_f64() * 1e3,
                    strategy = r.strategy,
                    "{r}"
                );
                report.reloaded(r, &sup.current);
                service::ready(&format!("serving: PID {}; last reload ok", sup.current.pid));
            }
            Err(e) => {
                failed += 1;
                let (number, outcome) = match e {
                    error::ReloadError::RolledBack { number, .. } => (*number, "rolled back"),
                    error::ReloadError::Failed { number, .. } => (*number, "failed"),
                };
                tracing::warn!(event = "reload", number, outcome, "{e}");
                report.not_reloaded(e);
                service::ready(&format!(
                    "serving: PID {}; last reload failed: {e}",
                    sup.current.pid
                ));
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome.map(|r| r.to_string()).map_err(|e| e.to_string()));
        }
    };
    service::stopping();
    sup.shutdown().await;
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(&notify_path);
    log(&format!(
        "exit: {ok} reloads succeeded, {failed} rolled back"
    ));
    result
}
