//! The guest's root file system: busybox, the kernel modules we need (with
//! their dependencies and a fresh `modules.dep`), iproute2, nft and ab with
//! their shared libraries, the project's static binaries and the scenarios.
//! Staged as a directory, then packed as one uncompressed newc archive.

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cpio;
use crate::exec::{exec, which};
use crate::provision::Kernel;

/// Modules the project uses in the guest. Their dependencies come along, and
/// the guest's modprobe autoloads them on first use.
pub const MODULES: &[&str] = &[
    "sch_prio",
    "sch_plug",
    "sch_htb",
    "sch_ingress",
    "cls_fw",
    "cls_u32",
    "cls_bpf",
    "cls_matchall",
    "act_mirred",
    "act_gact",
    "ifb",
    "veth",
    "nf_tables",
    // sock_diag for TCP (what `ss` and the reloader use to see listeners).
    "tcp_diag",
    "inet_diag",
    // A host folder shared over 9p, for results that are files (TSVs).
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    // libcrc32c (an nf_tables dependency) asks the crypto API for "crc32c",
    // which autoloads an implementation by alias: ship the generic one.
    "crc32c_generic",
];

/// Host tools copied in for cross-checks, at `/usr/sbin/<name>`. Call them by
/// that full path in the guest: busybox's shell prefers its own applets
/// (`tc`, `ip`) over anything on PATH.
pub const TOOLS: &[&str] = &["tc", "ip", "ss", "nft", "ab", "setcap", "getcap"];

/// The bench's peers, copied in (with their libraries) when the host has
/// them: `cargo xtask bench` installs them, the tests do not need them.
pub const PEERS: &[&str] = &["nginx", "haproxy", "tcpdump", "strace"];

/// The guest's `/init`. `/xtask-cmd` comes from a second archive appended per
/// run, so the big one is built once.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /root
/bin/busybox --install -s
mount -t proc proc /proc
# The kernel's messages from here on as under `quiet` (warnings and worse).
echo 4 > /proc/sys/kernel/printk
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
# As on a real system: /run and / are root's alone (the tools trust a
# root-owned runtime directory only when no one else can write above it).
mount -t tmpfs -o mode=755 tmpfs /run
chmod 755 /
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
# Room for ab's churn: a server socket that finds the TIME_WAIT table full
# skips TIME_WAIT and resets its client's late segments (docs/testing.md).
# Per network namespace: veth-pair.sh sets it in the ones it makes.
echo 32768 > /proc/sys/net/ipv4/tcp_max_tw_buckets
if grep -q xtask.results /proc/cmdline; then
    modprobe virtio_pci && modprobe 9pnet_virtio && modprobe 9p && mkdir -p /results &&
        mount -t 9p -o trans=virtio,version=9p2000.L results /results ||
        echo "xtask-vm: cannot mount the results folder"
fi
# The console is a serial line, not a terminal that redraws.
unset TERM
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
cd /
if [ -e /xtask-systemd ]; then
    # The command runs as a service of systemd, which becomes PID 1 here.
    if [ ! -x /lib/systemd/systemd ]; then
        echo "xtask-vm: no systemd in this initramfs: the host has none (apt-get install systemd)"
        echo "xtask-vm: exit-status 125"
        poweroff -f
    fi
    mkdir -p /etc/systemd/system
    printf '%s\n' '[Unit]' 'Description=the xtask-vm command' \
        '[Service]' 'Type=oneshot' 'ExecStart=/bin/sh /xtask-cmd' 'WorkingDirectory=/' \
        'Environment=PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root' \
        'StandardOutput=tty' 'StandardError=tty' 'TTYPath=/dev/ttyS0' \
        'ExecStopPost=/bin/sh -c '"'"'echo "xtask-vm: exit-status $EXIT_STATUS" > /dev/ttyS0; /bin/busybox poweroff -f'"'" \
        > /etc/systemd/system/xtask.service
    printf '%s\n' '[Unit]' 'Description=the xtask-vm command, under systemd' \
        'Requires=multi-user.target xtask.service' 'After=multi-user.target' \
        > /etc/systemd/system/xtask.target
    echo "xtask-vm: kernel $(uname -r), running under systemd: $(cat /xtask-cmd)"
    exec /lib/systemd/systemd --unit=xtask.target --show-status=false --log-level=warning
