//! `loadgen`: one request, or a bounded load, against an address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  loadgen get ADDR [PATH]              one request on a new connection; prints the body
  loadgen run ADDR [-c CONC] [-n REQS] [-d SECS]
                                       REQS requests (or for SECS), CONC at a time, a new connection each";

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
            let mut it = args[2..].iter();
            while let Some(flag) = it.next() {
                let v: usize = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{flag} needs a number"))?;
                match flag.as_str() {
                    "-c" => opts.concurrency = v,
                    "-n" => opts.requests = v,
                    "-d" => {
                        opts.duration = Some(Duration::from_secs(v as u64));
                        if !args.iter().any(|a| a == "-n") {
                            opts.requests = usize::MAX;
                        }
                    }
                    other => return Err(format!("unknown option {other}")),
                }
            }
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
