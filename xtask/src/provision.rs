//! Everything the VM needs from the host, found or installed, and cached:
//! host packages (apt, when root on Debian/Ubuntu) and a Debian kernel that
//! has sch_prio, sch_plug and cls_fw as modules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::exec::{exec, is_root, output, which};

/// Provisioning cannot happen here (not root, not Debian): tests skip with
/// this reason, `cargo xtask vm` fails with it.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// (what we need, the Debian package that has it)
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("tc", "iproute2"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ab", "apache2-utils"),
    ("curl", "curl"),
    ("setcap", "libcap2-bin"),
    // 6.12 kernels ship their modules as .ko.xz.
    ("xz", "xz-utils"),
    // Servers we did not write, copied into the guest to run under the
    // reloader (the third-party scenarios); never started on the host.
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    // For the guest booted with systemd as PID 1 (the README's install
    // steps): systemd itself, and useradd.
    ("systemctl", "systemd"),
    ("useradd", "passwd"),
    // For the package test there: dpkg installs our .deb, man renders its
    // pages (groff), bash loads its completion.
    ("dpkg", "dpkg"),
    ("man", "man-db"),
    ("groff", "groff-base"),
    ("col", "bsdextrautils"),
    ("bash", "bash"),
];

/// Finds the host tools, installing the missing ones with apt when we may.
pub fn host_tools() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    ensure(HOST_TOOLS)?;
    *done = true;
    Ok(())
}

/// Makes sure each (tool, Debian package) is on PATH, installing the
/// missing packages with apt when running as root; otherwise fails with the
/// exact command to run.
pub fn ensure(tools: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    // The guest needs busybox linked statically: Debian's plain `busybox`
    // package is dynamic.
    if tools.iter().any(|(t, _)| *t == "busybox")
        && which("busybox").is_some_and(|p| !is_static(&p))
    {
        missing.push("busybox-static");
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
        if !(is_root() && which("apt-get").is_some()) {
            return Err(Unavailable(format!(
                "host packages are missing; install them with: sudo sh -c '{cmd}'"
            ))
            .into());
        }
        eprintln!(
            "xtask: installing host packages for the VM: {}",
            missing.join(" ")
        );
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
        // Packages of services (nginx, HAProxy) would start them here:
        // policy-rc.d tells their scripts not to, for this install only.
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let ours = !policy.exists()
            && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
            && std::fs::set_permissions(
                policy,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .is_ok();
        let installed = exec(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        if ours {
            let _ = std::fs::remove_file(policy);
        }
        installed?;
    }
    Ok(())
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub fn is_static(path: &Path) -> bool {
    output(Command::new("ldd").arg(path))
        .map(|o| {
            !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("statically linked")
        })
        .unwrap_or(false)
}

/// A kernel image and the module tree that goes with it.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<version>`
    pub modules: PathBuf,
}

impl Kernel {
    pub fn version(&self) -> String {
        self.modules
            .file_name()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The current Debian `linux-image-*-amd64`, downloaded once into `cache`
/// (`apt-get download`, `dpkg-deb -x`) and reused afterwards.
pub fn debian_kernel(cache: &Path) -> Result<Kernel> {
    debian_kernel_package(cache, "linux-image-amd64")
}

/// The Debian kernel package `name` (a versioned `linux-image-...`, or a
/// metapackage such as `linux-image-cloud-amd64`, followed to the package
/// it depends on), downloaded once into `cache`.
pub fn debian_kernel_package(cache: &Path, name: &str) -> Result<Kernel> {
    let kernels = cache.join("kernel");
    let package = match resolve_kernel_package(name) {
        Ok(p) => p,
        Err(e) => {
            // Offline, or apt cannot tell: fall back to one we already have.
            if let Some(k) = cached_kernels(&kernels).pop() {
                eprintln!(
                    "xtask: cannot ask apt for the current kernel ({e:#}); using cached {}",
                    k.vmlinuz.display()
                );
                return Ok(k);
            }
            return Err(e);
        }
    };
    let dir = kernels.join(&package);
    if let Some(k) = cached_kernels(&kernels)
        .into_iter()
        .find(|k| k.vmlinuz.starts_with(&dir))
    {
        return Ok(k);
    }
    eprintln!(
        "xtask: downloading the Debian kernel {package} (about 70 MB, once) into {}",
        dir.display()
    );
    let tmp = kernels.join(format!(".{package}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    exec(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&tmp),
    )?;
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download produced no .deb")?;
    exec(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(tmp.join("root")),
    )?;
    std::fs::remove_file(&deb)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp.join("root"), &dir)?;
    let _ = std::fs::remove_dir_all(&tmp);
    cached_kernels(&kernels)
        .into_iter()
        .find(|k| k.vmlinuz.starts_with(&dir))
        .with_context(|| format!("{package} has no boot/vmlinuz-* and lib/modules/<version>"))
}

/// A metapackage (`apt-cache depends linux-image-amd64` names the current
/// versioned package) is followed once; a versioned package is itself.
fn resolve_kernel_package(name: &str) -> Result<String> {
    let ask = || -> Result<Option<String>> {
        let out = exec(Command::new("apt-cache").args(["depends", name]))?;
        let dep = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
            .map(str::to_owned);
        // A versioned image depends on no other image: it is the package.
        Ok(dep.or_else(|| {
            out.lines()
                .next()
                .map(|l| l.trim().to_owned())
                .filter(|l| l == name)
        }))
    };
    if let Some(p) = ask().unwrap_or(None) {
        return Ok(p);
    }
    if is_root() {
        // A fresh machine may have no package lists yet.
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
        if let Some(p) = ask()? {
            return Ok(p);
        }
    }
    bail!("apt-cache does not know {name} (run `apt-get update`; `apt-cache search --names-only ^linux-image-` lists the kernels)")
}

/// Kernels unpacked under `dir`, oldest name first.
fn cached_kernels(dir: &Path) -> Vec<Kernel> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut roots: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    roots.sort();
    for root in roots {
        let vmlinuz = std::fs::read_dir(root.join("boot"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            });
        let Some(vmlinuz) = vmlinuz else { continue };
        let version = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_owned();
        let modules = root.join("lib/modules").join(version);
        if modules.is_dir() {
            found.push(Kernel { vmlinuz, modules });
        }
    }
    found
}
