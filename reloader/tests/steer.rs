//! `--strategy steer` on the host kernel (BPF SK_REUSEPORT programs load
//! here as root in a private network namespace): reloads under load lose
//! nothing, and a new server that fails its check never gets a client.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use testkit::proc::Proc;

const RELOADER: &str = env!("CARGO_BIN_EXE_reloader");

fn server() -> Option<PathBuf> {
    let p = PathBuf::from(RELOADER).with_file_name("reuse-server");
    p.is_file().then_some(p)
}

fn in_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(why) = testkit::netns::run(f) {
        testkit::skip(&format!("{name}: {why}"));
    }
}

/// The reloader on `addrs` with `strategy`, serving `sh -c script`.
fn reloader(strategy: &str, addrs: &[&str], extra: &[&str], script: &str) -> (Proc, String) {
    // One per reloader: the tests of this file run at once.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let ctl = format!(
        "/tmp/reloader-steer-{}-{}-{}.sock",
        std::process::id(),
        strategy,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new(RELOADER);
    cmd.args(["run", "--strategy", strategy, "--control", &ctl]);
    for a in addrs {
        cmd.args(["--addr", a]);
    }
    cmd.args(extra);
    cmd.args(["--", "sh", "-c", script]);
    let mut r = Proc::spawn(&mut cmd).unwrap();
    assert!(
        r.wait_line("reloader: serving", Duration::from_secs(90))
            .is_some(),
        "{:?}",
        r.drain_log()
    );
    (r, ctl)
}

fn stop(mut r: Proc) -> Vec<String> {
    r.signal(libc::SIGTERM);
    let status = r
        .wait_exit(Duration::from_secs(20))
        .expect("reloader exits");
    let log = r.drain_log().to_vec();
    assert!(status.success(), "{status:?}: {log:?}");
    log
}

/// A load on `addr` until `servers` PIDs answered and `n` requests ran.
fn load(
    addr: &str,
    c: usize,
    n: usize,
    servers: usize,
) -> std::thread::JoinHandle<loadgen::Report> {
    let mut o = loadgen::Options::new(addr.parse().unwrap(), c, n);
    o.min_servers = servers;
    o.duration = Some(Duration::from_secs(120));
    std::thread::spawn(move || loadgen::run(&o))
}

#[test]
fn steer_reloading_every_100ms_loses_nothing_ipv4_and_ipv6_c1_and_c32() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("steer reloads", move || {
        // Without the gate: the server joins the group at once, so only
        // the program keeps clients off it until its check passed.
        let script = format!(
            "exec env -u RELOADER_GATE {} --listen 127.0.0.1:7000 --listen [::1]:7001",
            server.display()
        );
        let (r, _) = reloader(
            "steer",
            &["127.0.0.1:7000", "[::1]:7001"],
            &["--every", "100ms"],
            &script,
        );
        for c in [32, 1] {
            let loads = [
                load("127.0.0.1:7000", c, 10_000, 11),
                load("[::1]:7001", c, 10_000, 11),
            ];
            for (addr, l) in ["127.0.0.1:7000", "[::1]:7001"].iter().zip(loads) {
                let rep = l.join().unwrap();
                assert_eq!(
                    rep.failed(),
                    0,
                    "{addr} c={c}: {:?} {:?}",
                    rep.failures,
                    rep.examples
                );
                assert!(rep.pids.len() >= 11, "{addr} c={c}: {:?}", rep.pids);
                assert!(rep.ok >= 10_000);
            }
        }
        let log = stop(r);
        let reloads: Vec<_> = log.iter().filter(|l| l.contains(": ok, PID")).collect();
        assert!(reloads.len() >= 20, "{log:?}");
        for l in &reloads {
            assert!(l.contains("| held - |"), "a steer reload held: {l}");
        }
        assert!(!log.iter().any(|l| l.contains("rolled back:")), "{log:?}");
    });
}

