//! The supervisor: keeps one healthy generation serving and replaces it on
//! request. New connections are held only while the SO_REUSEPORT group
//! loses a listener, because that is the only moment the kernel can reset
//! a client (a join sends SYNs to a listener that queues them; a close resets
//! its queue and half-open handshakes).
//!
//! A reload:
//!
//! 1. start the new generation; nothing is held;
//! 2. wait until it is bound: a cooperative server (`X_RELOADER_GATE`) has
//!    bound without `listen()`, so it is not in the group yet; any other
//!    server is in the group (`READY=1` from its PID, or sock_diag shows a
//!    listener among its open sockets);
//! 3. check it: on its gate address (it has no client yet; SIGUSR2 then
//!    makes it join), or on the served port. A failure rolls back: the new
//!    one is closed as in 4 and the old one keeps serving;
//! 4. close the old one: hold; wait until no handshake is half done; SIGTERM;
//!    wait until its listeners left the group; release. The hold never
//!    outlasts `--hold-limit`, and is skipped when `tcp_migrate_req=1`;
//! 5. it drains in the background; at `--drain-timeout` it is SIGKILLed
//!    (held again for that instant if it still listens).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Error, Refusal, ReloadError};
use crate::generation::Generation;
use crate::health::Check;
use crate::listeners::Listeners;
use crate::notify::{Note, Notify};
use crate::swap::Swap;

/// How often the kernel is asked while waiting on it.
const POLL: Duration = Duration::from_millis(1);
/// How often a starting server's sockets are looked at (reads `/proc`).
const START_POLL: Duration = Duration::from_millis(2);
/// How long no handshake to the port may be half open, as sock_diag
/// reports it, before the old listener is closed, when nothing tells us
/// where a SYN that left the plug just before the hold is: a kernel without
/// the softnet backlog column, a CPU whose backlog was not seen empty yet,
/// an ifb's queue (`--ingress`), which no counter shows. The hold's own
/// bound (`--hold-limit`) caps the whole wait.
pub const SETTLE_BLIND: Duration = Duration::from_millis(5);
/// The same once every CPU's receive backlog was seen empty since the hold
/// began (see `softnet`): none, one quiet look is enough. The backlogs are
/// read before sock_diag is asked, so a SYN that leaves a backlog between
/// the two is a handshake by the time sock_diag looks; only one inside the
/// microseconds of its own processing is unseen.
pub const SETTLE_SEEN: Duration = Duration::ZERO;

pub struct Options {
    pub command: Vec<String>,
    /// The sockets every generation gets (`--strategy handoff`).
    pub handoff: Option<crate::handoff::Handoff>,
    pub port: u16,
    pub check: Check,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// The longest one hold may last.
    pub hold_limit: Duration,
    /// How long quiet must last before a close (`SETTLE_SEEN` or
    /// `SETTLE_BLIND`).
    pub settle: Duration,
}

/// What the steps share: options, the strategy, the kernel's answers.
struct Ctx {
    opts: Options,
    swap: Box<dyn Swap>,
    diag: Listeners,
    notify: Notify,
}

pub struct Supervisor {
    ctx: Ctx,
    pub current: Generation,
    /// A generation a reload is bringing up: kept here, so that no exit
    /// path (error, SIGTERM mid-reload) leaves it running unsupervised.
    pending: Option<Generation>,
    /// Old generations out of the group, draining.
    retiring: Vec<Generation>,
    next: u64,
    /// Generations SIGKILLed at the drain deadline so far.
    pub sigkills: u64,
}

/// How a new generation came up.
enum Started {
    /// Bound, not in the group; its check answers on this address.
    Gate(SocketAddr),
    /// In the group already.
    Joined,
}

/// What closing a generation's listeners did.
struct Closed {
    held: Option<Duration>,
    /// Of the held time, how much passed before the signal (the wait for
    /// half-open handshakes to settle).
    before_signal: Option<Duration>,
    /// Its listeners left the group within the bound.
    left: bool,
}

/// A reload that replaced the serving generation; its `Display` is the
/// log line.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub number: u64,
    pub old_pid: u32,
    pub new_pid: u32,
    /// Start to joined and healthy.
    pub up: Duration,
    /// How long new connections were held (`None`: nothing was held).
    pub held: Option<Duration>,
    pub before_signal: Option<Duration>,
    /// The old listeners left within the hold limit.
    pub left: bool,
    pub total: Duration,
    pub strategy: &'static str,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reload #{}: ok, PID {} -> {} | up {} | held {}{}{} | total {} [{}]",
            self.number,
            self.old_pid,
            self.new_pid,
            ms(self.up),
            opt_ms(self.held),
            self.before_signal
                .map_or(String::new(), |d| format!(" ({} before the signal)", ms(d))),
            if self.left {
                ""
            } else {
                " (hold limit reached: old listener still open, SIGKILL at the drain timeout)"
            },
            ms(self.total),
            self.strategy,
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

