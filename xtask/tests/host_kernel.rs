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
