//! `reuse-server`: parse the command line, get listeners, serve until a
//! signal, drain, exit. The logic lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use server::{listen, notify, ServeOptions};
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prefix = server::log_prefix();
    let fail = |msg: String| {
        eprintln!("{prefix}: error: {msg}");
        ExitCode::from(2)
    };
    if !(cli.drain_timeout.is_finite() && cli.drain_timeout >= 0.0) {
        return fail(format!(
            "--drain-timeout {} is not a number of seconds >= 0",
            cli.drain_timeout
        ));
    }
    let listeners = match listen::inherited() {
        Ok(Some(inherited)) => inherited,
        Ok(None) => {
            let addrs: Result<Vec<SocketAddr>, _> =
                cli.listen.iter().map(|s| listen::parse_listen(s)).collect();
            match addrs.and_then(|addrs| listen::bind_all(&addrs, cli.backlog)) {
                Ok(bound) => bound,
                Err(e) => return fail(e.to_string()),
            }
        }
        Err(e) => return fail(e.to_string()),
    };
    let opts = ServeOptions {
        drain_timeout: Duration::from_secs_f64(cli.drain_timeout),
        status: cli.status,
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        for l in &listeners {
            eprintln!("{prefix}: listening on {l}");
        }
        // The sockets are listening already (bind + listen happened above),
        // so the kernel queues connections from this point on.
        if let Err(e) = notify::ready() {
            eprintln!("{prefix}: warning: NOTIFY_SOCKET: cannot send READY=1: {e}");
        }
        let shutdown = async {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            eprintln!("{prefix}: draining ({name})");
        };
        let served = server::serve(listeners, shutdown, opts);
        // The handlers for SIGTERM and SIGINT stay installed through the
        // drain, so a second SIGTERM is absorbed instead of killing us.
        tokio::select! {
            report = served => match report {
                Ok(r) => {
                    eprintln!(
                        "{prefix}: drained in {} ms ({} connections, {} from the accept queue{})",
                        r.elapsed.as_millis(),
                        r.connections,
                        r.from_queue,
                        if r.cut > 0 { format!(", {} cut at the drain timeout", r.cut) } else { String::new() },
                    );
                    eprintln!("{prefix}: exit");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("cannot serve: {e}")),
            },
            _ = quit.recv() => {
                eprintln!("{prefix}: exit (SIGQUIT: connections cut)");
                ExitCode::from(3)
            }
        }
    })
}