fi
echo "xtask-vm: kernel $(uname -r), running: $(cat /xtask-cmd)"
sh /xtask-cmd
rc=$?
tw=$(sh /scenarios/tw-overflows.sh)
[ "$tw" = 0 ] || echo "xtask-vm: warning: $tw sockets skipped TIME_WAIT (the table was full: raise net.ipv4.tcp_max_tw_buckets)"
echo "xtask-vm: exit-status $rc"
poweroff -f
"#;

/// The first line the init script above prints (the guest has booted).
pub const INIT_PREFIX: &str = "xtask-vm: kernel ";
/// The line `/init` prints last; exactly one must reach the host.
pub const RESULT_PREFIX: &str = "xtask-vm: exit-status ";

/// Stages the root file system in `stage` and returns it packed.
pub fn build(kernel: &Kernel, bins: &[PathBuf], scenarios: &Path, stage: &Path) -> Result<Vec<u8>> {
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage)?;
    write(stage, "init", INIT.as_bytes(), 0o755)?;
    write(
        stage,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
        0o644,
    )?;
    write(stage, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;

    let busybox = which("busybox").context("busybox not found")?;
    copy(&busybox, &stage.join("bin/busybox"))?;
    stage_modules(kernel, stage)?;
    let peers = PEERS.iter().filter(|p| which(p).is_some());
    for tool in TOOLS.iter().chain(peers) {
        let path = which(tool).with_context(|| format!("{tool} not found on the host"))?;
        copy(&path, &stage.join("usr/sbin").join(tool))?;
        for lib in shared_libraries(&path)? {
            let dst = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !dst.exists() {
                copy(&lib, &dst)?;
            }
        }
    }
    for bin in bins {
        copy(
            bin,
            &stage.join("usr/local/bin").join(bin.file_name().unwrap()),
        )?;
    }
    stage_systemd(stage)?;
    stage_packages(stage)?;
    // What the scenarios that follow the documentation read: the README,
    // docs/systemd.md and the shipped units, at /repo.
    if let Some(repo) = scenarios.parent().and_then(Path::parent) {
        copy(&repo.join("README.md"), &stage.join("repo/README.md"))?;
        copy(
            &repo.join("docs/systemd.md"),
            &stage.join("repo/docs/systemd.md"),
        )?;
        for e in fs::read_dir(repo.join("contrib/systemd"))? {
            let p = e?.path();
            let name = p.file_name().unwrap();
            copy(&p, &stage.join("repo/contrib/systemd").join(name))?;
        }
    }
    if scenarios.is_dir() {
        for e in fs::read_dir(scenarios)? {
            let p = e?.path();
            copy(&p, &stage.join("scenarios").join(p.file_name().unwrap()))?;
        }
    }
    pack(stage)
}

/// The host's systemd (PID 1, `systemctl`, the units it ships) and
/// `useradd`, when the host has them, for scenarios run under systemd
/// (`--systemd` before the command). Without them those scenarios fail
/// clearly; nothing else needs them.
fn stage_systemd(stage: &Path) -> Result<()> {
    let systemd = Path::new("/lib/systemd/systemd");
    if !systemd.exists() {
        return Ok(());
    }
    // coreutils' install too: the README's steps use it, busybox has none.
    let bins = [
        Some(systemd.to_path_buf()),
        which("systemctl"),
        which("useradd"),
        which("usermod"),
        which("systemd-sysusers"),
        which("install"),
    ];
    for bin in bins.into_iter().flatten() {
        let real = fs::canonicalize(&bin)?;
        copy(&real, &stage.join(bin.strip_prefix("/").unwrap_or(&bin)))?;
        for lib in shared_libraries(&real)? {
            let dst = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !dst.exists() {
                copy(&lib, &dst)?;
            }
        }
    }
    for e in fs::read_dir("/lib/systemd/system")? {
        let p = e?.path();
        let meta = fs::symlink_metadata(&p)?;
        let dst = stage
            .join("usr/lib/systemd/system")
            .join(p.file_name().unwrap());
        if meta.file_type().is_symlink() {
            fs::create_dir_all(dst.parent().unwrap())?;
            std::os::unix::fs::symlink(fs::read_link(&p)?, &dst)?;
        } else if meta.is_file() {
            copy(&p, &dst)?;
        }
    }
    for f in [
        "etc/login.defs",
        "etc/default/useradd",
        "usr/lib/os-release",
    ] {
        let src = Path::new("/").join(f);
        if src.exists() {
            copy(&src, &stage.join(f))?;
        }
    }
    write(
        stage,
        "etc/shadow",
        b"root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
        0o640,
    )?;
    write(stage, "etc/gshadow", b"root:*::\nnogroup:*::\n", 0o640)?;
    write(stage, "etc/machine-id", b"", 0o444)?;
    Ok(())
}