/// A new server that answers 503: `none` lets clients reach it (the test
/// has teeth), `steer` sends it only its check.
fn unhealthy_new_server(strategy: &'static str) -> loadgen::Report {
    let server = server().expect("reuse-server");
    let flag = std::env::temp_dir().join(format!("steer-503-{}-{strategy}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let script = format!(
        "if [ -e {f} ]; then exec env -u RELOADER_GATE {s} --status 503; fi; exec env -u RELOADER_GATE {s}",
        f = flag.display(),
        s = server.display()
    );
    let flag2 = flag.clone();
    let out = testkit::netns::run(move || {
        let (r, ctl) = reloader(
            strategy,
            &["127.0.0.1:7000"],
            &["--ready-timeout", "1s"],
            &script,
        );
        std::fs::write(&flag2, "").unwrap();
        let live = Arc::new(loadgen::Live::default());
        let mut o = loadgen::Options::new("127.0.0.1:7000".parse().unwrap(), 8, usize::MAX);
        o.live = Some(live.clone());
        o.duration = Some(Duration::from_secs(120));
        o.until_failure = strategy == "none";
        let l = std::thread::spawn(move || loadgen::run(&o));
        // The load spans 5 reloads, each of which must roll back (or, for
        // `none`, until the first client got a 503).
        for _ in 0..5 {
            let out = Command::new(RELOADER)
                .args(["reload", "--control", &ctl])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(text.contains("rolled back"), "{text}");
        }
        live.stop.store(true, Ordering::Relaxed);
        let rep = l.join().unwrap();
        stop(r);
        rep
    });
    let _ = std::fs::remove_file(&flag);
    match out {
        Ok(rep) => rep,
        Err(why) => panic!("netns: {why}"),
    }
}

#[test]
fn steer_sends_a_new_server_that_answers_503_no_client() {
    if server().is_none() {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    }
    if let Err(why) = testkit::netns::run(|| ()) {
        return testkit::skip(&format!("steer 503: {why}"));
    }
    let steer = unhealthy_new_server("steer");
    assert_eq!(
        steer.failed(),
        0,
        "steer: {:?} {:?}",
        steer.failures,
        steer.examples
    );
    assert!(steer.ok > 0);
    assert_eq!(
        steer.pids.len(),
        1,
        "only the first server answered: {:?}",
        steer.pids
    );
    let none = unhealthy_new_server("none");
    assert!(
        none.failed() > 0,
        "none: clients must reach the 503 server ({} ok)",
        none.ok
    );
}

/// Listening sockets on `port` in this thread's network namespace.
fn listeners_on(port: u16) -> usize {
    let want = format!(":{port:04X} ");
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<_> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
                })
                .count()
        })
        .sum()
}

/// The reloader killed with SIGKILL in each phase of a reload (a new
/// server listening but not chosen yet; the old one draining), and once
/// between reloads: the program left on the group keeps choosing, and the
/// next `reloader run` takes the orphans over: no request fails, and one
/// generation serves at the end.
#[test]
fn steer_survives_sigkill_of_the_reloader_in_every_phase() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("steer sigkill", move || {
        let script = format!(
            "exec env -u RELOADER_GATE {} --listen 127.0.0.1:7000",
            server.display()
        );
        let live = Arc::new(loadgen::Live::default());
        let mut o = loadgen::Options::new("127.0.0.1:7000".parse().unwrap(), 8, usize::MAX);
        o.live = Some(live.clone());
        o.duration = Some(Duration::from_secs(120));
        let (mut r, _) = reloader("steer", &["127.0.0.1:7000"], &["--every", "100ms"], &script);
        let l = std::thread::spawn(move || loadgen::run(&o));
        // Each phase begins once the log shows its event; the kill lands
        // in it (or just after: every kill must lose nothing anyway).
        for phase in [
            "]: listening on", // a new generation joined, not chosen yet
            "]: draining",     // the old one was told to stop
            ": ok, PID",       // between reloads
        ] {
            r.drain_log();
            assert!(
                r.wait_line(phase, Duration::from_secs(30)).is_some(),
                "{phase}: {:?}",
                r.drain_log()
            );
            r.signal(libc::SIGKILL);
            r.wait_exit(Duration::from_secs(10)).expect("SIGKILLed");
            let (next, _) = reloader("steer", &["127.0.0.1:7000"], &["--every", "100ms"], &script);
            r = next;
            assert!(
                r.wait_line(": ok, PID", Duration::from_secs(30)).is_some(),
                "the next reloader reloads: {:?}",
                r.drain_log()
            );
        }
        // Once more, taken over by a reloader that does not reload: it
        // serves once the orphans are retired, and alone.
        r.signal(libc::SIGKILL);
        r.wait_exit(Duration::from_secs(10)).expect("SIGKILLed");
        let (r, _) = reloader("steer", &["127.0.0.1:7000"], &[], &script);
        assert_eq!(listeners_on(7000), 1, "one generation serves");
        live.stop.store(true, Ordering::Relaxed);
        let rep = l.join().unwrap();
        let log = stop(r);
        assert_eq!(rep.failed(), 0, "{:?} {:?}", rep.failures, rep.examples);
        assert!(rep.ok > 0);
        assert_eq!(listeners_on(7000), 0, "none left running: {log:?}");
    });
}

