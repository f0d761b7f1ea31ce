//! Compiles the steering program (`bpf/steer.bpf.c`) with clang for the
//! BPF target; `steer.rs` embeds the object and aya loads it at run time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/steer.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("steer.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The uapi headers include <asm/types.h>, which Debian keeps under the
    // host's multiarch directory; the BPF target does not look there.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed on {src} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the steering program is compiled at build time; \
             install clang (Debian: apt-get install clang), \
             or set CLANG to a clang that targets BPF"
        ),
    }
}
