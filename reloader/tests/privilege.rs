//! Issue #20's findings that need no sch_plug, on the host kernel: a local
//! user running copies of `reloader` and `qdisc` that carry the file
//! capability CAP_NET_ADMIN (as the README installs them), and root's own
//! bounds. Each test runs in a private network namespace; the users are
//! uids with no account (65534 and 65533), switched to with `setpriv`. The
//! rest of the findings (holds, ownership, the watchdog) run in the VM:
//! `xtask/scenarios/security.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use testkit::proc::Proc;

const RELOADER: &str = env!("CARGO_BIN_EXE_reloader");

fn bin(name: &str) -> PathBuf {
    PathBuf::from(RELOADER).with_file_name(name)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Copies of `names` with `cap_net_admin+ep`, in a directory any user
/// may enter; `None` (skipped) where that cannot be made.
fn capability_copies(test: &str, names: &[&str]) -> Option<PathBuf> {
    if !is_root() {
        testkit::skip(&format!("{test}: needs root (setcap, setpriv)"));
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("privilege-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for n in names {
        let src = bin(n);
        if !src.is_file() {
            testkit::skip(&format!(
                "{test}: {n} not built: run `cargo test --workspace`"
            ));
            return None;
        }
        let dst = dir.join(n);
        std::fs::copy(&src, &dst).unwrap();
        let ok = Command::new("setcap")
            .arg("cap_net_admin+ep")
            .arg(&dst)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            testkit::skip(&format!(
                "{test}: setcap failed (apt-get install libcap2-bin)"
            ));
            return None;
        }
    }
    Some(dir)
}

/// `argv` as uid `uid` (no groups), with `env` added.
fn as_user(uid: u32, env: &[(&str, &str)], argv: &[&OsStrLike]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "--".into(),
    ]);
    c.args(argv.iter().map(|a| a.as_ref()));
    c.env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

type OsStrLike = dyn AsRef<std::ffi::OsStr>;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `argv` as uid 65534 and requires the no-policy refusal (exit 2).
fn refused_without_policy(argv: &[&OsStrLike]) {
    let out = as_user(65534, &[], argv).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no policy allows anything"),
        "{}",
        text(&out)
    );
}

