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
//! 4. close the old one: hold; wait until no handshake is half done; the
//!    stop signal (SIGTERM unless `--stop-signal`);
//!    wait until its listeners left the group; release. The hold never
//!    outlasts `--hold-limit`. It is kept with `tcp_migrate_req=1` too: the
//!    kernel's migration alone lost requests under load (the soak);
//! 5. it drains in the background; at `--drain-timeout` it is SIGKILLed
//!    (held again for that instant if it still listens).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Error, Refusal, ReloadError};
use crate::generation::Generation;
use crate::health::Check;
use crate::kernel::{Kernel, Spawn};
use crate::logging::{log, ms, opt_ms};
use crate::notify::Notify;
use crate::swap::{AtClose, Swap};
use gate::Message;

/// How often the kernel is asked while new connections are held: every
/// millisecond, as the hold lasts until an answer.
const POLL: Every = Every {
    first: Duration::from_millis(1),
    most: Duration::from_millis(1),
};
/// How often a starting server is looked at (sock_diag, `/proc`): from 1 ms,
/// twice as long each turn up to 32 ms. No client waits meanwhile, and a
/// server's own word (`NOTIFY_SOCKET`) ends the wait at once.
const START_POLL: Every = Every {
    first: Duration::from_millis(1),
    most: Duration::from_millis(32),
};
/// The same while a server's own word is awaited (its gate offer or
/// `READY=1`, which wake the wait at once): the turns in between only ask
/// whether it exited, so they start farther apart.
const WORD_POLL: Every = Every {
    first: Duration::from_millis(8),
    most: Duration::from_millis(32),
};

/// How long a starting server is spared the costlier looks: it is not
/// looked for in the kernel when the last one offered the gate
/// (`RELOADER_GATE`: its offer ends the wait, a look before it finds
/// nothing) or said `READY=1` before it was found (its word comes after
/// its listen(): one look then finds it); one that stops saying so is
/// looked for from then on. A failed check does not look for listeners of
/// its own either (see `check`).
const START_QUIET: Duration = Duration::from_millis(100);

/// The pace of a wait's looks: `first` apart, doubling up to `most`.
#[derive(Clone, Copy)]
struct Every {
    first: Duration,
    most: Duration,
}
/// How long no handshake to the port may be half open, as sock_diag
/// reports it, before the old listener is closed, when nothing tells us
/// where a SYN that left the plug just before the hold is: a kernel without
/// the softnet backlog column, or a CPU backlog or ifb queue not seen empty
/// yet. The hold's own bound (`--hold-limit`) caps the whole wait.
const SETTLE_BLIND: Duration = Duration::from_millis(5);
/// The same once every CPU's receive backlog (see `softnet`) and every ifb
/// queue of the ingress paths was seen empty since the hold began: none,
/// one quiet look is enough. They are read before sock_diag is asked, so a
/// SYN that leaves one between the two is a handshake by the time sock_diag
/// looks; only one inside the microseconds of its own processing is unseen.
const SETTLE_SEEN: Duration = Duration::ZERO;

pub struct Options {
    /// The sockets every generation gets (`--strategy handoff`).
    pub handoff: Option<crate::handoff::Handoff>,
    /// The served ports (every `--addr`'s), watched and held as one.
    pub ports: Vec<u16>,
    pub check: Check,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    /// The longest one hold may last.
    pub hold_limit: Duration,
    /// What tells a generation to drain and exit (`--stop-signal`).
    pub stop_signal: i32,
    /// `--probation`: how long a checked new generation gets a share (of
    /// 10,000) of new connections before it takes over.
    pub probation: Option<(Duration, u32)>,
}

/// What the steps share: options, the strategy, the kernel's answers, how
/// a generation is started, what generations say.
struct Ctx {
    opts: Options,
    swap: Box<dyn Swap>,
    kernel: Box<dyn Kernel>,
    spawn: Box<dyn Spawn>,
    notify: Notify,
    /// Listeners known to be other generations' while one comes up: while
    /// the group holds only these, the new one has none, and its
    /// `/proc/PID/fd` need not be read (the costliest poll of a start).
    others: BTreeSet<u32>,
    /// The last generation to start offered the gate (see `START_QUIET`).
    gated: bool,
    /// The last generation to start said `READY=1` before it was found in
    /// the group: the next one is not looked for until its own word (or
    /// `START_QUIET`).
    readied: bool,
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
    /// Connections those SIGKILLs cut.
    pub cut_by_sigkill: u64,
}

/// How a new generation came up.
enum Started {
    /// Bound, not in the group; its check answers on this address. The
    /// member that said so (the leader, or a launcher's child).
    Gate(SocketAddr, u32),
    /// In the group already.
    Joined,
}

/// What closing a generation's listeners did.
struct Closed {
    held: Option<Duration>,
    /// Of the held time, how much passed before the signal (the wait for
    /// half-open handshakes to settle).
    before_signal: Option<Duration>,
    /// Connections a SIGKILL cut (those still open when it was sent).
    cut: usize,
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
    /// `--probation`: the share (percent) of new connections the new
    /// generation got over it, which it passed.
    pub canary_pct: Option<f64>,
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
        )?;
        if let Some(p) = self.canary_pct {
            write!(f, " probation passed with {p:.1}% of new connections")?;
        }
        Ok(())
    }
}

