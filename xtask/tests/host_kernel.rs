//! What the host kernel says to the same tree the guest builds. On these
//! machines it lacks sch_prio, which is why the plug is tested in the VM.

use std::process::Command;

#[test]
fn host_kernel_refuses_or_accepts_prio_plainly() {
    let Some(tc) = xtask::exec::which("tc") else {
        testkit::skip("needs iproute2's tc on the host");
        return;
    };
    let result = testkit::netns::run(move || {
        Command::new(tc)
            .args([
                "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4",
            ])
            .output()
            .unwrap()
    });
    let out = match result {
        Ok(out) => out,
        Err(why) => return testkit::skip(&why),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("note: this host kernel has sch_prio; the plug could be tested here too");
    } else {
        assert!(
            stderr.contains("Specified qdisc kind is unknown")
                || stderr.contains("Specified qdisc not found"),
            "expected the kernel's ENOENT text, got: {stderr}"
        );
        eprintln!("host kernel refuses prio as expected: {}", stderr.trim());
    }
}

/// The steer strategy on the host kernel, with the guest's scenario: a
/// server without the gate reloaded every 100 ms, local and remote (a veth
/// pair between two namespaces, all inside a private network and mount
/// namespace of our own), IPv4 and IPv6, c=1 and c=32: 0 failed requests
/// and nothing held.
#[test]
fn host_steer_local_and_remote_ipv4_ipv6_zero_failures() {
    // The guest's binaries (release, static): `cargo test` builds no
    // loadgen binary, and the guest tests build these anyway.
    let built =
        xtask::build::static_binaries(&xtask::workspace_root()).expect("building the binaries");
    let Some(bins) = built
        .first()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf())
    else {
        return testkit::skip("no binary built");
    };
    if !["reloader", "reuse-server", "loadgen"]
        .iter()
        .all(|b| bins.join(b).is_file())
    {
        return testkit::skip("reloader, reuse-server or loadgen missing from the static build");
    }
    for tool in ["unshare", "ip", "ping"] {
        if xtask::exec::which(tool).is_none() {
            return testkit::skip(&format!(
                "needs {tool} on the host (util-linux, iproute2, iputils-ping)"
            ));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return testkit::skip("needs root (namespaces, a veth pair, BPF)");
    }
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/steer.sh");
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("unshare")
        .args(["-m", "-n", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mkdir -p /run/netns && mount -t tmpfs none /run/netns && ip link set lo up && sh {scenario} 2000"
        ))
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("scenario: steer ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