fn in_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(why) = testkit::netns::run(f) {
        testkit::skip(&format!("{name}: {why}"));
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn finding_1_a_user_without_a_policy_holds_nothing() {
    if Path::new(qdisc::policy::PATH).exists() {
        return testkit::skip(&format!(
            "{} exists on this machine: the no-policy refusal cannot be shown",
            qdisc::policy::PATH
        ));
    }
    let Some(dir) = capability_copies("finding1", &["qdisc", "reloader"]) else {
        return;
    };
    in_netns("finding 1", move || {
        let qdisc = dir.join("qdisc");
        for args in [
            &["--dev", "lo", "--ingress", "setup", "--port", "22"][..],
            &["--dev", "lo", "--ingress", "plug"][..],
        ] {
            let mut argv: Vec<&OsStrLike> = vec![&qdisc];
            argv.extend(args.iter().map(|a| a as &OsStrLike));
            let out = as_user(65534, &[], &argv).output().unwrap();
            assert!(!out.status.success(), "{}", text(&out));
            assert!(
                text(&out).contains("no policy allows anything"),
                "{}",
                text(&out)
            );
        }
        let out = as_user(
            65534,
            &[],
            &[&qdisc, &"--dev", &"lo", &"setup", &"--source", &"any"],
        )
        .output()
        .unwrap();
        assert!(
            text(&out).contains("only the ingress path (--ingress) may be used"),
            "{}",
            text(&out)
        );
        assert!(!link_exists("ifb-lo"), "a refused setup made ifb-lo");
        let reloader = dir.join("reloader");
        refused_without_policy(&[
            &reloader,
            &"run",
            &"--control",
            &"/nonexistent/x.sock",
            &"--",
            &"true",
        ]);
        // Status stays open to everyone.
        let out = as_user(
            65534,
            &[],
            &[&qdisc, &"--dev", &"lo", &"--ingress", &"status"],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    });
}

#[test]
fn findings_2_and_5_every_hold_and_limit_is_bounded_for_root_too() {
    in_netns("findings 2 and 5", || {
        let out = Command::new(RELOADER)
            .args([
                "run",
                "--hold-limit",
                "1000h",
                "--control",
                "/nonexistent/x.sock",
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("--hold-limit 3600000s is above the most allowed: 5s"),
            "{}",
            text(&out)
        );
        let out = Command::new(bin("qdisc"))
            .args([
                "--dev",
                "lo",
                "--ingress",
                "setup",
                "--port",
                "7000",
                "--limit",
                "4294967295",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out)
                .contains("--limit 4294967295 bytes is above the most allowed: 1048576 bytes"),
            "{}",
            text(&out)
        );
        assert!(!link_exists("ifb-lo"), "a refused setup made ifb-lo");
    });
}

#[test]
fn finding_6_no_shared_fallback_and_no_other_users_answer() {
    let Some(server) = Some(bin("reuse-server")).filter(|p| p.is_file()) else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    if !is_root() {
        return testkit::skip("finding 6: needs root (setpriv)");
    }
    in_netns("finding 6", move || {
        // No XDG_RUNTIME_DIR: an error, not /tmp.
        let out = as_user(65534, &[], &[&RELOADER, &"reload"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains("XDG_RUNTIME_DIR is not set"),
            "{}",
            text(&out)
        );
        // A path bound by another user (uid 65533's own reloader, its socket
        // opened to all) is not taken for ours.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("privilege-finding6");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sock = dir.join("forged.sock");
        let mut other = Proc::spawn(&mut as_user(
            65533,
            &[],
            &[
                &RELOADER,
                &"run",
                &"--strategy",
                &"none",
                &"--control",
                &sock,
                &"--",
                &server,
            ],
        ))
        .unwrap();
        assert!(
            other
                .wait_line("reloader: serving", Duration::from_secs(20))
                .is_some(),
            "{:?}",
            other.log
        );
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = as_user(65534, &[], &[&RELOADER, &"reload", &"--control", &sock])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("is served by uid 65533, not by you (uid 65534)"),
            "{}",
            text(&out)
        );
        other.signal(libc::SIGTERM);
        assert!(other.wait_exit(Duration::from_secs(20)).is_some());
        assert!(
            !other.drain_log().iter().any(|l| l.contains("reload #2")),
            "the other user's reloader acted on the request"
        );
    });
}

#[test]
fn finding_7_a_user_cannot_change_tcp_migrate_req() {
    if Path::new(qdisc::policy::PATH).exists() {
        return testkit::skip(&format!(
            "{} exists on this machine: the no-policy refusal cannot be shown",
            qdisc::policy::PATH
        ));
    }
    let Some(dir) = capability_copies("finding7", &["reloader"]) else {
        return;
    };
    in_netns("finding 7", move || {
        let sysctl = "/proc/sys/net/ipv4/tcp_migrate_req";
        let Ok(before) = std::fs::read_to_string(sysctl) else {
            return testkit::skip("this kernel has no tcp_migrate_req (before 5.14)");
        };
        assert_eq!(before.trim(), "0", "a fresh namespace starts at 0");
        refused_without_policy(&[
            &dir.join("reloader"),
            &"run",
            &"--strategy",
            &"migrate",
            &"--control",
            &"/nonexistent/x.sock",
            &"--",
            &"true",
        ]);
        assert_eq!(std::fs::read_to_string(sysctl).unwrap().trim(), "0");
    });
}

/// `CapPrm` and `CapEff` of `pid`.
fn caps_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_owned()
    };
    (field("CapPrm:"), field("CapEff:"))
}

#[test]
fn finding_8_no_capability_kept_when_the_strategy_needs_none() {
    let Some(server) = Some(bin("reuse-server")).filter(|p| p.is_file()) else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    if !is_root() {
        return testkit::skip("finding 8: needs root (a process with capabilities to drop)");
    }
    in_netns("finding 8", move || {
        for strategy in ["none", "handoff"] {
            let ctl = format!("/tmp/privilege-f8-{}-{strategy}.sock", std::process::id());
            let mut r = Proc::spawn(
                Command::new(RELOADER)
                    .args(["run", "--strategy", strategy, "--control", &ctl, "--"])
                    .arg(&server),
            )
            .unwrap();
            assert!(
                r.wait_line("reloader: serving", Duration::from_secs(20))
                    .is_some(),
                "{:?}",
                r.log
            );
            let zero = "0000000000000000".to_string();
            assert_eq!(caps_of(r.pid()), (zero.clone(), zero), "{strategy}");
            r.signal(libc::SIGTERM);
            let status = r.wait_exit(Duration::from_secs(20)).expect("exits");
            assert!(status.success(), "{strategy}: {:?}", r.drain_log());
        }
    });
}

#[test]
fn finding_7_tcp_migrate_req_is_restored_after_sigkill() {
    let Some(server) = Some(bin("reuse-server")).filter(|p| p.is_file()) else {
        return testkit::skip("reuse-server not built: run `cargo test --workspace`");
    };
    if !is_root() {
        return testkit::skip("finding 7: needs root (to set the sysctl)");
    }
    in_netns("finding 7, SIGKILL", move || {
        let sysctl = "/proc/sys/net/ipv4/tcp_migrate_req";
        let Ok(before) = std::fs::read_to_string(sysctl) else {
            return testkit::skip("this kernel has no tcp_migrate_req (before 5.14)");
        };
        assert_eq!(before.trim(), "0", "a fresh namespace starts at 0");
        let ctl = format!("/tmp/privilege-f7-{}.sock", std::process::id());
        let mut r = Proc::spawn(
            Command::new(RELOADER)
                .args(["run", "--strategy", "migrate", "--control", &ctl, "--"])
                .arg(&server),
        )
        .unwrap();
        assert!(
            r.wait_line("reloader: serving", Duration::from_secs(20))
                .is_some(),
            "{:?}",
            r.log
        );
        assert_eq!(std::fs::read_to_string(sysctl).unwrap().trim(), "1");
        r.signal(libc::SIGKILL);
        assert!(r.wait_exit(Duration::from_secs(10)).is_some());
        // The watchdog puts it back when the reloader's end of its pipe closes.
        assert!(
            r.wait_line(
                "watchdog: restored net.ipv4.tcp_migrate_req=0",
                Duration::from_secs(10)
            )
            .is_some(),
            "{:?}",
            r.log
        );
        assert_eq!(std::fs::read_to_string(sysctl).unwrap().trim(), "0");
        // The server it left is ours to end, by PID.
        for line in r.drain_log() {
            if let Some(pid) = line
                .strip_prefix("reloader: generation 1: started PID ")
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on the server this test's reloader started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    });
}
