//! `cargo xtask vm`: boot a kernel that has sch_prio, sch_plug and cls_fw
//! under qemu (TCG: KVM guests hang on these machines) and run one command
//! in it as root.
//!
//! The shape follows aya's xtask: an initramfs with a tiny `/init`, the
//! console streamed line by line, a kernel panic or a timeout ends the run at
//! once, and exactly one result line must arrive.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::initramfs::{self, RESULT_PREFIX};
use crate::provision::{self, Kernel};
use crate::{build, workspace_root};

/// A kernel and a base initramfs, ready to boot any number of commands.
pub struct Prepared {
    pub kernel: Kernel,
    base_initrd: Vec<u8>,
    work: PathBuf,
}

/// Provisions host tools and the kernel (unless given), builds the project's
/// static binaries and the base initramfs.
pub fn prepare(kernel: Option<Kernel>) -> Result<Prepared> {
    let work = workspace_root().join("target/vm");
    provision::host_tools()?;
    let kernel = match kernel {
        Some(k) => k,
        None => provision::debian_kernel(&work)?,
    };
    prepare_kernel(kernel)
}

/// The same with the Debian kernel package `name` (see
/// [`provision::debian_kernel_package`]).
pub fn prepare_package(name: &str) -> Result<Prepared> {
    let work = workspace_root().join("target/vm");
    provision::host_tools()?;
    prepare_kernel(provision::debian_kernel_package(&work, name)?)
}

fn prepare_kernel(kernel: Kernel) -> Result<Prepared> {
    let root = workspace_root();
    let work = root.join("target/vm");
    let bins = build::static_binaries(&root)?;
    let base_initrd = initramfs::build(
        &kernel,
        &bins,
        &root.join("xtask/scenarios"),
        &work.join("stage"),
    )
    .context("building the initramfs")?;
    Ok(Prepared {
        kernel,
        base_initrd,
        work,
    })
}

/// How a boot ended without producing a result.
#[derive(Debug)]
pub enum Failure {
    Panic,
    Timeout(Duration),
    /// The guest's init never printed its first line: qemu or the kernel
    /// hung before our code ran (seen once under TCG, stuck after SeaBIOS).
    NoBoot(Duration),
    NoResult,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic => write!(f, "the guest kernel panicked"),
            Failure::Timeout(t) => write!(
                f,
                "the guest gave no result within {} s (hang?)",
                t.as_secs()
            ),
            Failure::NoBoot(t) => write!(
                f,
                "the guest did not reach its init within {} s (a boot hang, before any scenario ran)",
                t.as_secs()
            ),
            Failure::NoResult => write!(f, "the guest stopped without printing its result line"),
        }
    }
}

impl std::error::Error for Failure {}