impl Ctx {
    /// The one shape of every wait: asks `step` every `every` until it
    /// answers; once `end` has passed, `step` is told so (`late`) and must
    /// answer (with what the deadline means: a warning, a refusal, a
    /// count). No wait is a bare sleep: each looks at the kernel or the
    /// server on every turn.
    async fn poll<T, E>(
        &mut self,
        end: Instant,
        every: Every,
        mut step: impl FnMut(&mut Ctx, bool) -> Result<Option<T>, E>,
    ) -> Result<T, E> {
        let mut gap = every.first;
        loop {
            let now = Instant::now();
            let late = now >= end;
            if let Some(answer) = step(self, late)? {
                return Ok(answer);
            }
            debug_assert!(!late, "a wait's step must answer once it is late");
            // Never past the deadline by more than the first gap; a
            // server's message wakes the wait at once.
            let sleep = gap.min(end.saturating_duration_since(now) + every.first);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.notify.arrived() => {}
            }
            gap = (gap * 2).min(every.most);
        }
    }

    /// Listeners on our ports (IPv4 and IPv6, one dump): inode and port. A
    /// failed query is an error.
    fn listening(&mut self) -> Result<BTreeMap<u32, u16>, Error> {
        self.kernel.on_port(&self.opts.ports)
    }

    /// Under handoff, a healthy server must serve the handed-over sockets
    /// only: one that bound its own (it ignores `LISTEN_FDS`, as nginx does)
    /// leaves ours unaccepted, and their clients hang.
    fn refuse_own_listeners(&mut self, gen: &Generation) -> Result<(), Refusal> {
        let Some(h) = &self.opts.handoff else {
            return Ok(());
        };
        let handed = h.inodes().map_err(|source| Error::Proc {
            pid: gen.pid,
            source,
        })?;
        let own: Vec<u32> = self
            .its_listeners(gen)?
            .into_keys()
            .filter(|i| !handed.contains(i))
            .collect();
        match own.is_empty() {
            true => Ok(()),
            false => Err(Refusal::OwnListeners { pid: gen.pid, own }),
        }
    }

    /// Whether `mine` (a generation's listeners, with their ports) has a
    /// listener on every served port: a server of several ports has
    /// joined only once it listens on each.
    fn on_every_port(&self, mine: &BTreeMap<u32, u16>) -> bool {
        self.opts
            .ports
            .iter()
            .all(|p| mine.values().any(|q| q == p))
    }

    /// The listeners in the group not known yet (not in `others`) that
    /// `gen` holds, with their ports: sock_diag's listeners among its open
    /// sockets (under handoff, every one it holds). While the group holds
    /// only known ones, there is none to look for, and its `/proc/PID/fd`
    /// is not read; else it is read until they are found.
    fn its_listeners(&mut self, gen: &Generation) -> Result<BTreeMap<u32, u16>, Error> {
        let mut all = self.listening()?;
        if all.is_empty() {
            return Ok(all);
        }
        let err = |source| Error::Proc {
            pid: gen.pid,
            source,
        };
        // Sockets every generation shares (handoff) are everyone's.
        if self.swap.at_close() != AtClose::Shared {
            all.retain(|i, _| !self.others.contains(i));
        }
        let unknown: BTreeSet<u32> = all.keys().copied().collect();
        let held = gen.holding(&unknown).map_err(err)?;
        all.retain(|i, _| held.contains(i));
        Ok(all)
    }

    /// Step 2: waits until `gen` is bound behind its gate or in the group.
    async fn wait_started(&mut self, gen: &mut Generation) -> Result<Started, Refusal> {
        let start = Instant::now();
        let end = start + self.opts.ready_timeout;
        let mut ready = false;
        // Under handoff it holds the shared sockets from its exec on: that
        // says nothing of whether it accepts (a server that speaks the gate
        // waits for its check first), so its word is awaited as after a
        // gate (see `check` for one that is late).
        let shared = self.swap.at_close() == AtClose::Shared;
        let quiet = self.gated || self.readied || shared;
        self.readied = false;
        let every = if quiet { WORD_POLL } else { START_POLL };
        self.poll(end, every, |ctx, late| {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: status.to_string(),
                });
            }
            while let Some((pid, note)) = ctx.notify.try_next() {
                match note {
                    _ if !gen.has(pid) => {} // another process: not its word
                    Message::Offer(addr) => return Ok(Some(Started::Gate(addr, pid))),
                    Message::Ready => ready = true,
                    Message::DrainCut(_) => {}
                }
            }
            if quiet && !ready && !late && start.elapsed() < START_QUIET {
                return Ok(None);
            }
            // Between fork and exec the child is still a copy of us, and a
            // reloader started from a file with capabilities is not
            // dumpable: its /proc/PID/fd is closed to us until the exec.
            // That refusal is retried; if it outlasts the ready timeout it
            // is the answer.
            let denied = match ctx.its_listeners(gen) {
                Ok(mine) if !mine.is_empty() && ctx.on_every_port(&mine) => {
                    // Asked again: a dump walks the listening hash bucket
                    // by bucket, so `mine` may lack a listener that was
                    // made in a bucket already walked (seen when each
                    // family was its own dump: a v4 listener missing, its
                    // v6 one found); every port is known to have one now,
                    // and a listener does not leave by itself.
                    gen.listeners = ctx.its_listeners(gen)?.into_keys().collect();
                    ctx.readied = ready;
                    return Ok(Some(Started::Joined));
                }
                Ok(_) => None,
                Err(Error::Proc { pid, source })
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Some(Error::Proc { pid, source })
                }
                Err(e) => return Err(e.into()),
            };
            if !late {
                return Ok(None);
            }
            Err(match denied {
                Some(e) => e.into(),
                None => Refusal::NoBind {
                    pid: gen.pid,
                    ports: ctx.opts.ports.clone(),
                    within: ctx.opts.ready_timeout,
                },
            })
        })
        .await
    }

    /// Step 3: checks `gen` until it passes, exits, or the ready timeout.
    ///
    /// Checked on the port, a server may offer the gate after all (under
    /// handoff it holds the shared sockets from its exec, so it was taken
    /// for started before its offer came): its offer is returned, for the
    /// gate's way.
    async fn check(
        &mut self,
        gen: &mut Generation,
        at: Option<SocketAddr>,
    ) -> Result<Option<(SocketAddr, u32)>, Refusal> {
        let started = Instant::now();
        let deadline = started + self.opts.ready_timeout;
        // The most telling failure: the new server's own answer.
        let mut telling: Option<String> = None;
        let mut gap = START_POLL.first;
        loop {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: format!("{status}, before it was healthy"),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let try_for = left.clamp(Duration::from_millis(10), Duration::from_secs(1));
            let is_new = |p: u32| gen.has(p);
            let Ctx { opts, swap, .. } = self;
            let mut probe = |src| swap.probe(Some(src)).map_err(|e| e.to_string());
            let once = opts
                .check
                .once(gen.pid, &is_new, at, try_for, &mut probe)
                .await;
            if at.is_none() {
                self.swap.probe(None)?;
            }
            match once {
                Ok(()) => return Ok(None),
                Err(f) if f.by_new => telling = Some(f.text),
                Err(f) if telling.is_none() && Instant::now() >= deadline => telling = Some(f.text),
                Err(_) => {}
            }
            if at.is_none() {
                while let Some((pid, note)) = self.notify.try_next() {
                    if let (true, Message::Offer(addr)) = (gen.has(pid), note) {
                        return Ok(Some((addr, pid)));
                    }
                }
            }
            // A check that hangs on a handed-over socket nobody accepts
            // (or that the old generation answers every time): the server
            // bound one of its own instead. Looked for once the start is
            // slower than a server's that took them.
            if started.elapsed() >= START_QUIET {
                self.refuse_own_listeners(gen)?;
            }
            if Instant::now() >= deadline {
                return Err(Refusal::Unhealthy {
                    pid: gen.pid,
                    within: self.opts.ready_timeout,
                    why: telling.unwrap_or_else(|| "no answer".into()),
                });
            }
            tokio::time::sleep(gap).await;
            gap = (gap * 2).min(START_POLL.most);
        }
    }

    /// A gated server passed its check: tell it (`by`) to join, and wait until its
    /// listeners are in the group.
    async fn join(&mut self, gen: &mut Generation, by: u32) -> Result<(), Refusal> {
        // To the member that offered the gate only: SIGUSR2 would end a
        // launcher shell.
        gen.signal_member(by, gate::JOIN_SIGNAL);
        let end = Instant::now() + self.opts.ready_timeout;
        let mut ready = false;
        self.poll(end, WORD_POLL, |ctx, late| {
            if let Some(status) = gen.exited() {
                return Err(Refusal::Exited {
                    pid: gen.pid,
                    status: format!("{status}, while joining"),
                });
            }
            while let Some((pid, note)) = ctx.notify.try_next() {
                ready |= gen.has(pid) && note == Message::Ready;
            }
            // READY=1 comes after its last listen(): only then are its
            // listeners worth looking for, and one look finds them all.
            if ready || late {
                let mine = ctx.its_listeners(gen)?;
                gen.listeners = mine.keys().copied().collect();
                if ready && !mine.is_empty() && ctx.on_every_port(&mine) {
                    return Ok(Some(()));
                }
            }
            match late {
                true => Err(Refusal::NoJoin {
                    pid: gen.pid,
                    within: ctx.opts.ready_timeout,
                }),
                false => Ok(None),
            }
        })
        .await
    }

    /// `--probation`: `gen` gets `share` (of 10,000) of new connections for
    /// `d`, and must stay up and pass its check (once a second) throughout.
    /// Returns the share (percent) of new connections it got.
    async fn probation(
        &mut self,
        gen: &mut Generation,
        (d, share): (Duration, u32),
    ) -> Result<f64, Refusal> {
        let before = self.swap.shares()?;
        self.swap.canary(share)?;
        log(&format!(
            "generation {} PID {}: probation for {} with {}% of new connections",
            gen.number,
            gen.pid,
            ms(d),
            share as f64 / 100.0
        ));
        let end = Instant::now() + d;
        let mut next_check = Instant::now() + Duration::from_secs(1);
        let outcome = loop {
            if let Some(status) = gen.exited() {
                break Err(Refusal::Exited {
                    pid: gen.pid,
                    status: format!("{status}, during its probation"),
                });
            }
            let now = Instant::now();
            if now >= end {
                break Ok(());
            }
            if now >= next_check {
                next_check = now + Duration::from_secs(1);
                let is_new = |p: u32| gen.has(p);
                let Ctx { opts, swap, .. } = self;
                let mut probe = |src| swap.probe(Some(src)).map_err(|e| e.to_string());
                let once = opts
                    .check
                    .once(gen.pid, &is_new, None, Duration::from_secs(1), &mut probe)
                    .await;
                self.swap.probe(None)?;
                if let Err(f) = once {
                    break Err(Refusal::Unhealthy {
                        pid: gen.pid,
                        within: d,
                        why: format!("{} (during its probation)", f.text),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let after = self.swap.shares()?;
        let (old, new) = (after.0 - before.0, after.1 - before.1);
        let pct = 100.0 * new as f64 / ((old + new).max(1)) as f64;
        log(&format!(
            "generation {} PID {}: probation {}: it got {new} of {} new connections ({pct:.1}%)",
            gen.number,
            gen.pid,
            if outcome.is_ok() { "passed" } else { "failed" },
            old + new,
        ));
        outcome.map(|()| pct)
    }

    /// Waits (until `end`) for no handshake to our port to be half done.
    async fn wait_no_half_open(&mut self, end: Instant) -> Result<(), Error> {
        let start = Instant::now();
        let mut quiet_since = None;
        // Per CPU: its backlog was seen empty since the hold began; and
        // the ifb queues, all at once.
        let mut drained: Vec<bool> = Vec::new();
        let mut ifb_drained = false;
        let ports = self.opts.ports.clone();
        self.poll(end, POLL, |ctx, late| {
            let now = Instant::now();
            // In this order: see the comment on SETTLE_SEEN.
            let backlogs = ctx.kernel.backlogs()?;
            let ifb = ctx.kernel.ifb_queued()?;
            let open = ctx.kernel.half_open(&ports)?;
            ifb_drained |= ifb.is_none_or(|n| n == 0);
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
            let settle = if seen && ifb_drained {
                SETTLE_SEEN
            } else {
                SETTLE_BLIND
            };
            let since = match open {
                0 => *quiet_since.get_or_insert(now),
                _ => {
                    quiet_since = None;
                    now
                }
            };
            if open == 0 && now.duration_since(since) >= settle {
                return Ok(Some(()));
            }
            if late {
                log(&format!(
                    "warning: {open} handshake(s) to ports {ports:?} not settled after {}; closing anyway (hold limit)",
                    ms(start.elapsed())
                ));
                return Ok(Some(()));
            }
            Ok(None)
        })
        .await
    }

    /// Waits (until `end`) until `gen`'s listeners have nothing in their
    /// accept queues. New SYNs are held meanwhile and no handshake is half
    /// done, so the queues only drain, as the server accepts. A server that
    /// does not take its queue before closing (nginx, HAProxy: only ours
    /// does) would otherwise reset every connection waiting there.
    async fn wait_accept_queue(&mut self, gen: &Generation, end: Instant) -> Result<(), Error> {
        let ports = self.opts.ports.clone();
        self.poll(end, POLL, |ctx, late| {
            let queued = ctx.kernel.accept_queued(&ports, &gen.listeners)?;
            if queued > 0 && late {
                log(&format!(
                    "warning: PID {} left {queued} connection(s) in its accept queue until the hold limit; closing anyway (the kernel resets them unless tcp_migrate_req=1)",
                    gen.pid
                ));
            }
            Ok((queued == 0 || late).then_some(()))
        })
        .await
    }

    /// Before a SIGKILL: waits (until `end`) until `gen` has no connection
    /// to our port open and none waits in an accept queue, so the kill cuts
    /// no request. New ones are held meanwhile. Returns how many it still
    /// had at `end`: the ones the kill cuts.
    async fn wait_idle(&mut self, gen: &Generation, end: Instant) -> Result<usize, Error> {
        let ports = self.opts.ports.clone();
        self.poll(end, POLL, |ctx, late| {
            let est = ctx.kernel.established(&ports)?;
            let own = gen.sockets().map_err(|source| Error::Proc {
                pid: gen.pid,
                source,
            })?;
            let open = est.iter().filter(|i| **i == 0 || own.contains(i)).count();
            Ok((open == 0 || late).then_some(open))
        })
        .await
    }

    /// Waits until none of `gen`'s listeners is in the group (or it
    /// exited), until `end`. Returns whether they left.
    async fn wait_left(
        &mut self,
        gen: &mut Generation,
        end: Instant,
        every: Every,
    ) -> Result<bool, Error> {
        self.poll(end, every, |ctx, late| {
            let listening = ctx.listening()?;
            if gen.exited().is_some() || !gen.listeners.iter().any(|i| listening.contains_key(i)) {
                return Ok(Some(true));
            }
            Ok(late.then_some(false))
        })
        .await
    }

    /// Step 4: takes `gen` out of the group with `signal`, holding new
    /// connections for that instant only (and never past the hold limit).
    async fn close(&mut self, gen: &mut Generation, signal: i32) -> Result<Closed, Error> {
        if self.swap.at_close() == AtClose::Shared {
            // The sockets stay open in the other generations: the group does
            // not change, nothing to hold or wait for.
            gen.signal(signal);
            gen.stopping_since.get_or_insert_with(Instant::now);
            return Ok(Closed {
                held: None,
                before_signal: None,
                left: true,
                cut: 0,
            });
        }
        if gen.exited().is_none() {
            // Every listener it has now, including any bound after it joined.
            match self.its_listeners(gen) {
                Ok(now) => gen.listeners.extend(now.into_keys()),
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
                cut: 0,
            });
        }
        // Held with tcp_migrate_req=1 too: the kernel's migration alone is
        // not lossless under load (docs/strategies.md).
        let hold = self.swap.at_close() == AtClose::Hold;
        let end = Instant::now()
            + if hold {
                self.opts.hold_limit
            } else {
                self.opts.drain_timeout
            };
        let mut held_at = Instant::now();
        let mut cut = 0;
        if self.swap.at_close() == AtClose::Steered {
            // It gets nothing new: what its accept queue has is served first.
            self.wait_accept_queue(gen, end).await?;
        }
        if hold {
            self.swap.hold()?;
            held_at = Instant::now();
            let mut settled = self.wait_no_half_open(end).await;
            if settled.is_ok() {
                settled = self.wait_accept_queue(gen, end).await;
            }
            if settled.is_ok() && signal == libc::SIGKILL {
                settled = self.wait_idle(gen, end).await.map(|open| cut = open);
            }
            if let Err(e) = settled {
                self.swap.release_quietly();
                return Err(e);
            }
        }
        let before_signal = hold.then(|| held_at.elapsed());
        gen.signal(signal);
        gen.stopping_since.get_or_insert_with(Instant::now);
        // Nothing held: no client waits for the answer, so it is asked
        // less often as the wait goes on.
        let every = if hold { POLL } else { START_POLL };
        let left = self.wait_left(gen, end, every).await;
        let held = if hold { self.swap.release()? } else { None };
        Ok(Closed {
            held,
            before_signal,
            left: left?,
            cut,
        })
    }
}

impl Supervisor {
    /// Starts the first generation and waits until it is healthy.
    pub async fn start(
        opts: Options,
        swap: Box<dyn Swap>,
        mut kernel: Box<dyn Kernel>,
        mut spawn: Box<dyn Spawn>,
        notify: Notify,
    ) -> Result<Self, Error> {
        // Ask once now: a kernel without tcp_diag must stop us here, not
        // make every reload unprotected.
        let found: BTreeSet<u32> = kernel.on_port(&opts.ports)?.into_keys().collect();
        // Generations a killed reloader left serving: adopted now, retired
        // with the same protocol once ours serves, so exactly one remains.
        let orphans = Self::adopt_orphans(&found)?;
        let mut swap = swap;
        if !orphans.is_empty() {
            // Steering: they keep every new connection until ours is healthy.
            swap.admit(&orphans.iter().collect::<Vec<_>>())?;
            swap.cut_over()?;
        }
        let first = spawn
            .spawn(1, &notify.path, opts.handoff.as_ref())
            .map_err(|source| Error::Spawn {
                command: spawn.name().to_owned(),
                source,
            })?;
        log(&format!("generation 1: started PID {}", first.pid));
        let mut sup = Supervisor {
            ctx: Ctx {
                opts,
                swap,
                kernel,
                spawn,
                notify,
                others: BTreeSet::new(),
                gated: false,
                readied: false,
            },
            current: first,
            pending: None,
            retiring: Vec::new(),
            next: 2,
            sigkills: 0,
            cut_by_sigkill: 0,
        };
        let t = Instant::now();
        let up = match Self::bring_up(&mut sup.ctx, &mut sup.current).await {
            Ok(how) => sup.ctx.swap.cut_over().map(|_| how).map_err(Refusal::from),
            Err(e) => Err(e),
        };
        match up {
            Ok(how) => {
                log(&format!(
                    "generation 1: PID {} healthy after {} ({how}, listeners {:?})",
                    sup.current.pid,
                    ms(t.elapsed()),
                    sup.current.listeners
                ));
                for mut orphan in orphans {
                    let stop = sup.ctx.opts.stop_signal;
                    let closed = sup.ctx.close(&mut orphan, stop).await;
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
                let drain = sup.ctx.opts.drain_timeout;
                if tokio::time::timeout(drain, sup.current.wait())
                    .await
                    .is_err()
                {
                    tracing::error!(
                        event = "left_running",
                        pid = sup.current.pid,
                        "processes of PID {}'s group outlived a SIGKILL by {drain:?} (not ours to signal?)",
                        sup.current.pid
                    );
                }
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
        let started = ctx.wait_started(gen).await?;
        ctx.gated = matches!(started, Started::Gate(..));
        match started {
            Started::Gate(addr, by) => {
                ctx.check(gen, Some(addr)).await?;
                ctx.join(gen, by).await?;
                ctx.refuse_own_listeners(gen)?;
                ctx.swap.admit(&[gen])?;
                Ok("checked on its gate, then joined")
            }
            Started::Joined => {
                ctx.swap.admit(&[gen])?;
                if let Some((addr, by)) = ctx.check(gen, None).await? {
                    ctx.gated = true;
                    ctx.check(gen, Some(addr)).await?;
                    ctx.join(gen, by).await?;
                    ctx.refuse_own_listeners(gen)?;
                    return Ok("checked on its gate (offered late), then joined");
                }
                ctx.refuse_own_listeners(gen)?;
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
        self.ctx.notify.clear();

        let failed = |source: Error| ReloadError::Failed { number, source };
        let ctx = &mut self.ctx;
        let spawned = ctx
            .spawn
            .spawn(number, &ctx.notify.path, ctx.opts.handoff.as_ref())
            .map_err(|source| {
                failed(Error::Spawn {
                    command: ctx.spawn.name().to_owned(),
                    source,
                })
            })?;
        self.ctx.others = self
            .retiring
            .iter()
            .chain(std::iter::once(&self.current))
            .flat_map(|g| g.listeners.iter().copied())
            .collect();
        let new = self.pending.insert(spawned);
        let mut canary_pct = None;
        let up = match Self::bring_up(&mut self.ctx, new).await {
            Ok(_) => match self.ctx.opts.probation {
                Some(p) => self.ctx.probation(new, p).await.map(|pct| {
                    canary_pct = Some(pct);
                }),
                None => Ok(()),
            }
            .and_then(|()| self.ctx.swap.cut_over().map_err(Refusal::from)),
            Err(why) => Err(why),
        };
        let t_up = t0.elapsed();
        if let Err(why) = up {
            let mut new = self.pending.take().expect("pending generation");
            let pid = new.pid;
            let dismissed = self.ctx.swap.dismiss();
            let stop = self.ctx.opts.stop_signal;
            let closed = self.ctx.close(&mut new, stop).await;
            self.retire(new, closed.as_ref().ok());
            dismissed.map_err(failed)?;
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
        // until it is out of the group. The new one's listeners are known
        // now too: only one the old bound since it joined needs a look.
        if let Some(new) = &self.pending {
            self.ctx.others.extend(new.listeners.iter().copied());
        }
        let stop = self.ctx.opts.stop_signal;
        let closed = self.ctx.close(&mut self.current, stop).await;
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
            canary_pct,
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

    /// The serving generation, and a wait that ends when `reap` has work:
    /// an old generation exited (the kernel's word: its pidfd), the first
    /// drain deadline passed, or `retry` passed while a failed release left
    /// the plug holding. It never ends while nothing drains or is held.
    pub fn watched(
        &mut self,
        retry: Duration,
    ) -> (
        &mut Generation,
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
    ) {
        let holding = self.ctx.swap.holding();
        let drain = self.ctx.opts.drain_timeout;
        let deadline = self
            .retiring
            .iter()
            .filter_map(|g| g.stopping_since)
            .min()
            .map(|t| t + drain);
        let mut exits: Vec<_> = self
            .retiring
            .iter_mut()
            .map(|g| Box::pin(g.wait()))
            .collect();
        let tend = async move {
            let any_exit = std::future::poll_fn(|cx| {
                use std::future::Future;
                match exits.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
                    true => std::task::Poll::Ready(()),
                    false => std::task::Poll::Pending,
                }
            });
            let until = |at: Option<Instant>| async move {
                match at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = any_exit => {}
                _ = until(deadline) => {}
                _ = until(holding.then(|| Instant::now() + retry)) => {}
            }
        };
        (&mut self.current, Box::pin(tend))
    }

    /// Reaps drained generations; SIGKILLs those past the drain timeout,
    /// holding for the instant if one still listens.
    pub async fn reap(&mut self) {
        if self.ctx.swap.holding() {
            match self.ctx.swap.release() {
                Ok(held) => tracing::warn!(
                    event = "release_retried",
                    "released the hold a failed release had left (held {})",
                    opt_ms(held)
                ),
                Err(e) => tracing::error!(
                    event = "release_failed",
                    "new connections are still held: release failed again: {e}"
                ),
            }
        }
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
                    connections_cut = closed.as_ref().map_or(0, |c| c.cut),
                    "generation {} PID {}: SIGKILLed at the drain timeout ({drain:?}); held {}; {}",
                    gen.number,
                    gen.pid,
                    match &closed {
                        Ok(c) => opt_ms(c.held),
                        Err(e) => format!("- ({e})"),
                    },
                    match &closed {
                        Ok(c) if c.cut > 0 =>
                            format!("drain cut: {} connection(s) still open were cut", c.cut),
                        Ok(_) => "no connection was open".to_owned(),
                        Err(_) => "connections unknown".to_owned(),
                    }
                );
                self.sigkills += 1;
                self.cut_by_sigkill += closed.as_ref().map_or(0, |c| c.cut as u64);
                continue;
            }
            i += 1;
        }
    }

    /// Stops every generation (the stop signal, SIGKILL at the drain timeout) and
    /// releases the plug. Safe after a reload was cancelled half-way.
    pub async fn shutdown(&mut self) {
        self.ctx.swap.release_quietly();
        let drain = self.ctx.opts.drain_timeout;
        let stop = self.ctx.opts.stop_signal;
        if let Some(mut p) = self.pending.take() {
            p.stop(stop);
            self.retiring.push(p);
        }
        self.current.stop(stop);
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

/// The reload protocol against fakes: scripted processes, a scripted
/// kernel, a strategy that records what it was asked. Every error path of
/// `reload()`, in milliseconds, without a VM.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{Exit, Process};
    use crate::health::{Failed, Scripted};
    use crate::listeners::DiagError;
    use std::sync::{Arc, Mutex};

    /// A fake process: what it owns, the signals it got, and when it exits.
    #[derive(Debug, Default)]
    struct Script {
        sockets: BTreeSet<u32>,
        /// Its wait status once it has exited (`exit(3)` code).
        exit_code: Option<i32>,
        signals: Vec<i32>,
        /// It exits (code 0, its sockets closed) on this signal; SIGKILL always.
        exits_on: Option<i32>,
    }

    /// A generation's process, played by its script.
    struct Played(u32, Arc<Mutex<Script>>);

    impl Process for Played {
        fn send(&mut self, sig: i32, _group: bool) {
            let mut s = self.1.lock().unwrap();
            s.signals.push(sig);
            if s.exit_code.is_none() && (sig == libc::SIGKILL || s.exits_on == Some(sig)) {
                s.exit_code = Some(0);
                s.sockets.clear();
            }
        }
        fn exited(&mut self) -> Option<Exit> {
            use std::os::unix::process::ExitStatusExt;
            let code = self.1.lock().unwrap().exit_code?;
            Some(Exit::Status(std::process::ExitStatus::from_raw(code << 8)))
        }
        fn wait(
            &mut self,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Exit>> + Send + '_>>
        {
            Box::pin(async move {
                loop {
                    if let Some(e) = self.exited() {
                        return Some(e);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        }
        fn members(&self) -> Vec<u32> {
            vec![self.0]
        }
        fn has(&self, pid: u32) -> bool {
            pid == self.0
        }
        fn sockets(&self) -> std::io::Result<BTreeSet<u32>> {
            Ok(self.1.lock().unwrap().sockets.clone())
        }
    }

    fn scripted(number: u64, pid: u32, script: Arc<Mutex<Script>>) -> Generation {
        Generation::on(number, pid, Box::new(Played(pid, script)))
    }

    /// What the fakes share; the test sets it and reads it back.
    #[derive(Default)]
    struct World {
        /// Every process started so far, by PID.
        procs: Vec<(u32, Arc<Mutex<Script>>)>,
        /// The next generation to start.
        next: Option<Script>,
        /// What the strategy was asked, in order ("hold", "release").
        swap: Vec<&'static str>,
        fail_release: bool,
        /// The plug holds (held, and no release succeeded since).
        holding: bool,
        fail_diag: bool,
        fail_half_open: bool,
        /// The port of each listener not on the first served port.
        port_of: BTreeMap<u32, u16>,
        /// The check of the new server: Ok, a failure, or it dies.
        check: CheckPlay,
    }

    #[derive(Default, Clone, Copy, PartialEq)]
    enum CheckPlay {
        #[default]
        Pass,
        Answer503,
        Die,
    }

    type W = Arc<Mutex<World>>;

    struct FakeKernel(W);
    impl Kernel for FakeKernel {
        /// Listening: the sockets of every process alive.
        fn on_port(&mut self, ports: &[u16]) -> Result<BTreeMap<u32, u16>, Error> {
            let w = self.0.lock().unwrap();
            if w.fail_diag {
                return Err(
                    DiagError::Kernel(std::io::Error::from_raw_os_error(libc::ENOENT)).into(),
                );
            }
            Ok(w.procs
                .iter()
                .flat_map(|(_, s)| s.lock().unwrap().sockets.clone())
                .map(|i| (i, w.port_of.get(&i).copied().unwrap_or(ports[0])))
                .collect())
        }
        fn half_open(&mut self, _: &[u16]) -> Result<usize, Error> {
            match self.0.lock().unwrap().fail_half_open {
                true => Err(DiagError::Io(std::io::Error::from_raw_os_error(libc::ENOBUFS)).into()),
                false => Ok(0),
            }
        }
        fn established(&mut self, _: &[u16]) -> Result<Vec<u32>, Error> {
            Ok(Vec::new())
        }
        fn accept_queued(&mut self, _: &[u16], _: &BTreeSet<u32>) -> Result<u32, Error> {
            Ok(0)
        }
        fn backlogs(&mut self) -> Result<Option<Vec<u64>>, Error> {
            Ok(Some(vec![0, 0]))
        }
        fn ifb_queued(&mut self) -> Result<Option<u64>, Error> {
            Ok(None)
        }
    }

    struct FakeSpawn(W);
    impl Spawn for FakeSpawn {
        fn name(&self) -> &str {
            "fake-server"
        }
        fn spawn(
            &mut self,
            number: u64,
            _: &std::path::Path,
            _: Option<&crate::handoff::Handoff>,
        ) -> std::io::Result<Generation> {
            let mut w = self.0.lock().unwrap();
            let script = Arc::new(Mutex::new(w.next.take().expect("a scripted generation")));
            let pid = 1000 + number as u32;
            w.procs.push((pid, script.clone()));
            Ok(scripted(number, pid, script))
        }
    }

    struct FakeSwap(W);
    impl Swap for FakeSwap {
        fn holding(&self) -> bool {
            self.0.lock().unwrap().holding
        }
        fn name(&self) -> &'static str {
            "fake"
        }
        fn at_close(&self) -> AtClose {
            AtClose::Hold
        }
        fn hold(&mut self) -> Result<(), qdisc::Error> {
            let mut w = self.0.lock().unwrap();
            w.swap.push("hold");
            w.holding = true;
            Ok(())
        }
        fn release(&mut self) -> Result<Option<Duration>, qdisc::Error> {
            let mut w = self.0.lock().unwrap();
            w.swap.push("release");
            w.holding &= w.fail_release;
            match w.fail_release {
                true => Err(qdisc::Error::Kernel {
                    op: "release plug 40: on lo".into(),
                    object: qdisc::Object::Qdisc("plug"),
                    errno: libc::EINVAL,
                    text: None,
                }),
                false => Ok(Some(Duration::from_millis(1))),
            }
        }
    }

    /// A server that listens on `socket` and exits on SIGTERM.
    fn server(socket: u32) -> Script {
        Script {
            sockets: [socket].into(),
            exits_on: Some(libc::SIGTERM),
            ..Script::default()
        }
    }

    /// A supervisor whose generation 1 (PID 1001, listener 101) serves.
    fn supervisor(w: &W) -> Supervisor {
        let first = Arc::new(Mutex::new(server(101)));
        w.lock().unwrap().procs.push((1001, first.clone()));
        let play = w.clone();
        let check = Check::Scripted(Scripted(Arc::new(move |pid| {
            let w = play.lock().unwrap();
            match w.check {
                CheckPlay::Pass => Ok(()),
                CheckPlay::Answer503 => Err(Failed {
                    by_new: true,
                    text: "the new server answered 503".into(),
                }),
                CheckPlay::Die => {
                    let (_, s) = w.procs.iter().find(|(p, _)| *p == pid).unwrap();
                    let mut s = s.lock().unwrap();
                    s.exit_code = Some(1);
                    s.sockets.clear();
                    Err(Failed {
                        by_new: false,
                        text: "connection refused".into(),
                    })
                }
            }
        })));
        let (_tx, notes) = tokio::sync::mpsc::unbounded_channel();
        Supervisor {
            ctx: Ctx {
                opts: Options {
                    handoff: None,
                    ports: vec![7000],
                    check,
                    ready_timeout: Duration::from_millis(100),
                    drain_timeout: Duration::from_millis(150),
                    hold_limit: Duration::from_millis(50),
                    stop_signal: libc::SIGTERM,
                    probation: None,
                },
                swap: Box::new(FakeSwap(w.clone())),
                kernel: Box::new(FakeKernel(w.clone())),
                spawn: Box::new(FakeSpawn(w.clone())),
                notify: Notify::from_channel("/nonexistent".into(), notes),
                others: BTreeSet::new(),
                gated: false,
                readied: false,
            },
            current: scripted(1, 1001, first),
            pending: None,
            retiring: Vec::new(),
            next: 2,
            sigkills: 0,
            cut_by_sigkill: 0,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn signals(w: &W, pid: u32) -> Vec<i32> {
        let w = w.lock().unwrap();
        let (_, s) = w.procs.iter().find(|(p, _)| *p == pid).unwrap();
        let v = s.lock().unwrap().signals.clone();
        v
    }

    fn world(next: Script) -> W {
        Arc::new(Mutex::new(World {
            next: Some(next),
            ..World::default()
        }))
    }

    #[test]
    fn a_reload_holds_only_the_old_listeners_close() {
        let w = world(server(102));
        let mut sup = supervisor(&w);
        let r = run(sup.reload()).expect("reload ok");
        assert_eq!((r.old_pid, r.new_pid, r.left), (1001, 1002, true));
        assert_eq!(sup.current.pid, 1002);
        assert_eq!(w.lock().unwrap().swap, ["hold", "release"]);
        assert_eq!(signals(&w, 1001), [libc::SIGTERM]);
        assert!(signals(&w, 1002).is_empty(), "the new server was signalled");
        assert!(r.held.is_some());
    }

    #[test]
    fn a_server_of_two_ports_has_started_only_once_it_listens_on_both() {
        // Generation 1 listens on 7000 (101) and 8443 (201); the next one
        // binds 7000 (102) only, and never 8443.
        let w = world(server(102));
        w.lock().unwrap().port_of = [(201, 8443), (202, 8443)].into();
        let mut sup = supervisor(&w);
        sup.ctx.opts.ports = vec![7000, 8443];
        w.lock().unwrap().procs[0]
            .1
            .lock()
            .unwrap()
            .sockets
            .insert(201);
        let e = run(sup.reload()).expect_err("rolled back");
        assert!(
            matches!(
                &e,
                ReloadError::RolledBack {
                    why: Refusal::NoBind { pid: 1002, .. },
                    ..
                }
            ),
            "{e}"
        );
        // With both ports it joins, and both of its listeners are known.
        w.lock().unwrap().next = Some(Script {
            sockets: [103, 202].into(),
            ..server(103)
        });
        let r = run(sup.reload()).expect("reload ok");
        assert_eq!(r.new_pid, 1003);
        assert_eq!(sup.current.listeners, [103, 202].into());
    }

    #[test]
    fn a_new_server_that_exits_at_once_rolls_back_and_holds_nothing() {
        let w = world(Script {
            exit_code: Some(7),
            ..Script::default()
        });
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("rolled back");
        assert!(
            matches!(
                &e,
                ReloadError::RolledBack {
                    why: Refusal::Exited { pid: 1002, .. },
                    old: 1001,
                    held: None,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(sup.current.pid, 1001);
        assert!(
            w.lock().unwrap().swap.is_empty(),
            "held for a server never in the group"
        );
        assert!(signals(&w, 1001).is_empty(), "the old server was signalled");
    }

    #[test]
    fn a_new_server_that_never_binds_rolls_back_at_the_ready_timeout() {
        let w = world(Script {
            exits_on: Some(libc::SIGTERM),
            ..Script::default()
        });
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("rolled back");
        assert!(
            matches!(
                &e,
                ReloadError::RolledBack {
                    why: Refusal::NoBind { pid: 1002, .. },
                    held: None,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(signals(&w, 1002), [libc::SIGTERM]);
        assert!(w.lock().unwrap().swap.is_empty());
        assert!(signals(&w, 1001).is_empty());
        assert_eq!(sup.current.pid, 1001);
    }

    #[test]
    fn a_failed_check_rolls_back_holding_only_the_new_servers_close() {
        let w = world(server(102));
        w.lock().unwrap().check = CheckPlay::Answer503;
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("rolled back");
        assert!(
            matches!(
                &e,
                ReloadError::RolledBack {
                    why: Refusal::Unhealthy { pid: 1002, .. },
                    held: Some(_),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("answered 503"), "{e}");
        // It had joined the group: its close is held like any other.
        assert_eq!(w.lock().unwrap().swap, ["hold", "release"]);
        assert_eq!(signals(&w, 1002), [libc::SIGTERM]);
        assert!(signals(&w, 1001).is_empty());
        assert_eq!(sup.current.pid, 1001);
    }

    #[test]
    fn a_new_server_that_dies_during_its_check_rolls_back() {
        let w = world(server(102));
        w.lock().unwrap().check = CheckPlay::Die;
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("rolled back");
        assert!(
            matches!(
                &e,
                ReloadError::RolledBack {
                    why: Refusal::Exited { pid: 1002, .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("before it was healthy"), "{e}");
        assert!(
            w.lock().unwrap().swap.is_empty(),
            "nothing left the group but the dead"
        );
        assert_eq!(sup.current.pid, 1001);
    }

    #[test]
    fn a_failed_sock_diag_query_fails_the_reload_and_keeps_the_new_server_supervised() {
        let w = world(server(102));
        w.lock().unwrap().fail_diag = true;
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("failed");
        assert!(
            matches!(
                &e,
                ReloadError::Failed {
                    source: Error::Diag(DiagError::Kernel(_)),
                    ..
                }
            ),
            "{e}"
        );
        // Never taken as "no listeners": nothing was held or signalled on
        // that basis, and the new server is not dropped unsupervised.
        assert!(w.lock().unwrap().swap.is_empty());
        assert!(signals(&w, 1001).is_empty());
        assert_eq!(sup.current.pid, 1001);
        assert!(
            sup.retiring.iter().any(|g| g.pid == 1002),
            "the new server was let go"
        );
    }

    #[test]
    fn a_failed_release_is_an_error_not_a_success() {
        let w = world(server(102));
        w.lock().unwrap().fail_release = true;
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("failed");
        assert!(
            matches!(
                &e,
                ReloadError::Failed {
                    source: Error::Plug(_),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(w.lock().unwrap().swap, ["hold", "release"]);
        // The old one left the group: the new one serves, the old one drains.
        assert_eq!(sup.current.pid, 1002);
        assert!(sup.retiring.iter().any(|g| g.pid == 1001));
        // Not left holding: the next tending retries until the kernel agrees.
        let due = run(async {
            let (_, tend) = sup.watched(Duration::from_millis(1));
            tokio::time::timeout(Duration::from_secs(5), tend).await
        });
        assert!(due.is_ok(), "a plug left holding makes reap due");
        run(sup.reap());
        assert_eq!(w.lock().unwrap().swap, ["hold", "release", "release"]);
        w.lock().unwrap().fail_release = false;
        run(sup.reap());
        assert_eq!(
            w.lock().unwrap().swap,
            ["hold", "release", "release", "release"]
        );
        assert!(!w.lock().unwrap().holding);
    }

    #[test]
    fn a_failed_half_open_query_releases_before_failing() {
        let w = world(server(102));
        w.lock().unwrap().fail_half_open = true;
        let mut sup = supervisor(&w);
        let e = run(sup.reload()).expect_err("failed");
        assert!(
            matches!(
                &e,
                ReloadError::Failed {
                    source: Error::Diag(DiagError::Io(_)),
                    ..
                }
            ),
            "{e}"
        );
        // Never left holding; the old server was not closed blind.
        assert_eq!(w.lock().unwrap().swap, ["hold", "release"]);
        assert!(signals(&w, 1001).is_empty());
    }

    #[test]
    fn an_old_server_deaf_to_sigterm_is_held_at_most_the_limit_then_killed() {
        let w = world(server(102));
        let mut sup = supervisor(&w);
        // Generation 1 ignores SIGTERM.
        w.lock().unwrap().procs[0].1.lock().unwrap().exits_on = None;
        let t = Instant::now();
        let r = run(sup.reload()).expect("reload ok");
        assert!(!r.left, "the deaf server cannot have left");
        assert!(
            t.elapsed() < Duration::from_millis(50 + 100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(w.lock().unwrap().swap, ["hold", "release"]);
        // At the drain timeout: SIGKILL, held again for that instant.
        run(async {
            tokio::time::sleep(Duration::from_millis(160)).await;
            sup.reap().await;
        });
        assert_eq!(signals(&w, 1001), [libc::SIGTERM, libc::SIGKILL]);
        assert_eq!(sup.sigkills, 1);
        assert_eq!(
            w.lock().unwrap().swap,
            ["hold", "release", "hold", "release"]
        );
        assert!(sup.retiring.is_empty());
    }
}