pub fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), ms)
}

/// One line for the operator (an event without fields; see `logging`).
pub fn log(msg: &str) {
    tracing::info!("{msg}");
}

/// Whether `net.ipv4.tcp_migrate_req` is on in our network namespace (the
/// server's). Absent (Linux < 5.14) means off.
pub fn migrate_req() -> Result<bool, Error> {
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(s) => Ok(s.trim() == "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Sysctl(e)),
    }
}

impl Ctx {
    /// Listeners on our port (IPv4 and IPv6). A failed query is an error.
    fn listening(&mut self) -> Result<BTreeSet<u32>, Error> {
        Ok(self.diag.on_port(self.opts.port)?)
    }

    /// `gen`'s listeners in the group: sock_diag's listeners that are among
    /// its open sockets.
    fn its_listeners(&mut self, gen: &Generation) -> Result<BTreeSet<u32>, Error> {
        let all = self.listening()?;
        if all.is_empty() {
            return Ok(all);
        }
        let own = gen.sockets().map_err(|source| Error::Proc {
            pid: gen.pid,
            source,
        })?;
        Ok(all.intersection(&own).copied().collect())
    }

    /// Step 2: waits until `gen` is bound behind its gate or in the group.
    async fn wait_started(&mut self, gen: &mut Generation) -> Result<Started, Refusal> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: status.to_string(),
                });
            }
            while let Ok((pid, note)) = self.notify.notes.try_recv() {
                match note {
                    _ if pid != gen.pid => {} // another process: not its word
                    Note::Gate(addr) => return Ok(Started::Gate(addr)),
                    Note::Ready => {}
                }
            }
            // Between fork and exec the child is still a copy of us, and a
            // reloader started from a file with capabilities is not
            // dumpable: its /proc/PID/fd is closed to us until the exec.
            // That refusal is retried; if it outlasts the ready timeout it
            // is the answer.
            let denied = match self.its_listeners(gen) {
                Ok(mine) if !mine.is_empty() => {
                    gen.listeners = mine;
                    return Ok(Started::Joined);
                }
                Ok(_) => None,
                Err(Error::Proc { pid, source })
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Some(Error::Proc { pid, source })
                }
                Err(e) => return Err(e.into()),
            };
            if Instant::now() >= deadline {
                return Err(match denied {
                    Some(e) => e.into(),
                    None => Refusal::NoBind {
                        pid: gen.pid,
                        port: self.opts.port,
                        within: self.opts.ready_timeout,
                    },
                });
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Step 3: checks `gen` until it passes, exits, or the ready timeout.
    async fn check(&mut self, gen: &mut Generation, at: Option<SocketAddr>) -> Result<(), Refusal> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        // The most telling failure: the new server's own answer.
        let mut telling: Option<String> = None;
        loop {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: format!("{status}, before it was healthy"),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let try_for = left.clamp(Duration::from_millis(10), Duration::from_secs(1));
            match self.opts.check.once(gen.pid, at, try_for).await {
                Ok(()) => return Ok(()),
                Err(f) if f.by_new => telling = Some(f.text),
                Err(f) if telling.is_none() && Instant::now() >= deadline => telling = Some(f.text),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Refusal::Unhealthy {
                    pid: gen.pid,
                    within: self.opts.ready_timeout,
                    why: telling.unwrap_or_else(|| "no answer".into()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A gated server passed its check: tell it to join, and wait until its
    /// listeners are in the group.
    async fn join(&mut self, gen: &mut Generation) -> Result<(), Refusal> {
        gen.signal(libc::SIGUSR2);
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut ready = false;
        loop {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: format!("{status}, while joining"),
                });
            }
            while let Ok((pid, note)) = self.notify.notes.try_recv() {
                ready |= pid == gen.pid && note == Note::Ready;
            }
            let mine = self.its_listeners(gen)?;
            // READY=1 comes after its last listen(); without it, one is enough.
            if ready && !mine.is_empty() {
                gen.listeners = mine;
                return Ok(());
            }
            if Instant::now() >= deadline {
                gen.listeners = mine;
                return Err(Refusal::NoJoin {
                    pid: gen.pid,
                    within: self.opts.ready_timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (until `end`) for no handshake to our port to be half done.
    async fn wait_no_half_open(&mut self, end: Instant) -> Result<(), Error> {
        let start = Instant::now();
        let mut quiet_since = None;
        // Per CPU: its backlog was seen empty since the hold began.
        let mut drained: Vec<bool> = Vec::new();
        loop {
            let now = Instant::now();
            // In this order: see the comment on SETTLE_SEEN.
            let backlogs = crate::softnet::backlogs().map_err(Error::Softnet)?;
            let open = self.diag.half_open(self.opts.port)?;
            let seen = match backlogs {
                Some(b) => {
                    drained.resize(b.len(), false);
                    for (d, len) in drained.iter_mut().zip(b) {
                        *d |= len == 0;
                    }
                    drained.iter().all(|d| *d)
                }
                None => false,
            };
            let settle = if seen { self.opts.settle } else { SETTLE_BLIND };
            let since = match open {
                0 => *quiet_since.get_or_insert(now),
                _ => {
                    quiet_since = None;
                    now
                }
            };
            if open == 0 && now.duration_since(since) >= settle {
                return Ok(());
            }
            if now >= end {
                log(&format!(
                    "warning: {open} handshake(s) to port {} not settled after {}; closing anyway (hold limit)",
                    self.opts.port,
                    ms(start.elapsed())
                ));
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Before a SIGKILL: waits (until `end`) until `gen` has no connection
    /// to our port open and none waits in an accept queue, so the kill cuts
    /// no request. New ones are held meanwhile.
    async fn wait_idle(&mut self, gen: &Generation, end: Instant) -> Result<(), Error> {
        while Instant::now() < end {
            let est = self.diag.established(self.opts.port)?;
            let own = gen.sockets().map_err(|source| Error::Proc {
                pid: gen.pid,
                source,
            })?;
            if !est.iter().any(|i| *i == 0 || own.contains(i)) {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Waits until none of `gen`'s listeners is in the group (or it
    /// exited), until `end`. Returns whether they left.
    async fn wait_left(&mut self, gen: &mut Generation, end: Instant) -> Result<bool, Error> {
        loop {
            if gen.exited().is_some() {
                return Ok(true);
            }
            if gen.listeners.is_disjoint(&self.listening()?) {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Step 4: takes `gen` out of the group with `signal`, holding new
    /// connections for that instant only (and never past the hold limit).
    async fn close(&mut self, gen: &mut Generation, signal: i32) -> Result<Closed, Error> {
        if self.swap.shares_listeners() {
            // The sockets stay open in the other generations: the group does
            // not change, nothing to hold or wait for.
            gen.signal(signal);
            gen.stopping_since.get_or_insert_with(Instant::now);
            return Ok(Closed {
                held: None,
                before_signal: None,
                left: true,
            });
        }
        if gen.exited().is_none() {
            // Every listener it has now, including any bound after it joined.
            match self.its_listeners(gen) {
                Ok(now) => gen.listeners.extend(now),
                // Not exec'd yet (see `wait_started`): still a copy of us,
                // which holds no listener on the port (ours are close-on-exec
                // and the handoff strategy returned above), so not in the group.
                Err(Error::Proc { source, .. })
                    if source.kind() == std::io::ErrorKind::PermissionDenied
                        && gen.listeners.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
        if gen.exited().is_some() || gen.listeners.is_empty() {
            // Not in the group: nothing to protect.
            gen.signal(signal);
            gen.stopping_since.get_or_insert_with(Instant::now);
            return Ok(Closed {
                held: None,
                before_signal: None,
                left: true,
            });
        }
        let hold = self.swap.protects() && !migrate_req()?;
        let end = Instant::now()
            + if hold {
                self.opts.hold_limit
            } else {
                self.opts.drain_timeout
            };
        let mut held_at = Instant::now();
        if hold {
            self.swap.hold()?;
            held_at = Instant::now();
            let mut settled = self.wait_no_half_open(end).await;
            if settled.is_ok() && signal == libc::SIGKILL {
                settled = self.wait_idle(gen, end).await;
            }
            if let Err(e) = settled {
                self.swap.release_quietly();
                return Err(e);
            }
        }
        let before_signal = hold.then(|| held_at.elapsed());
        gen.signal(signal);
        gen.stopping_since.get_or_insert_with(Instant::now);
        let left = self.wait_left(gen, end).await;
        let held = if hold { self.swap.release()? } else { None };
        Ok(Closed {
            held,
            before_signal,
            left: left?,
        })
    }
}

impl Supervisor {
    /// Starts the first generation and waits until it is healthy.
    pub async fn start(opts: Options, swap: Box<dyn Swap>, notify: Notify) -> Result<Self, Error> {
        let mut diag = Listeners::open()?;
        // Ask once now: a kernel without tcp_diag must stop us here, not
        // make every reload unprotected.
        let found = diag.on_port(opts.port)?;
        // Generations a killed reloader left serving: adopted now, retired
        // with the same protocol once ours serves, so exactly one remains.
        let orphans = Self::adopt_orphans(&found)?;
        let first = Generation::spawn(1, &opts.command, &notify.path, opts.handoff.as_ref())
            .map_err(|source| Error::Spawn {
                command: opts.command[0].clone(),
                source,
            })?;
        log(&format!("generation 1: started PID {}", first.pid));
        let mut sup = Supervisor {
            ctx: Ctx {
                opts,
                swap,
                diag,
                notify,
            },
            current: first,
            pending: None,
            retiring: Vec::new(),
            next: 2,
            sigkills: 0,
        };
        let t = Instant::now();
        match Self::bring_up(&mut sup.ctx, &mut sup.current).await {
            Ok(how) => {
                log(&format!(
                    "generation 1: PID {} healthy after {} ({how}, listeners {:?})",
                    sup.current.pid,
                    ms(t.elapsed()),
                    sup.current.listeners
                ));
                for mut orphan in orphans {
                    let closed = sup.ctx.close(&mut orphan, libc::SIGTERM).await;
                    log(&format!(
                        "retired orphaned PID {}: held {}",
                        orphan.pid,
                        match &closed {
                            Ok(c) => opt_ms(c.held),
                            Err(e) => format!("- ({e})"),
                        }
                    ));
                    sup.retire(orphan, closed.as_ref().ok());
                    closed?;
                }
                Ok(sup)
            }
            Err(e) => {
                sup.current.signal(libc::SIGKILL);
                let _ = sup.current.wait().await;
                Err(Error::FirstUnhealthy(Box::new(e)))
            }
        }
    }

    /// Finds who owns listeners already on our port and adopts them.
    fn adopt_orphans(found: &BTreeSet<u32>) -> Result<Vec<Generation>, Error> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let owners = crate::generation::owners_of(found).map_err(Error::Owners)?;
        // Our own sockets (the handoff strategy's) are not orphans.
        let mut owned =
            crate::generation::owned_sockets(std::process::id()).map_err(|source| Error::Proc {
                pid: std::process::id(),
                source,
            })?;
        let mut out = Vec::new();
        for (pid, listeners) in owners {
            owned.extend(listeners.iter().copied());
            log(&format!(
                "found PID {pid} listening on our port (listeners {listeners:?}), left by an earlier reloader: adopting it"
            ));
            out.push(
                Generation::adopt(0, pid, listeners)
                    .map_err(|source| Error::Adopt { pid, source })?,
            );
        }
        if let Some(&inode) = found.difference(&owned).next() {
            return Err(Error::Stray { inode });
        }
        Ok(out)
    }

    /// Steps 2 and 3 for `gen`. On success it is in the group and healthy.
    async fn bring_up(ctx: &mut Ctx, gen: &mut Generation) -> Result<&'static str, Refusal> {
        match ctx.wait_started(gen).await? {
            Started::Gate(addr) => {
                ctx.check(gen, Some(addr)).await?;
                ctx.join(gen).await?;
                Ok("checked on its gate, then joined")
            }
            Started::Joined => {
                ctx.check(gen, None).await?;
                Ok("joined, then checked on the port")
            }
        }
    }

    /// One reload. `Ok` with what it did when the new generation took over;
    /// `Err` with the reason when it rolled back (the old one still serves).
    pub async fn reload(&mut self) -> Result<Reloaded, ReloadError> {
        self.reap().await;
        let t0 = Instant::now();
        let number = self.next;
        self.next += 1;
        let old_pid = self.current.pid;
        // Readiness messages left over from earlier generations are stale.
        while self.ctx.notify.notes.try_recv().is_ok() {}

        let failed = |source: Error| ReloadError::Failed { number, source };
        let spawned = Generation::spawn(
            number,
            &self.ctx.opts.command,
            &self.ctx.notify.path,
            self.ctx.opts.handoff.as_ref(),
        )
        .map_err(|source| {
            failed(Error::Spawn {
                command: self.ctx.opts.command[0].clone(),
                source,
            })
        })?;
        let new = self.pending.insert(spawned);
        let up = Self::bring_up(&mut self.ctx, new).await;
        let t_up = t0.elapsed();
        if let Err(why) = up {
            let mut new = self.pending.take().expect("pending generation");
            let pid = new.pid;
            let closed = self.ctx.close(&mut new, libc::SIGTERM).await;
            self.retire(new, closed.as_ref().ok());
            let held = closed.map_err(failed)?.held;
            return Err(ReloadError::RolledBack {
                number,
                pid,
                why,
                old: old_pid,
                held,
            });
        }

        // Step 4 on the current generation, which stays reachable in `self`
        // until it is out of the group.
        let closed = self.ctx.close(&mut self.current, libc::SIGTERM).await;
        let new = self.pending.take().expect("pending generation");
        let old = std::mem::replace(&mut self.current, new);
        self.retire(old, closed.as_ref().ok());
        let closed = closed.map_err(failed)?;
        Ok(Reloaded {
            number,
            old_pid,
            new_pid: self.current.pid,
            up: t_up,
            held: closed.held,
            before_signal: closed.before_signal,
            left: closed.left,
            total: t0.elapsed(),
            strategy: self.ctx.swap.name(),
        })
    }

    /// Keeps a stopped generation until it exits (see `reap`).
    fn retire(&mut self, mut gen: Generation, closed: Option<&Closed>) {
        if closed.is_some_and(|c| !c.left) {
            tracing::warn!(
                event = "hold_limit",
                generation = gen.number,
                pid = gen.pid,
                "generation {} PID {}: still listening after the hold limit ({:?}); released the hold, it will be SIGKILLed at the drain timeout",
                gen.number,
                gen.pid,
                self.ctx.opts.hold_limit
            );
        }
        gen.stopping_since.get_or_insert_with(Instant::now);
        self.retiring.push(gen);
    }

    /// Whether old generations are still draining.
    pub fn draining(&self) -> bool {
        !self.retiring.is_empty()
    }

    /// Reaps drained generations; SIGKILLs those past the drain timeout,
    /// holding for the instant if one still listens.
    pub async fn reap(&mut self) {
        let drain = self.ctx.opts.drain_timeout;
        let mut i = 0;
        while i < self.retiring.len() {
            let gen = &mut self.retiring[i];
            if gen.exited().is_some() {
                self.retiring.swap_remove(i);
                continue;
            }
            if gen.stopping_since.is_some_and(|t| t.elapsed() >= drain) {
                let mut gen = self.retiring.swap_remove(i);
                let closed = self.ctx.close(&mut gen, libc::SIGKILL).await;
                let _ = gen.wait().await;
                tracing::warn!(
                    event = "sigkill",
                    generation = gen.number,
                    pid = gen.pid,
                    held_ms = closed
                        .as_ref()
                        .ok()
                        .and_then(|c| c.held)
                        .map(|d| d.as_secs_f64() * 1e3),
                    "generation {} PID {}: SIGKILLed at the drain timeout ({drain:?}); held {}",
                    gen.number,
                    gen.pid,
                    match &closed {
                        Ok(c) => opt_ms(c.held),
                        Err(e) => format!("- ({e})"),
                    }
                );
                self.sigkills += 1;
                continue;
            }
            i += 1;
        }
    }

    /// Stops every generation (SIGTERM, SIGKILL at the drain timeout) and
    /// releases the plug. Safe after a reload was cancelled half-way.
    pub async fn shutdown(&mut self) {
        self.ctx.swap.release_quietly();
        let drain = self.ctx.opts.drain_timeout;
        if let Some(mut p) = self.pending.take() {
            p.stop();
            self.retiring.push(p);
        }
        self.current.stop();
        let mut all: Vec<&mut Generation> = self.retiring.iter_mut().collect();
        all.push(&mut self.current);
        for gen in all {
            let (status, killed) = gen.wait_or_kill(drain).await;
            log(&format!(
                "stopped generation {} PID {}: {}{}",
                gen.number,
                gen.pid,
                status.map_or("unknown status".into(), |s| s.to_string()),
                if killed {
                    " (SIGKILL at the drain timeout)"
                } else {
                    ""
                }
            ));
        }
        self.retiring.clear();
        self.ctx.swap.release_quietly();
    }
}
