//! The reloader on the host kernel, each test in a private network
//! namespace: the paths that need no sch_plug (strategy none, the control
//! socket, clear errors). Plug reloads are proven in the VM
//! (`xtask/tests/guest.rs`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testkit::proc::Proc;

const RELOADER: &str = env!("CARGO_BIN_EXE_reloader");

/// `reuse-server` sits beside us in the target directory when the whole
/// workspace is built (as the README's test command does).
fn server() -> Option<PathBuf> {
    let p = PathBuf::from(RELOADER).with_file_name("reuse-server");
    p.is_file().then_some(p)
}

/// A `sh -c` server command that exits 7 while `flag` exists (a reload
/// that must roll back), and is `server` otherwise.
fn failing_while(flag: &std::path::Path, server: &std::path::Path) -> String {
    format!(
        "if [ -e {} ]; then exit 7; fi; exec {}",
        flag.display(),
        server.display()
    )
}

/// `reloader reload --control CTL`: its output, whatever the status.
fn reload(ctl: &str) -> std::process::Output {
    Command::new(RELOADER)
        .args(["reload", "--control", ctl])
        .output()
        .unwrap()
}

fn in_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(why) = testkit::netns::run(f) {
        testkit::skip(&format!("{name}: {why}"));
    }
}

#[test]
fn strategy_none_reloads_over_the_control_socket_and_stops_cleanly() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("strategy none", move || {
        let ctl = format!("/tmp/reloader-test-{}.sock", std::process::id());
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args(["run", "--strategy", "none", "--control", &ctl, "--"])
                .arg(&server),
        )
        .unwrap();
        assert!(
            r.wait_line("reloader: serving", Duration::from_secs(10))
                .is_some(),
            "{:?}",
            r.log
        );
        let out = reload(&ctl);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("reload #2: ok"), "{stdout}");
        r.signal(libc::SIGTERM);
        let status = r
            .wait_exit(Duration::from_secs(10))
            .expect("reloader exits on SIGTERM");
        assert!(status.success(), "{status:?}: {:?}", r.drain_log());
        assert!(
            r.wait_line("stopped generation", Duration::from_secs(5))
                .is_some(),
            "{:?}",
            r.log
        );
        assert_eq!(
            loadgen::get(
                "127.0.0.1:7000".parse().unwrap(),
                "/",
                Duration::from_secs(1)
            ),
            loadgen::Outcome::Refused
        );
    });
}

/// One sock_diag dump answers for both families: a server on an IPv6
/// port and an IPv4 port is found on each (a look that missed IPv6 would
/// time the join out), at start and on every reload.
#[test]
fn listeners_of_both_families_are_found_in_one_look() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("both families", move || {
        let ctl = format!("/tmp/reloader-test-v6-{}.sock", std::process::id());
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args(["run", "--strategy", "none", "--ready-timeout", "3s"])
                .args(["--addr", "[::1]:7000", "--addr", "127.0.0.1:7001"])
                .args(["--control", &ctl, "--"])
                .arg(&server)
                .args(["--listen", "[::1]:7000", "--listen", "127.0.0.1:7001"]),
        )
        .unwrap();
        let up = r.wait_line("healthy after", Duration::from_secs(10));
        // Two listeners: the IPv6 one and the IPv4 one.
        assert!(
            up.as_deref()
                .and_then(|l| l.split("listeners {").nth(1))
                .is_some_and(|set| set.matches(", ").count() == 1),
            "{up:?} {:?}",
            r.log
        );
        for n in 2..4 {
            let out = reload(&ctl);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("reload #{n}: ok")),
                "{stdout} {:?}",
                r.log
            );
        }
        for addr in ["[::1]:7000", "127.0.0.1:7001"] {
            assert!(
                matches!(
                    loadgen::get(addr.parse().unwrap(), "/", Duration::from_secs(2)),
                    loadgen::Outcome::Ok(_)
                ),
                "{addr}"
            );
        }
        r.signal(libc::SIGTERM);
        assert!(r
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
    });
}

