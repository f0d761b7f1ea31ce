//! `reload-floor`: the CPU a reload costs its supervisor when it does only
//! what no supervisor can skip: start the new server, wait for its gate's
//! offer, one HTTP check on a fresh connection to the gate, tell it to join
//! and wait for its `READY=1`, SIGTERM to the old one, reap it, and sleep
//! until the next reload (the reloader's protocol with a server that speaks
//! the gate, as in `cpu.sh`). No look at the kernel's
//! sockets, no hold, no async runtime: blocking calls in one thread, the
//! fewest sleeps. The reloader's own figure (`xtask/scenarios/cpu.sh`)
//! compares with this one, on the same machine. A benchmark: it prints.
//!
//! It works in a private network namespace it makes itself (run it as
//! root): `reload-floor --server target/release/reuse-server`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(clap::Parser, Debug)]
#[command(name = "reload-floor")]
struct Cli {
    /// The server to reload (it must speak the gate and answer `GET /` with
    /// its PID, as reuse-server does).
    #[arg(long)]
    server: PathBuf,
    /// Reloads to measure.
    #[arg(long, default_value_t = 100)]
    reloads: u32,
    /// The pause between reloads (the reloader's `--every`).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    every: Duration,
    /// More arguments for the server, after `--` (e.g. `-- --threads 1`).
    #[arg(last = true)]
    server_args: Vec<String>,
}

/// The reloader's `--every` syntax (humantime's: `100ms`, `2s`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (want e.g. 100ms, 2s)"))
}

const ADDR: &str = "127.0.0.1:7000";

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    if let Err(e) = run(&cli) {
        eprintln!("reload-floor: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    // SAFETY: unshare takes flags only; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        ));
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip link set lo up: {e}"))?;
    if !up.success() {
        return Err("ip link set lo up failed".into());
    }
    let dir = std::env::temp_dir().join(format!("reload-floor-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("notify socket: {e}"))?;
    let result = reloads(cli, &notify, &notify_path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A server we started: stopped (SIGTERM) and reaped when dropped, so an
/// error leaves none running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not reaped until the wait below.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn reloads(cli: &Cli, notify: &UnixDatagram, path: &std::path::Path) -> Result<(), String> {
    let mut current = start(cli, notify, path)?;
    let (own0, kids0) = (cpu(libc::RUSAGE_SELF), cpu(libc::RUSAGE_CHILDREN));
    for _ in 0..cli.reloads {
        std::thread::sleep(cli.every);
        let new = start(cli, notify, path)?;
        drop(std::mem::replace(&mut current, new)); // SIGTERM, then reaped
    }
    let (own, kids) = (
        cpu(libc::RUSAGE_SELF) - own0,
        cpu(libc::RUSAGE_CHILDREN) - kids0,
    );
    drop(current);
    let n = cli.reloads as f64;
    println!(
        "reload-floor: {} reloads every {:?}: supervisor {:.3} ms CPU per reload, servers reaped {:.3} ms per reload",
        cli.reloads,
        cli.every,
        own * 1000.0 / n,
        kids * 1000.0 / n
    );
    Ok(())
}

/// Starts a server, checks it on its gate, tells it to join, waits for
/// its READY=1.
fn start(cli: &Cli, notify: &UnixDatagram, path: &std::path::Path) -> Result<Server, String> {
    let child = Command::new(&cli.server)
        .args(["--listen", ADDR])
        .args(&cli.server_args)
        .env("NOTIFY_SOCKET", path)
        .env(gate::ENV, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", cli.server.display()))?;
    let child = Server(child);
    let gate = match heard(notify)? {
        gate::Message::Offer(addr) => addr,
        m => return Err(format!("expected the gate's offer, got {m:?}")),
    };
    check(gate, child.0.id())?;
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, gate::JOIN_SIGNAL) };
    match heard(notify)? {
        gate::Message::Ready => Ok(child),
        m => Err(format!("expected READY=1, got {m:?}")),
    }
}

/// The next message of the protocol on the notify socket.
fn heard(notify: &UnixDatagram) -> Result<gate::Message, String> {
    let mut buf = [0u8; 512];
    loop {
        let n = notify.recv(&mut buf).map_err(|e| format!("notify: {e}"))?;
        if let Some(m) = gate::Message::parse(&String::from_utf8_lossy(&buf[..n])) {
            return Ok(m);
        }
    }
}

/// `GET /` on a fresh connection must be answered by `pid`.
fn check(addr: std::net::SocketAddr, pid: u32) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("check: {e}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: floor\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("check: {e}"))?;
    let mut answer = Vec::with_capacity(4096);
    s.read_to_end(&mut answer)
        .map_err(|e| format!("check: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    match text.starts_with("HTTP/1.1 200") && body == pid.to_string() {
        true => Ok(()),
        false => Err(format!("the check was not answered by PID {pid}: {text:?}")),
    }
}

/// User plus system CPU of `who`, in seconds.
fn cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}