/// What the package test needs to install our `.deb` and use it: dpkg
/// (with GNU tar, whose options dpkg-deb passes: busybox tar has not them),
/// man-db with groff-base and col (`man reloader` renders), bash (its completion
/// loads), copied file by file as the host's `dpkg -L` lists them, with
/// their libraries.
const GUEST_PACKAGES: &[&str] = &[
    "dpkg",
    "tar",
    "man-db",
    "groff-base",
    "bsdextrautils",
    "bash",
];

/// Packages whose files the guest has from elsewhere (systemd's PID 1 and
/// `setcap` above): listed in its dpkg database, as our package depends on
/// them, not copied again.
const LISTED_PACKAGES: &[&str] = &["systemd", "libcap2-bin"];

/// Stages [`GUEST_PACKAGES`] and a dpkg database that lists them and
/// [`LISTED_PACKAGES`] as the host's `dpkg-query` describes them, when the
/// host has dpkg (without it the package test fails clearly).
fn stage_packages(stage: &Path) -> Result<()> {
    if which("dpkg-query").is_none() {
        return Ok(());
    }
    let skip = [
        "/usr/share/doc/",
        "/usr/share/man/",
        "/usr/share/locale/",
        "/usr/share/info/",
    ];
    let db = stage.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers", "alternatives"] {
        fs::create_dir_all(db.join(d))?;
    }
    fs::create_dir_all(stage.join("var/log"))?;
    fs::write(db.join("available"), b"")?;
    let mut status = String::new();
    for pkg in GUEST_PACKAGES.iter().chain(LISTED_PACKAGES) {
        let stanza = exec(Command::new("dpkg-query").args(["-s", pkg]))
            .with_context(|| format!("the host has no {pkg} package (apt-get install {pkg})"))?;
        status.push_str(stanza.trim_end());
        status.push_str("\n\n");
        let list = exec(Command::new("dpkg-query").args(["-L", pkg]))?;
        fs::write(db.join(format!("info/{pkg}.list")), &list)?;
        if !GUEST_PACKAGES.contains(pkg) {
            continue;
        }
        for path in list.lines().map(Path::new) {
            let text = path.to_string_lossy();
            if skip.iter().any(|s| text.starts_with(s)) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(path) else {
                continue; // listed, but removed on the host (a diversion)
            };
            let dst = stage.join(path.strip_prefix("/").unwrap_or(path));
            if meta.file_type().is_symlink() {
                if fs::symlink_metadata(&dst).is_err() {
                    fs::create_dir_all(dst.parent().unwrap())?;
                    std::os::unix::fs::symlink(fs::read_link(path)?, &dst)?;
                }
            } else if meta.is_file() && fs::symlink_metadata(&dst).is_err() {
                copy(path, &dst)?;
                fs::set_permissions(&dst, meta.permissions())?;
                let mut magic = [0u8; 4];
                let elf = fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                if elf {
                    // ldd refuses a static executable: it needs nothing.
                    for lib in shared_libraries(path).unwrap_or_default() {
                        let dst = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
                        if !dst.exists() {
                            copy(&lib, &dst)?;
                        }
                    }
                }
            }
        }
    }
    fs::write(db.join("status"), status)?;
    // dpkg wants ldconfig on PATH (it runs it after unpacking libraries).
    if let Some(ldconfig) = which("ldconfig") {
        copy(&ldconfig, &stage.join("usr/sbin/ldconfig"))?;
    }
    Ok(())
}