/// Runs a load until `until` appears in the reloader's log after `from`
/// did; returns it. The load starts once `from` is logged.
fn load_between(r: &mut Proc, from: &str, until: &str, c: usize) -> loadgen::Report {
    assert!(
        r.wait_line(from, Duration::from_secs(30)).is_some(),
        "{from}: {:?}",
        r.drain_log()
    );
    let live = Arc::new(loadgen::Live::default());
    let mut o = loadgen::Options::new("127.0.0.1:7000".parse().unwrap(), c, usize::MAX);
    o.live = Some(live.clone());
    o.duration = Some(Duration::from_secs(120));
    let l = std::thread::spawn(move || loadgen::run(&o));
    let line = r.wait_line(until, Duration::from_secs(60));
    live.stop.store(true, Ordering::Relaxed);
    let rep = l.join().unwrap();
    assert!(line.is_some(), "{until}: {:?}", r.drain_log());
    rep
}

/// `--probation 4s --canary 10`: the new server gets 10 ± 3 % of new
/// connections over the window, then takes over; one killed (SIGKILL)
/// about 2 s into its probation sends everything back to the old one,
/// which serves on.
#[test]
fn steer_probation_gives_the_canary_its_share_then_takes_over_or_rolls_back() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("steer probation", move || {
        let flag = std::env::temp_dir().join(format!("steer-crash-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let srv = format!("env -u RELOADER_GATE {}", server.display());
        // With the flag, the server is killed 2.2 s after it starts (its
        // check passes within tens of milliseconds here; the probation
        // lasts 4 s).
        let script = format!(
            "if [ -e {f} ]; then {srv} & sleep 2.2; kill -9 $!; exit 1; fi; exec {srv}",
            f = flag.display()
        );
        let (mut r, ctl) = reloader(
            "steer",
            &["127.0.0.1:7000"],
            &["--probation", "4s", "--canary", "10"],
            &script,
        );
        let reload = |ctl: &str| {
            let ctl = ctl.to_owned();
            std::thread::spawn(move || {
                Command::new(RELOADER)
                    .args(["reload", "--control", &ctl])
                    .output()
                    .unwrap()
            })
        };
        let first = r.drain_log().to_vec();
        let old: u32 = first
            .iter()
            .find_map(|l| l.split("generation 1: PID ").nth(1))
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .expect("generation 1's PID");

        // A healthy new server: its share, then it takes over.
        let t = reload(&ctl);
        let rep = load_between(&mut r, "probation for", "probation passed", 8);
        assert!(t.join().unwrap().status.success());
        assert_eq!(rep.failed(), 0, "{:?} {:?}", rep.failures, rep.examples);
        let total: usize = rep.pids.values().sum();
        let new = total - rep.pids.get(&old).copied().unwrap_or(0);
        let share = 100.0 * new as f64 / total as f64;
        assert!(
            (7.0..=13.0).contains(&share),
            "the canary got {share:.1}% of {total} requests: {:?}",
            rep.pids
        );
        println!("probation: the canary got {share:.1}% of {total} requests");
        let now = loadgen::get(
            "127.0.0.1:7000".parse().unwrap(),
            "/",
            Duration::from_secs(2),
        );
        assert!(
            matches!(now, loadgen::Outcome::Ok(pid) if pid != old),
            "the new one serves after its probation: {now:?}"
        );

        // A new server killed during its probation.
        std::fs::write(&flag, "").unwrap();
        let t = reload(&ctl);
        let rep = load_between(&mut r, "probation for", "probation failed", 8);
        let out = t.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("rolled back"), "{text}");
        // Only what it had accepted can be lost: at most the load's
        // concurrency (nothing queued on it is: it migrates).
        assert!(
            rep.failed() <= 8,
            "{} failed: {:?} {:?}",
            rep.failed(),
            rep.failures,
            rep.examples
        );
        println!(
            "crash during probation: {} of {} requests failed ({:?})",
            rep.failed(),
            rep.ok + rep.failed(),
            rep.failures
        );
        let _ = std::fs::remove_file(&flag);
        let after = loadgen::get(
            "127.0.0.1:7000".parse().unwrap(),
            "/",
            Duration::from_secs(2),
        );
        assert!(matches!(after, loadgen::Outcome::Ok(_)), "{after:?}");
        stop(r);
    });
}
