//! `loadgen`: one request, or a bounded load, against an address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use loadgen::stats::{self, Summary};

const USAGE: &str = "usage:
  loadgen get ADDR [PATH]     one request on a new connection; prints the body
  loadgen run ADDR [-c CONC] [-n REQS] [-d SECS] [-k] [--rate R] [--tsv FILE] [--progress]
      REQS requests (default 1000; or for SECS), CONC at a time, each on a new
      connection (-k: keep-alive). --rate: open loop, R requests/s in all.
      --tsv: one line per request. Prints a summary; exits 1 if any failed.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let addr = |s: Option<&String>| -> Result<SocketAddr, String> {
        let s = s.ok_or("missing ADDR")?;
        s.parse().map_err(|_| format!("{s:?} is not IP:PORT"))
    };
    match args.first().map(String::as_str) {
        Some("get") => {
            let a = addr(args.get(1))?;
            let path = args.get(2).map(String::as_str).unwrap_or("/");
            match loadgen::try_get(a, path, Duration::from_secs(30)) {
                Ok((status, body)) => {
                    println!("{body}");
                    Ok(if status == 200 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(e) => {
                    eprintln!("loadgen: {a}{path}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some("run") => {
            let a = addr(args.get(1))?;
            let mut opts = loadgen::Options::new(a, 1, 1000);
            let mut tsv = None;
            let mut requests_given = false;
            let mut it = args[2..].iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
                let num = |v: &String| {
                    v.parse::<f64>()
                        .map_err(|_| format!("{flag} {v}: not a number"))
                };
                match flag.as_str() {
                    "-c" => opts.concurrency = num(value()?)? as usize,
                    "-n" => {
                        opts.requests = num(value()?)? as usize;
                        requests_given = true;
                    }
                    "-d" => opts.duration = Some(Duration::from_secs_f64(num(value()?)?)),
                    "-k" => opts.keepalive = true,
                    "--rate" => opts.rate = Some(num(value()?)?),
                    "--tsv" => tsv = Some(value()?.clone()),
                    "--progress" => opts.progress = true,
                    other => return Err(format!("unknown option {other}")),
                }
            }
            if opts.duration.is_some() && !requests_given {
                opts.requests = usize::MAX;
            }
            opts.record = tsv.is_some();
            let r = loadgen::run(&opts);
            println!(
                "requests={} ok={} failed={} failures={:?} pids={:?} elapsed_ms={}",
                r.ok + r.failed(),
                r.ok,
                r.failed(),
                r.failures,
                r.pids,
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
            if let Some(path) = tsv {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?,
                );
                stats::write_tsv(&mut f, &r.records).map_err(|e| format!("{path}: {e}"))?;
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
        _ => Err("no command".into()),
    }
}
