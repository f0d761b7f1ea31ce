//! `loadgen`: one request, or a bounded load, against an address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadgen::stats::{self, Summary};

/// A real HTTP/1.1 load client: every request records its serving PID.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One request on a new connection; prints the body (the PID with
    /// reuse-server); exits 1 unless it answered 200.
    Get {
        addr: SocketAddr,
        #[arg(default_value = "/")]
        path: String,
    },
    /// REQUESTS requests (or for SECS), CONC at a time, each on a new
    /// connection unless -k. Prints a summary; exits 1 if any failed.
    Run(RunArgs),
    /// What a monitoring system does: `GET PATH` every --every for -d SECS,
    /// from this one process, any 200 body accepted. Prints one line per
    /// scrape (`ok` or `failed: why`) and a count; exits 1 if any failed.
    Scrape {
        addr: SocketAddr,
        #[arg(default_value = "/metrics")]
        path: String,
        #[arg(long, value_name = "MS", default_value_t = 100)]
        every: u64,
        #[arg(short = 'd', value_name = "SECS")]
        duration: f64,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    addr: SocketAddr,
    /// Requests in flight at once.
    #[arg(short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Requests in all (default 1000, or unbounded with -d).
    #[arg(short = 'n')]
    requests: Option<usize>,
    /// Stop starting requests after this many seconds (fractions allowed).
    #[arg(short = 'd', value_name = "SECS")]
    duration: Option<f64>,
    /// Keep connections alive (HTTP/1.1 keep-alive) instead of one per request.
    #[arg(short = 'k')]
    keepalive: bool,
    /// Open loop: start R requests per second in all.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Write one line per request to FILE.
    #[arg(long, value_name = "FILE")]
    tsv: Option<PathBuf>,
    /// A progress line on stderr.
    #[arg(long)]
    progress: bool,
    /// The path every request asks for (reuse-server: `/delay/MS` answers
    /// after MS milliseconds).
    #[arg(long, default_value = "/")]
    path: String,
    /// Past -n, go on until N distinct server PIDs answered (a load that
    /// spans N-1 reloads however fast the machine), at most -d SECS.
    #[arg(long, value_name = "N", requires = "duration")]
    min_servers: Option<usize>,
    /// Past -n, go on until a request failed, at most -d SECS.
    #[arg(long, requires = "duration")]
    until_failure: bool,
    /// Stop starting requests once FILE exists (a script's event: the load
    /// spans it, however fast the machine), at most -d SECS.
    #[arg(long, value_name = "FILE", requires = "duration")]
    until_exists: Option<PathBuf>,
    /// Create FILE once the first request is done (a script starts the
    /// event the load must span then, not after a guessed delay).
    #[arg(long, value_name = "FILE")]
    started: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Get { addr, path } => get(addr, &path),
        Cmd::Scrape {
            addr,
            path,
            every,
            duration,
        } => scrape(addr, &path, Duration::from_millis(every), duration),
        Cmd::Run(args) => match run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn scrape(addr: SocketAddr, path: &str, every: Duration, secs: f64) -> ExitCode {
    let end = std::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut example = None;
    while std::time::Instant::now() < end {
        let why = match loadgen::try_get(addr, path, Duration::from_secs(5)) {
            Ok((200, _)) => None,
            Ok((status, _)) => Some(format!("status {status}")),
            Err(e) => Some(e.to_string()),
        };
        match why {
            None => {
                ok += 1;
                println!("ok");
            }
            Some(why) => {
                failed += 1;
                println!("failed: {why}");
                example.get_or_insert(why);
            }
        }
        std::thread::sleep(every);
    }
    println!("scrapes={} ok={ok} failed={failed}", ok + failed);
    if let Some(e) = example {
        println!("example failure: {e}");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn get(addr: SocketAddr, path: &str) -> ExitCode {
    match loadgen::try_get(addr, path, Duration::from_secs(30)) {
        Ok((status, body)) => {
            println!("{body}");
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("loadgen: {addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let mut opts = loadgen::Options::new(args.addr, args.concurrency as usize, 1000);
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(format!("-d {d}: want a number of seconds > 0"));
        }
        opts.duration = Some(Duration::from_secs_f64(d));
        opts.requests = usize::MAX;
    }
    if let Some(n) = args.requests {
        opts.requests = n;
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("--rate {r}: want requests per second > 0"));
        }
        opts.rate = Some(r);
    }
    opts.keepalive = args.keepalive;
    opts.path = args.path;
    opts.min_servers = args.min_servers.unwrap_or(0);
    opts.until_failure = args.until_failure;
    opts.progress = args.progress;
    opts.record = args.tsv.is_some();
    if args.until_exists.is_some() || args.started.is_some() {
        let live = Arc::new(loadgen::Live::default());
        opts.live = Some(live.clone());
        let (until, started) = (args.until_exists, args.started);
        std::thread::spawn(move || {
            let mut started = started;
            loop {
                if let Some(file) = &started {
                    if live.done.load(Ordering::Relaxed) > 0 {
                        if let Err(e) = std::fs::write(file, b"") {
                            eprintln!("loadgen: --started {}: {e}", file.display());
                        }
                        started = None;
                    }
                }
                if until.as_ref().is_some_and(|f| f.exists()) {
                    live.stop.store(true, Ordering::Relaxed);
                    return;
                }
                if started.is_none() && until.is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
    let r = loadgen::run(&opts);
    // One line however many servers answered: their count, and the one
    // that answered most.
    let top = r.pids.iter().max_by_key(|(_, n)| **n);
    println!(
        "requests={} ok={} failed={} failures={:?} in_connect={:?} servers={} top_pid={} elapsed_ms={}",
        r.ok + r.failed(),
        r.ok,
        r.failed(),
        r.failures,
        r.in_connect,
        r.pids.len(),
        top.map_or("-".into(), |(pid, n)| format!("{pid}({n})")),
        r.elapsed.as_millis()
    );
    if opts.record {
        let s = Summary::of(&r.records);
        println!(
            "latency_ms mean={:.3} stddev={:.3} p50={:.3} p99={:.3} p99.9={:.3} max={:.3} rps={:.0}",
            s.mean,
            s.stddev,
            s.p50,
            s.p99,
            s.p999,
            s.max,
            (r.ok + r.failed()) as f64 / r.elapsed.as_secs_f64().max(1e-9)
        );
    }
    if let Some(path) = &args.tsv {
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        stats::write_tsv(&mut std::io::BufWriter::new(file), &r.records)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for e in &r.examples {
        println!("example failure: {e}");
    }
    Ok(if r.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