/// A second archive holding `/xtask-cmd`; appended to the first, it tells
/// `/init` what to run. A first word `--systemd` makes `/init` start
/// systemd as PID 1 and run the command as its service (`/xtask-systemd`).
/// Each of `files` is added as `/extra/<name>`.
pub fn command_archive(command: &[String], files: &[(&str, &Path)]) -> Result<Vec<u8>> {
    let systemd = command.first().map(String::as_str) == Some("--systemd");
    let command = if systemd { &command[1..] } else { command };
    let line: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    let mut w = cpio::Writer::new(Vec::new());
    if systemd {
        w.file("xtask-systemd", 0o644, b"")?;
    }
    w.file(
        "xtask-cmd",
        0o644,
        format!("{}\n", line.join(" ")).as_bytes(),
    )?;
    if !files.is_empty() {
        w.dir("extra")?;
    }
    for (name, path) in files {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        w.file(&format!("extra/{name}"), 0o644, &data)?;
    }
    Ok(w.finish()?)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Copies MODULES and everything they depend on, then runs depmod so the
/// guest's modprobe (and the kernel's autoload through it) finds them.
fn stage_modules(kernel: &Kernel, stage: &Path) -> Result<()> {
    let version = kernel.version();
    let mut by_name = std::collections::HashMap::new();
    index_modules(&kernel.modules.join("kernel"), &mut by_name)?;
    let mut todo: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = by_name.get(&name) else {
            // Built into this kernel (or absent): nothing to copy.
            continue;
        };
        let deps = exec(Command::new("modinfo").args(["-F", "depends"]).arg(path))?;
        todo.extend(
            deps.trim()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_")),
        );
        let rel = path.strip_prefix(&kernel.modules)?;
        let dst = stage.join("lib/modules").join(&version).join(rel);
        match rel.extension().is_some_and(|e| e == "xz") {
            // 6.12 ships `.ko.xz`: unpacked here, so the guest's busybox
            // modprobe (which may not read xz) gets plain `.ko` files.
            true => {
                let plain = dst.with_extension("");
                fs::create_dir_all(plain.parent().unwrap())?;
                let out = crate::exec::output(Command::new("xz").arg("-dc").arg(path))?;
                if !out.status.success() {
                    bail!(
                        "xz -dc {}: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                fs::write(&plain, out.stdout)?;
            }
            false => copy(path, &dst)?,
        }
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = kernel.modules.join(f);
        if src.exists() {
            copy(&src, &stage.join("lib/modules").join(&version).join(f))?;
        }
    }
    exec(Command::new("depmod").arg("-b").arg(stage).arg(&version))?;
    Ok(())
}

fn index_modules(dir: &Path, out: &mut std::collections::HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, out)?;
        } else if let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko").or_else(|| n.strip_suffix(".ko.xz")))
        {
            out.insert(name.replace('-', "_"), p.clone());
        }
    }
    Ok(())
}

/// The shared libraries `ldd` lists for `bin`, the dynamic loader included.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = exec(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn write(stage: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let p = stage.join(rel);
    fs::create_dir_all(p.parent().unwrap())?;
    fs::write(&p, data)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies the file's contents (following symlinks) and its mode.
fn copy(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Packs the staged tree: parents before children, symlinks kept.
fn pack(stage: &Path) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new(BufWriter::new(Vec::new()));
    let mut stack = vec![stage.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            let name = p.strip_prefix(stage)?.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&p)?;
            if meta.file_type().is_symlink() {
                w.symlink(&name, &fs::read_link(&p)?.to_string_lossy())?;
            } else if meta.is_dir() {
                w.dir(&name)?;
                stack.push(p);
            } else if meta.is_file() {
                w.file(&name, meta.permissions().mode(), &fs::read(&p)?)?;
            } else {
                bail!("{} is neither file, directory nor symlink", p.display());
            }
        }
    }
    let buf = w.finish()?;
    Ok(buf.into_inner().map_err(|e| e.into_error())?)
}
