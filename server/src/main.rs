//! `reuse-server`: parse the command line, get listeners, serve until a
//! signal, drain, exit. The logic lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use server::{listen, ServeOptions};
use tokio::signal::unix::{signal, SignalKind};

/// A hyper server on SO_REUSEPORT sockets that answers every request with its
/// PID and drains without losing a request on SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "reuse-server", version)]
struct Cli {
    /// Address to listen on, IP:PORT (IPv6 as [::1]:7000, bound v6-only).
    /// Repeatable. Ignored when listeners are inherited through LISTEN_FDS.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: Vec<String>,

    /// Listen backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = listen::default_backlog())]
    backlog: i32,

    /// Longest the drain may take after SIGTERM before open connections are
    /// cut, in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "30")]
    drain_timeout: f64,

    /// Answer every request with this HTTP status instead of 200 (to test
    /// a supervisor's health gate).
    #[arg(long, value_name = "CODE", default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
    status: u16,

    /// Block SIGTERM, as a misbehaving server might (to test a supervisor's
    /// close bound and drain timeout). SIGINT and SIGQUIT still work.
    #[arg(long)]
    ignore_sigterm: bool,

    /// Threads that serve (default: one per CPU). 1 serves on the main
    /// thread alone (a current-thread runtime): the cheapest start, for a
    /// server reloaded often under light load.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prefix = server::log_prefix();
    let fail = |msg: String| {
        server::say!("{prefix}: error: {msg}");
        ExitCode::from(2)
    };
    if !(cli.drain_timeout.is_finite() && cli.drain_timeout >= 0.0) {
        return fail(format!(
            "--drain-timeout {} is not a number of seconds >= 0",
            cli.drain_timeout
        ));
    }
    if cli.ignore_sigterm {
        // Blocked before any thread exists, so every thread inherits the mask.
        // SAFETY: plain sigset manipulation on a local set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }
    // A supervisor that speaks the gate lets us bind without joining the
    // SO_REUSEPORT group, pass its check on a private address, then join.
    // With inherited listeners (handoff) the gate works the same way: we
    // take no connection from them until told to join.
    let gate = gate::Gate::from_env();
    let (listeners, gate) = match listen::inherited() {
        Ok(Some(inherited)) => (inherited, gate),
        Ok(None) => {
            let addrs: Result<Vec<SocketAddr>, _> =
                cli.listen.iter().map(|s| listen::parse_listen(s)).collect();
            let bound = addrs.and_then(|addrs| {
                if gate.is_some() {
                    listen::bind_all_unjoined(&addrs)
                } else {
                    listen::bind_all(&addrs, cli.backlog)
                }
            });
            match bound {
                Ok(bound) => (bound, gate),
                Err(e) => return fail(e.to_string()),
            }
        }
        Err(e) => return fail(e.to_string()),
    };
    let check = match &gate {
        Some(g) => match listen::check_listener(listeners[0].addr) {
            Ok(c) => Some((g, c)),
            Err(e) => return fail(e.to_string()),
        },
        None => None,
    };
    let opts = ServeOptions {
        drain_timeout: Duration::from_secs_f64(cli.drain_timeout),
        status: cli.status,
    };

    let mut builder = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let prefix = &prefix;
    let fail = &fail;
    runtime.block_on(async move {
        let (mut term, mut int, mut quit) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) {
            (Ok(t), Ok(i), Ok(q)) => (t, i, q),
            _ => return fail("cannot install signal handlers".into()),
        };
        if let Some((gate, check)) = check {
            // Serve the check address until the supervisor says join
            // (gate::JOIN_SIGNAL) or stop (SIGTERM/SIGINT: we never joined,
            // nothing to drain).
            let Ok(mut join_signal) = signal(SignalKind::from_raw(gate::JOIN_SIGNAL)) else {
                return fail("cannot install signal handlers".into());
            };
            // A supervisor that dies before saying join must not leave us
            // waiting forever: we exit with it (until we have joined; after
            // that we keep serving, and its successor adopts us).
            set_parent_death_signal(libc::SIGTERM);
            if std::os::unix::process::parent_id() == 1 {
                server::say!("{prefix}: exit (the supervisor is gone before we joined)");
                return ExitCode::SUCCESS;
            }
            server::say!("{prefix}: bound, waiting to join; health check on {}", check.addr);
            if let Err(e) = gate.offer(check.addr) {
                server::say!("{prefix}: warning: NOTIFY_SOCKET: cannot send the gate: {e}");
            }
            let mut join = false;
            let decided = async {
                join = tokio::select! {
                    _ = join_signal.recv() => true,
                    _ = term.recv() => false,
                    _ = int.recv() => false,
                };
            };
            let check_opts = ServeOptions { drain_timeout: Duration::from_secs(1), ..opts.clone() };
            if let Err(e) = server::serve(vec![check], decided, |_| {}, check_opts).await {
                return fail(format!("cannot serve the health check: {e}"));
            }
            if !join {
                server::say!("{prefix}: exit (stopped before joining)");
                return ExitCode::SUCCESS;
            }
            set_parent_death_signal(0);
            if let Err(e) = listen::join(&listeners, cli.backlog) {
                return fail(e.to_string());
            }
        }
        for l in &listeners {
            server::say!("{prefix}: listening on {l}");
        }
        // The sockets are listening already (bind + listen happened above),
        // so the kernel queues connections from this point on.
        if let Err(e) = gate::ready() {
            server::say!("{prefix}: warning: NOTIFY_SOCKET: cannot send READY=1: {e}");
        }
        let shutdown = async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        let draining = |name| server::say!("{prefix}: draining ({name})");
        let served = server::serve(listeners, shutdown, draining, opts);
        // The handlers for SIGTERM and SIGINT stay installed through the
        // drain, so a second SIGTERM is absorbed instead of killing us.
        tokio::select! {
            report = served => match report {
                Ok(r) => {
                    let cut = match r.cut {
                        0 => String::new(),
                        n => format!(
                            ", {n} cut at the drain timeout: {} had sent no request, {} mid-request, {} idle between requests",
                            r.cut_unasked,
                            r.cut_busy,
                            n.saturating_sub(r.cut_unasked + r.cut_busy)
                        ),
                    };
                    server::say!(
                        "{prefix}: drained in {} ms ({} connections, {} from the accept queue{cut})",
                        r.elapsed.as_millis(),
                        r.connections,
                        r.from_queue,
                    );
                    if r.cut > 0 {
                        if let Err(e) = gate::drain_cut(r.cut) {
                            server::say!("{prefix}: warning: NOTIFY_SOCKET: cannot report the cut: {e}");
                        }
                    }
                    server::say!("{prefix}: exit");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("cannot serve: {e}")),
            },
            _ = quit.recv() => {
                server::say!("{prefix}: exit (SIGQUIT: connections cut)");
                ExitCode::from(3)
            }
        }
    })
}

/// `prctl(PR_SET_PDEATHSIG)`: `sig` when our parent exits (0: nothing).
fn set_parent_death_signal(sig: i32) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and changes
    // only this process's own setting.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) };
}