#[test]
fn plug_strategy_without_sch_prio_fails_clearly() {
    in_netns("no sch_prio", || {
        let probe = qdisc::probe().expect("probing the kernel's tc support");
        if probe.supports("prio") {
            return testkit::skip(
                "this host kernel has sch_prio: the missing-qdisc path cannot be shown here",
            );
        }
        let out = Command::new(RELOADER)
            .args(["run", "--control", "/tmp/unused.sock", "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("kernel lacks the prio qdisc (sch_prio, CONFIG_NET_SCH_PRIO)"),
            "{err}"
        );
        let out = Command::new(RELOADER)
            .args(["run", "--no-setup", "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "the ingress path is missing or incomplete on lo: run `qdisc --dev lo --ingress setup --port 7000`"
            ),
            "{err}"
        );
    });
}

#[test]
fn reload_without_a_supervisor_says_so() {
    let out = Command::new(RELOADER)
        .args(["reload", "--control", "/nonexistent/reloader.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no reloader answers on /nonexistent/reloader.sock"),
        "{err}"
    );
}

/// The reloader's own sd_notify, as systemd's `Type=notify-reload` reads
/// it: READY=1 once serving; RELOADING=1 with MONOTONIC_USEC then READY=1
/// for a reload; the same pair plus a STATUS= naming the failure for a
/// rolled-back reload; STOPPING=1 at exit.
#[test]
fn reloader_speaks_sd_notify_to_its_own_supervisor() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("sd_notify", move || {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("reloader-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock_path = dir.join("notify.sock");
        let flag = dir.join("fail-next");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let next = || {
            let mut buf = vec![0u8; 4096];
            let n = sock.recv(&mut buf).expect("a notify message in time");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let ctl = dir.join("ctl.sock");
        let cmd = failing_while(&flag, &server);
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args([
                    "run",
                    "--strategy",
                    "none",
                    "--ready-timeout",
                    "3s",
                    "--control",
                ])
                .arg(&ctl)
                .args(["--", "sh", "-c", &cmd])
                .env("NOTIFY_SOCKET", &sock_path),
        )
        .unwrap();
        let first = next();
        assert!(first.contains("READY=1"), "{first:?} {:?}", r.log);
        assert!(first.contains("STATUS=serving: PID"), "{first:?}");

        let reload = || {
            Command::new(RELOADER)
                .args(["reload", "--control"])
                .arg(&ctl)
                .output()
                .unwrap()
        };
        assert!(reload().status.success());
        let a = next();
        assert!(a.contains("RELOADING=1"), "{a:?}");
        assert!(a.contains("MONOTONIC_USEC="), "{a:?}");
        let b = next();
        assert!(
            b.contains("READY=1") && b.contains("last reload ok"),
            "{b:?}"
        );

        std::fs::write(&flag, b"").unwrap();
        assert!(!reload().status.success(), "the reload should roll back");
        let a = next();
        assert!(
            a.contains("RELOADING=1") && a.contains("MONOTONIC_USEC="),
            "{a:?}"
        );
        let b = next();
        assert!(b.contains("READY=1"), "{b:?}");
        assert!(
            b.contains("STATUS=serving: PID")
                && b.contains("last reload failed")
                && b.contains("exited (exit status: 7)"),
            "{b:?}"
        );

        r.signal(libc::SIGTERM);
        let stop = next();
        assert!(stop.contains("STOPPING=1"), "{stop:?}");
        assert!(r.wait_exit(Duration::from_secs(10)).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The shipped units pass `systemd-analyze verify` (Debian's systemd), with
/// their binaries pointed at the ones just built. systemd before 253 does
/// not know `Type=notify-reload` and says so (the one warning allowed
/// there); reloader-notify.service is for those versions and must be clean.
#[test]
fn systemd_units_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        return testkit::skip("systemd-analyze not installed (apt-get install systemd)");
    };
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    let version: u32 = String::from_utf8_lossy(
        &Command::new(analyze)
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .and_then(|v| v.parse().ok())
    .expect("systemd-analyze --version names its version");
    let dir = std::env::temp_dir().join(format!("units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let units = [
        "reloader.service",
        "reloader-notify.service",
        "reloader-handoff.service",
        "reloader-handoff.socket",
    ];
    // All written first: the handoff service needs its socket unit beside it.
    for unit in units {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        let text = text
            .replace("/usr/local/bin/reloader", RELOADER)
            .replace("/usr/local/bin/reuse-server", &server.display().to_string());
        std::fs::write(dir.join(unit), text).unwrap();
    }
    for unit in units {
        let path = dir.join(unit);
        let out = Command::new(analyze)
            .arg("verify")
            .arg(&path)
            // The service needs its socket unit: found beside it.
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{unit}: {said}");
        // (the socket unit loads its notify-reload service too)
        let allowed = unit != "reloader-notify.service" && version < 253;
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                allowed && line.contains("Failed to parse service type, ignoring: notify-reload"),
                "{unit} (systemd {version}): {line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `reloader status --json`, the metrics endpoint and the JSON log agree
/// on what happened (3 reloads ok, 1 rolled back) and on who serves, which
/// is the PID that answers on the port.
#[test]
fn status_metrics_and_json_log_agree() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("status and metrics", move || {
        let dir = std::env::temp_dir().join(format!("reloader-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctl = dir.join("ctl.sock");
        let flag = dir.join("fail-next");
        let cmd = failing_while(&flag, &server);
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args(["run", "--strategy", "none", "--ready-timeout", "3s"])
                .args(["--metrics", "127.0.0.1:9464", "--log-format", "json"])
                .arg("--control")
                .arg(&ctl)
                .args(["--", "sh", "-c", &cmd]),
        )
        .unwrap();
        assert!(
            r.wait_line("serving; strategy", Duration::from_secs(10))
                .is_some(),
            "{:?}",
            r.log
        );
        let run = |args: &[&str]| {
            Command::new(RELOADER)
                .args(args)
                .arg("--control")
                .arg(&ctl)
                .output()
                .unwrap()
        };
        for _ in 0..3 {
            assert!(run(&["reload"]).status.success());
        }
        std::fs::write(&flag, b"").unwrap();
        assert!(!run(&["reload"]).status.success(), "should roll back");
        std::fs::remove_file(&flag).unwrap();

        let out = run(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let answering: u32 = loadgen::http::try_get(
            "127.0.0.1:7000".parse().unwrap(),
            "/",
            Duration::from_secs(2),
        )
        .unwrap()
        .1
        .trim()
        .parse()
        .unwrap();
        assert_eq!(status["serving"]["pid"], answering, "{status}");
        assert_eq!(status["serving"]["generation"], 4, "{status}");
        assert_eq!(status["reloads"]["ok"], 3, "{status}");
        assert_eq!(status["reloads"]["rolled_back"], 1, "{status}");
        assert_eq!(status["last_reload"]["outcome"], "rolled back", "{status}");
        assert!(
            status["last_reload"]["message"]
                .as_str()
                .unwrap()
                .contains("exited (exit status: 7)"),
            "{status}"
        );
        let human = String::from_utf8(run(&["status"]).stdout).unwrap();
        assert!(human.contains("reloads: 3 ok, 1 rolled back"), "{human}");
        assert!(human.contains(&format!("PID {answering}")), "{human}");

        let (code, metrics) = loadgen::http::try_get(
            "127.0.0.1:9464".parse().unwrap(),
            "/metrics",
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(code, 200, "{metrics}");
        for line in [
            "reloader_reloads_total{outcome=\"ok\"} 3".to_string(),
            "reloader_reloads_total{outcome=\"rolled_back\"} 1".to_string(),
            format!("reloader_serving_pid {answering}"),
            "reloader_held_seconds_count 3".to_string(),
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "no {line:?} in\n{metrics}"
            );
        }

        r.signal(libc::SIGTERM);
        assert!(r.wait_exit(Duration::from_secs(10)).is_some());
        let log = r.drain_log().to_vec();
        let events: Vec<serde_json::Value> = log
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["event"] == "reload")
            .collect();
        let count = |outcome: &str| events.iter().filter(|e| e["outcome"] == outcome).count();
        assert_eq!(count("ok"), 3, "{log:?}");
        assert_eq!(count("rolled back"), 1, "{log:?}");
        assert!(events.iter().all(|e| e["number"].is_u64()), "{events:?}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Bad input on the command line: exit 2, one `error:` line saying what was
/// wrong (clap may add a tip and the usage), and nothing done: no control
/// socket, no server started.
#[test]
fn bad_flags_get_one_error_line_and_change_nothing() {
    // In a namespace of its own: a flag checked too late could set up a
    // plug tree on lo before refusing (seen with --health; now clap's).
    in_netns("bad flags", bad_flags);
}

fn bad_flags() {
    let dir = std::env::temp_dir().join(format!("reloader-badflags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = dir.join("ctl.sock");
    let ctl = ctl.to_str().unwrap();
    let marker = dir.join("started");
    let server = format!("touch {}", marker.display());
    let cases: &[&[&str]] = &[
        &["run", "--every", "abc"],
        &["run", "--every", "-1s"],
        &["run", "--hold-limit", "1 fortnight"],
        &["run", "--addr", "localhost:7000"],
        &["run", "--addr", "127.0.0.1:99999"],
        &["run", "--strategy", "bogus"],
        &["run", "--metrics", "nope"],
        &["run", "--log-format", "xml"],
        &["run", "--health", "https://127.0.0.1:7000/"],
        &["run", "--ingress"],
        &["run", "--stop-signal", "KILL"],
        &["run", "--stop-signal", "SIGBOGUS"],
        &["run", "--server-caps", "CAP_FLY"],
        &["run", "--local-hold", "sideways"],
        &["run", "--no-such-flag"],
    ];
    for args in cases {
        let out = Command::new(RELOADER)
            .args(*args)
            .args(["--control", ctl, "--", "sh", "-c", &server])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            first.starts_with("error:") || first.starts_with("reloader: error:"),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("error:").count(), 1, "{args:?}: {err}");
        assert!(
            !std::path::Path::new(ctl).exists(),
            "{args:?} made the control socket"
        );
        assert!(!marker.exists(), "{args:?} started the server");
    }
    // No command at all.
    let out = Command::new(RELOADER).args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Socket activation, as systemd does it (`systemd-socket-activate`, from
/// the systemd package: it listens, and on the first connection starts the
/// reloader with the socket as fd 3, `LISTEN_FDS=1`, `LISTEN_PID`): the
/// handoff reloader serves that socket, binds nothing, and reloads on it.
#[test]
fn handoff_serves_the_socket_systemd_passes() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        return testkit::skip("systemd-socket-activate not installed (apt-get install systemd)");
    };
    in_netns("socket activation", move || {
        let ctl = format!("/tmp/reloader-activate-{}.sock", std::process::id());
        let mut r = Proc::spawn(
            Command::new(activate)
                .args(["-l", "127.0.0.1:7000", "--fdname=tcp4-7000", "-E", "PATH"])
                .arg(RELOADER)
                .args(["run", "--strategy", "handoff", "--addr", "127.0.0.1:7000"])
                .args(["--control", &ctl, "--"])
                .arg(&server),
        )
        .unwrap();
        let a: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap();
        // The first connection starts the reloader; it waits in the
        // passed socket's queue until generation 1 accepts it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let first = loop {
            match loadgen::http::try_get(a, "/", Duration::from_secs(20)) {
                // systemd-socket-activate is not listening yet.
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(first.0, 200, "{:?}", r.drain_log());
        assert!(
            r.wait_line(
                "sockets systemd passed (LISTEN_FDS): [127.0.0.1:7000]",
                Duration::from_secs(5)
            )
            .is_some(),
            "{:?}",
            r.log
        );
        let out = reload(&ctl);
        assert!(out.status.success(), "{out:?} {:?}", r.drain_log());
        // "reload #2: ok, PID OLD -> NEW | ...": the old one may still take
        // a connection or two while it starts its drain; then only NEW.
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let new = said
            .split("-> ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the new PID in the reply")
            .to_string();
        assert_ne!(new, first.1.trim(), "{said}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (code, pid) = loadgen::http::try_get(a, "/", Duration::from_secs(5)).unwrap();
            assert_eq!(code, 200);
            if pid.trim() == new {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PID {new} never answered"
            );
        }
        assert!(
            r.drain_log()
                .iter()
                .any(|l| l.contains("LISTEN_FDNAMES") || l.contains("tcp4-7000")),
            "{:?}",
            r.log
        );
        r.signal(libc::SIGTERM);
        assert!(r.wait_exit(Duration::from_secs(10)).is_some());
    });
}

/// PIDs whose command line contains `needle` (for "nothing is left").
fn pids_running(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// A launcher that does not `exec` (`sh -c 'SERVER; true'`, like `npm
/// start`): the server is its child, and the generation is the launcher's
/// whole process group. The reload is checked on the server's own
/// listener, the old server is stopped, and the reloader's exit leaves
/// nothing running.
#[test]
fn a_launcher_that_does_not_exec_is_one_generation() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("launcher", move || {
        let ctl = format!("/tmp/reloader-launcher-{}.sock", std::process::id());
        let launcher = format!("{}; echo launcher-after-server", server.display());
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args(["run", "--strategy", "none", "--control", &ctl, "--"])
                .args(["sh", "-c", &launcher]),
        )
        .unwrap();
        assert!(
            r.wait_line("reloader: serving", Duration::from_secs(10))
                .is_some(),
            "{:?}",
            r.log
        );
        let a = "127.0.0.1:7000".parse().unwrap();
        let loadgen::Outcome::Ok(first) = loadgen::get(a, "/", Duration::from_secs(5)) else {
            panic!("the first server does not answer: {:?}", r.drain_log());
        };
        let out = reload(&ctl);
        assert!(out.status.success(), "{:?} {:?}", out, r.drain_log());
        let loadgen::Outcome::Ok(second) = loadgen::get(a, "/", Duration::from_secs(5)) else {
            panic!("the new server does not answer: {:?}", r.drain_log());
        };
        assert_ne!(first, second, "the old server still answers");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(first) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5)); // polls the process
        }
        assert!(
            !alive(first),
            "the old generation's server PID {first} still runs"
        );
        r.signal(libc::SIGTERM);
        let status = r
            .wait_exit(Duration::from_secs(10))
            .expect("reloader exits");
        assert!(status.success(), "{status:?}: {:?}", r.drain_log());
        assert!(!alive(second), "PID {second} outlived the reloader");
        assert_eq!(pids_running("launcher-after-server"), Vec::<u32>::new());
    });
}

/// A first start that times out (the launcher's child never listens)
/// leaves no process of that generation running.
#[test]
fn a_start_that_times_out_leaves_no_process() {
    in_netns("start timeout", move || {
        let ctl = format!("/tmp/reloader-timeout-{}.sock", std::process::id());
        let out = Command::new(RELOADER)
            .args(["run", "--strategy", "none", "--ready-timeout", "500ms"])
            .args(["--control", &ctl, "--"])
            .args(["sh", "-c", "sleep 987654 & sleep 987655; true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("did not listen on ports [7000]"), "{err}");
        assert_eq!(
            pids_running("sleep 98765"),
            Vec::<u32>::new(),
            "processes of the failed generation are left: {err}"
        );
    });
}

/// Handoff only where it is safe: nginx ignores `LISTEN_FDS` and binds its
/// own sockets beside the handed-over one, which nobody would accept on.
/// The reloader refuses it, naming why, and leaves nothing running.
#[test]
fn handoff_refuses_a_server_that_binds_its_own_socket() {
    let nginx = std::path::Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        return testkit::skip("no /usr/sbin/nginx (apt-get install nginx-light)");
    }
    in_netns("handoff refusal", move || {
        let dir = std::env::temp_dir().join(format!("reloader-ngx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid;\n\
                 error_log {d}/error.log; events {{ worker_connections 64; }}\n\
                 http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 server {{ listen 127.0.0.1:7000 reuseport; location / {{ return 200 \"$pid\"; }} }} }}\n"
            ),
        )
        .unwrap();
        let ctl = dir.join("ctl.sock");
        let out = Command::new(RELOADER)
            .args(["run", "--strategy", "handoff", "--stop-signal", "QUIT"])
            .args([
                "--ready-timeout",
                "5s",
                "--control",
                ctl.to_str().unwrap(),
                "--",
            ])
            .arg(nginx)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("listens on sockets of its own"), "{err}");
        assert!(err.contains("run it with --strategy plug"), "{err}");
        assert_eq!(
            pids_running(conf.to_str().unwrap()),
            Vec::<u32>::new(),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn a_port_the_server_was_not_given_is_named_at_start() {
    let Some(server) = server() else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    in_netns("unwatched port", move || {
        for (addrs, warned) in [
            (&["127.0.0.1:7000"][..], true),
            (&["127.0.0.1:7000", "127.0.0.1:7001"][..], false),
        ] {
            let ctl = format!(
                "/tmp/reloader-test-unwatched-{}-{warned}.sock",
                std::process::id()
            );
            let mut cmd = Command::new(RELOADER);
            cmd.args(["run", "--strategy", "none", "--control", &ctl]);
            for a in addrs {
                cmd.args(["--addr", a]);
            }
            cmd.arg("--").arg(&server).args([
                "--listen",
                "127.0.0.1:7000",
                "--listen",
                "127.0.0.1:7001",
            ]);
            let mut r = Proc::spawn(&mut cmd).unwrap();
            assert!(
                r.wait_line("reloader: serving", Duration::from_secs(20))
                    .is_some(),
                "{:?}",
                r.log
            );
            // The warning comes before "serving".
            let said = r.log.iter().any(|l| {
                l.contains("also listens on port(s) [7001], which are not watched or held")
                    && l.contains("add --addr HOST:7001")
            });
            assert_eq!(said, warned, "{addrs:?}: {:?}", r.log);
            r.signal(libc::SIGTERM);
            assert!(r.wait_exit(Duration::from_secs(20)).is_some());
        }
    });
}