impl Prepared {
    /// Boots, runs `command` as root, streams every console line to
    /// `on_line`, and returns the command's exit status.
    pub fn run(
        &self,
        command: &[String],
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<i32> {
        self.run_sharing(command, None, timeout, on_line)
    }

    /// Like [`run`](Self::run), with host files added to the guest for this
    /// boot only: each `(name, path)` appears at `/extra/<name>`.
    pub fn run_with_files(
        &self,
        command: &[String],
        files: &[(&str, &Path)],
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<i32> {
        self.boot_with(command, files, None, timeout, on_line)
    }

    /// Like [`run`](Self::run), with the host folder `results` mounted at
    /// `/results` in the guest (9p), for files the command writes.
    pub fn run_sharing(
        &self,
        command: &[String],
        results: Option<&Path>,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<i32> {
        self.boot_with(command, &[], results, timeout, on_line)
    }

    fn boot_with(
        &self,
        command: &[String],
        files: &[(&str, &Path)],
        results: Option<&Path>,
        timeout: Duration,
        mut on_line: impl FnMut(&str),
    ) -> Result<i32> {
        static COUNTER: Mutex<u32> = Mutex::new(0);
        let n = {
            let mut c = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let initrd = self
            .work
            .join(format!("run-{}-{n}.initrd", std::process::id()));
        let mut bytes = self.base_initrd.clone();
        bytes.extend(initramfs::command_archive(command, files)?);
        std::fs::write(&initrd, bytes)?;
        let mut result = boot(
            &self.kernel.vmlinuz,
            &initrd,
            results,
            timeout,
            &mut on_line,
        );
        // A boot that never reached the init ran nothing of the command, so
        // booting again cannot count anything twice. Once only, and on the
        // record (`hangs.log`), so a hang that grows common is seen.
        if let Some(hang @ Failure::NoBoot(_)) = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<Failure>())
        {
            let note = format!("{hang}; booting once more: {}", command.join(" "));
            on_line(&format!("xtask-vm: {note}"));
            self.record_hang(&note);
            result = boot(
                &self.kernel.vmlinuz,
                &initrd,
                results,
                timeout,
                &mut on_line,
            );
        }
        let _ = std::fs::remove_file(&initrd);
        result
    }

    /// Where boot hangs are counted: `target/vm/hangs.log`, one line each.
    fn hangs_log(&self) -> PathBuf {
        self.work.join("hangs.log")
    }

    fn record_hang(&self, note: &str) {
        use std::io::Write;
        let when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format!("{when} {note}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.hangs_log())
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "xtask: cannot record the hang in {}: {e}",
                self.hangs_log().display()
            );
        }
    }
}

/// How long a guest may take to reach its init's first line (3-20 s seen
/// under TCG on 2 cores, with the load of a test run beside it).
const BOOT_WITHIN: Duration = Duration::from_secs(120);

fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    results: Option<&Path>,
    timeout: Duration,
    on_line: &mut dyn FnMut(&str),
) -> Result<i32> {
    let mut qemu = Command::new("qemu-system-x86_64");
    // Not `quiet`: the kernel's boot messages show where a boot that hangs
    // stopped; the init turns the console down to `quiet`'s level first.
    // The TCP hash tables keep the kernel's default sizes for a 1 GiB
    // guest, as a small host has them: `thash_entries` would also size the
    // listening hash, which every sock_diag look walks bucket by bucket
    // (65,536 entries made the plug's hold three times as long under TCG,
    // docs/testing.md). The TIME_WAIT table ab's churn needs is raised by
    // the init instead (`tcp_max_tw_buckets`).
    let mut append = String::from("console=ttyS0 panic=-1 rdinit=/init");
    if let Some(dir) = results {
        std::fs::create_dir_all(dir)?;
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=results,security_model=none,id=results",
            dir.display()
        ));
        append.push_str(" xtask.results");
    }
    let mut child = qemu
        .args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "1024"])
        // No network card: nothing in a test VM may reach out.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader
                .read_until(b'\n', &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let started = Instant::now();
    let deadline = started + timeout;
    // A boot that hangs fails within BOOT_WITHIN, not the scenario's timeout.
    let boot_deadline = started + BOOT_WITHIN.min(timeout);
    let mut booted = false;
    let mut results = Vec::new();
    let outcome = loop {
        let until = if booted { deadline } else { boot_deadline };
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                on_line(&line);
                booted |= line.contains(initramfs::INIT_PREFIX);
                if line.contains("Kernel panic") {
                    break Err(Failure::Panic);
                }
                if let Some(code) = line
                    .find(RESULT_PREFIX)
                    .map(|i| &line[i + RESULT_PREFIX.len()..])
                {
                    results.push(code.trim().parse::<i32>().unwrap_or(-1));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !booted && BOOT_WITHIN < timeout => {
                break Err(Failure::NoBoot(BOOT_WITHIN))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break Err(Failure::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome?;
    match results.as_slice() {
        [code] => Ok(*code),
        [] => Err(Failure::NoResult.into()),
        many => bail!(
            "the guest printed {} result lines, expected one",
            many.len()
        ),
    }
}

/// `cargo xtask vm`: boots a kernel with sch_prio/sch_plug/cls_fw (default:
/// the current Debian linux-image-*-amd64, downloaded once into target/vm)
/// under qemu and runs COMMAND as root. The project's binaries are on PATH;
/// iproute2 (tc, ip, ss), nft and ab are at /usr/sbin/<name>.
#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// Seconds before the guest is stopped and the run fails.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// A kernel image of your own (with --modules).
    #[arg(long, value_name = "VMLINUZ", requires = "modules")]
    pub kernel: Option<PathBuf>,
    /// Its lib/modules/<version> folder (with --kernel).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// A Debian kernel package to boot instead of the current
    /// linux-image-amd64 (e.g. linux-image-cloud-amd64, or a versioned
    /// linux-image-6.12.*; downloaded once).
    #[arg(long, value_name = "NAME", conflicts_with = "kernel")]
    pub kernel_package: Option<String>,
    /// The command to run in the guest.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `cargo xtask vm ...`: returns COMMAND's exit status.
pub fn main(args: VmArgs) -> Result<i32> {
    let kernel = match (args.kernel, args.modules) {
        (Some(vmlinuz), Some(modules)) => Some(Kernel { vmlinuz, modules }),
        _ => None,
    };
    let prepared = match &args.kernel_package {
        Some(name) => prepare_package(name)?,
        None => prepare(kernel)?,
    };
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let code = prepared.run(&args.command, timeout, |l| eprintln!("{l}"))?;
    eprintln!(
        "xtask: guest exited {code} after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(code)
}
