//! The library and the `qdisc` binary on the host kernel, each test in a
//! private network namespace. These machines' kernel lacks sch_prio,
//! sch_plug and cls_fw, so this is where the "missing feature" paths are
//! proven; on a kernel that has them the tests say so and check the rest.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

const QDISC: &str = env!("CARGO_BIN_EXE_qdisc");

fn in_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(why) = testkit::netns::run(f) {
        testkit::skip(&format!("{name}: {why}"));
    }
}

fn qdisc(args: &[&str]) -> Output {
    Command::new(QDISC).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether this kernel has prio (then the missing-feature checks do not apply).
fn host_has_prio() -> bool {
    qdisc::probe()
        .expect("probing the kernel's tc support")
        .supports("prio")
}

#[test]
fn probe_reports_what_this_kernel_lacks() {
    in_netns("probe", || {
        let p = qdisc::probe().expect("probe runs");
        let out = qdisc(&["probe"]);
        eprintln!("{}", text(&out));
        for always in ["pfifo", "u32"] {
            assert!(
                p.supports(always),
                "{always} is in every kernel we target: {p:?}"
            );
        }
        if p.supports("prio") {
            return testkit::skip(
                "this host kernel has sch_prio: the missing-feature path cannot be shown here",
            );
        }
        let missing = p.missing();
        for m in ["prio", "plug", "fw"] {
            assert!(missing.contains(&m), "{m} should be missing: {p:?}");
        }
        let t = text(&out);
        assert_eq!(
            out.status.code(),
            Some(3),
            "probe exits 3 when something is missing"
        );
        assert!(
            t.contains("kernel lacks the plug qdisc (sch_plug, CONFIG_NET_SCH_PLUG)"),
            "{t}"
        );
        assert!(
            t.contains("kernel lacks the fw classifier (cls_fw, CONFIG_NET_CLS_FW)"),
            "{t}"
        );
        let json = String::from_utf8_lossy(&qdisc(&["probe", "--json"]).stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&json).expect("probe --json is JSON");
        assert_eq!(v["plug"]["supported"], false, "{json}");
        assert!(
            v["plug"]["error"].as_str().unwrap().contains("sch_plug"),
            "{json}"
        );
        assert_eq!(v["u32"]["supported"], true, "{json}");
    });
}

#[test]
fn setup_fails_clearly_and_leaves_nothing_behind() {
    in_netns("setup without sch_prio", || {
        if host_has_prio() {
            return testkit::skip(
                "this host kernel has sch_prio: the missing-feature path cannot be shown here",
            );
        }
        let before = qdisc::status("lo").unwrap();
        for classifier in ["fw", "u32"] {
            let out = qdisc(&["setup", "--classifier", classifier]);
            let t = text(&out);
            assert!(!out.status.success(), "{t}");
            assert!(
                t.contains("kernel lacks the prio qdisc (sch_prio, CONFIG_NET_SCH_PRIO): load the module or use a kernel that has it"),
                "{t}"
            );
            assert!(
                t.contains("Specified qdisc kind is unknown"),
                "keeps the kernel's text: {t}"
            );
        }
        let err = qdisc::setup(&qdisc::Config::default()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(err.is_unsupported());
        let after = qdisc::status("lo").unwrap();
        assert_eq!(after.other_root, before.other_root);
        assert!(
            !after.root
                && after.plug.is_none()
                && after.filters.is_empty()
                && after.tables.is_empty()
        );
        // Teardown of nothing is fine.
        assert!(qdisc(&["teardown"]).status.success());
    });
}

#[test]
fn missing_device_is_named() {
    in_netns("missing device", || {
        let out = qdisc(&["--dev", "eth9", "setup"]);
        assert!(
            text(&out).contains("device eth9 not found"),
            "{}",
            text(&out)
        );
        let e = qdisc::Plug::open("eth9").err().unwrap();
        assert!(e.to_string().contains("device eth9 not found"));
    });
}

#[test]
fn plug_without_a_tree_says_to_set_up() {
    in_netns("plug without tree", || {
        let out = qdisc(&["plug"]);
        let t = text(&out);
        assert!(!out.status.success());
        assert!(
            t.contains("there is no plug qdisc of ours on this device: run `qdisc setup` first"),
            "{t}"
        );
    });
}

#[test]
fn without_cap_net_admin_the_error_names_setcap() {
    in_netns("no CAP_NET_ADMIN", || {
        let mut cmd = Command::new(QDISC);
        cmd.arg("plug");
        // SAFETY: setgid/setuid are async-signal-safe; the child drops to
        // nobody, losing every capability, before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains(
                "needs CAP_NET_ADMIN: run as root or `sudo setcap cap_net_admin+ep <binary>`"
            ),
            "{t}"
        );
    });
}
