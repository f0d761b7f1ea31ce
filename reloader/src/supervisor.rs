//! The supervisor: keeps one healthy generation serving and replaces it on
//! request, following a protocol that leaves no moment uncovered:
//!
//! 1. hold (plug) before the new server can bind;
//! 2. start it; wait until its listener is in the SO_REUSEPORT group, as the
//!    kernel (sock_diag) or the server (`READY=1`) says;
//! 3. check it serves (its PID answers, or `--health`) while still holding,
//!    so a server that fails never serves a client; release;
//! 4. hold; wait until no handshake is half done (sock_diag); SIGTERM the
//!    old server; wait until its listener has left the group (sock_diag);
//!    release;
//! 5. wait for the old process to exit, SIGKILL at the drain timeout.
//!
//! A new server that exits, never listens or fails its check is stopped the
//! same careful way, and the old one keeps serving (rollback).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::generation::Generation;
use crate::health::Check;
use crate::listeners::Listeners;
use crate::notify::Notify;
use crate::swap::Swap;

/// How often the kernel is asked about listeners while waiting on it.
const POLL: Duration = Duration::from_millis(1);
/// The longest we wait for half-open handshakes to complete before closing
/// a listener (a client that never sends its ACK must not stall a reload).
const HALF_OPEN_WAIT: Duration = Duration::from_millis(500);
/// Consecutive polls (POLL apart) that must see no half-open handshake.
const SETTLE_POLLS: u32 = 5;

pub struct Options {
    pub command: Vec<String>,
    pub port: u16,
    pub check: Check,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
}

pub struct Supervisor {
    opts: Options,
    swap: Box<dyn Swap>,
    listeners: Option<Listeners>,
    notify: Notify,
    /// The server speaks sd_notify (learned from the first generation).
    notify_supported: bool,
    /// Keep the plug closed through the health check (its connections come
    /// from an address the default plug lets through).
    check_through_plug: bool,
    pub current: Generation,
    next: u64,
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

pub fn log(msg: &str) {
    eprintln!("reloader: {msg}");
}

impl Supervisor {
    /// Starts the first generation and waits until it is healthy.
    pub async fn start(
        opts: Options,
        swap: Box<dyn Swap>,
        notify: Notify,
    ) -> Result<Supervisor, String> {
        let listeners = match Listeners::open() {
            Ok(l) => Some(l),
            Err(e) => {
                log(&format!(
                    "warning: sock_diag unavailable ({e}); relying on READY=1 and process exit"
                ));
                None
            }
        };
        let first = Generation::spawn(&opts.command, &notify.path)
            .map_err(|e| format!("cannot start {:?}: {e}", opts.command[0]))?;
        log(&format!("generation 1: started PID {}", first.pid));
        let mut sup = Supervisor {
            opts,
            swap,
            listeners,
            notify,
            notify_supported: false,
            check_through_plug: false,
            current: first,
            next: 2,
        };
        sup.check_through_plug = sup.opts.check.bypasses_default_plug();
        let t = Instant::now();
        if let Err(e) = sup.wait_healthy_current(None).await {
            sup.current.signal(libc::SIGKILL);
            let _ = sup.current.child.wait().await;
            return Err(format!("the first server never became healthy: {e}"));
        }
        // Learn whether it speaks sd_notify, and which sockets are its own.
        let pid = sup.current.pid;
        while let Ok(p) = sup.notify.ready.try_recv() {
            sup.notify_supported |= p == pid || p == 0;
        }
        sup.current.listeners = sup.listening_now().unwrap_or_default();
        log(&format!(
            "generation 1: PID {pid} healthy after {} (listeners {:?}, sd_notify {})",
            ms(t.elapsed()),
            sup.current.listeners,
            if sup.notify_supported { "yes" } else { "no" }
        ));
        Ok(sup)
    }

    fn listening_now(&mut self) -> Option<BTreeSet<u32>> {
        let port = self.opts.port;
        self.listeners.as_mut().and_then(|l| l.on_port(port).ok())
    }

    /// Checks the current generation until it passes, exits, or the ready
    /// timeout. `held` is `Some` while the plug is held through the check:
    /// if the check itself gets no answer, the plug is most likely holding
    /// it too (a tree set up for every source), so the plug is released
    /// (its hold time stored in `held`) and later reloads check unplugged.
    async fn wait_healthy_current(
        &mut self,
        mut held: Option<&mut Option<Duration>>,
    ) -> Result<Duration, String> {
        let t = Instant::now();
        let deadline = t + self.opts.ready_timeout;
        // The most telling failure: one the new server itself gave, over one
        // from an old server that happened to answer.
        let mut telling: Option<String> = None;
        loop {
            if let Some(status) = self.current.exited() {
                return Err(format!("exited ({status}) before it was healthy"));
            }
            let mut last = match self
                .opts
                .check
                .once(self.current.pid, Duration::from_secs(1))
                .await
            {
                Ok(()) => return Ok(t.elapsed()),
                Err(e) => e,
            };
            if last.contains("no answer within") {
                if let Some(slot) = held.take() {
                    log(
                        "warning: the plug seems to hold the health check's own connections \
                         (a tree for every source?): checking with the plug open from now on",
                    );
                    self.check_through_plug = false;
                    *slot = self.swap.release()?;
                }
            }
            if last.contains("the new server") {
                telling = Some(last.clone());
            } else if let Some(t) = &telling {
                last = t.clone();
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy within {:?}: {last}",
                    self.opts.ready_timeout
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `gen`'s listeners are in the group: `READY=1` from it when
    /// the server speaks sd_notify, otherwise a listener on the port that
    /// was not there before. Records its listeners.
    async fn wait_listening(
        &mut self,
        gen: &mut Generation,
        before: &BTreeSet<u32>,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.opts.ready_timeout;
        let can_poll = self.listeners.is_some();
        loop {
            if let Some(status) = gen.exited() {
                return Err(format!(
                    "new server PID {} exited ({status}) before listening",
                    gen.pid
                ));
            }
            if self.notify_supported || !can_poll {
                tokio::select! {
                    pid = self.notify.ready.recv() => {
                        if pid == Some(gen.pid) || pid == Some(0) {
                            let now = self.listening_now().unwrap_or_default();
                            gen.listeners = now.difference(before).copied().collect();
                            return Ok(());
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            } else {
                let now = self.listening_now().unwrap_or_default();
                let new: BTreeSet<u32> = now.difference(before).copied().collect();
                if !new.is_empty() {
                    gen.listeners = new;
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "new server PID {} did not listen on port {} within {:?}",
                    gen.pid, self.opts.port, self.opts.ready_timeout
                ));
            }
        }
    }

    /// Waits until none of `gen`'s listeners is in the group any more (or it
    /// exited). Without sock_diag, waits for the exit.
    async fn wait_left(&mut self, gen: &mut Generation, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        if gen.listeners.is_empty() && self.listeners.is_some() {
            return Ok(()); // it never joined the group
        }
        loop {
            if gen.exited().is_some() {
                return Ok(());
            }
            if !gen.listeners.is_empty() {
                if let Some(now) = self.listening_now() {
                    if gen.listeners.is_disjoint(&now) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= end {
                return Err(format!(
                    "PID {} still listening after {deadline:?}",
                    gen.pid
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no handshake to our port is half done, as sock_diag
    /// reports it, for SETTLE_POLLS polls in a row: a SYN that left the
    /// plug just before the hold may still be on its way to the listener,
    /// where it would become a half-open handshake the close would reset.
    async fn wait_no_half_open(&mut self) {
        let port = self.opts.port;
        let Some(l) = self.listeners.as_mut() else {
            return;
        };
        let end = Instant::now() + HALF_OPEN_WAIT;
        let mut quiet = 0;
        while quiet < SETTLE_POLLS && Instant::now() < end {
            match l.half_open(port) {
                Ok(0) => quiet += 1,
                Ok(_) => quiet = 0,
                Err(_) => return,
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Takes `gen` out of the group under protection and waits for it to exit.
    /// Returns (hold time, drain time, killed).
    async fn retire(
        &mut self,
        gen: &mut Generation,
    ) -> Result<(Option<Duration>, Duration, bool), String> {
        if gen.listeners.is_empty() && self.listeners.is_some() {
            // Not in the group: nothing to protect.
            gen.signal(libc::SIGTERM);
            let t = Instant::now();
            let (_, killed) = gen.wait_or_kill(self.opts.drain_timeout).await;
            return Ok((None, t.elapsed(), killed));
        }
        self.swap.hold()?;
        // SYNs that passed before the hold may be half-way through their
        // handshake with the old listener; closing it now would reset them.
        self.wait_no_half_open().await;
        gen.signal(libc::SIGTERM);
        let left = self.wait_left(gen, self.opts.drain_timeout).await;
        if left.is_err() {
            gen.signal(libc::SIGKILL);
        }
        let hold = self.swap.release()?;
        let t = Instant::now();
        let (_, killed) = gen.wait_or_kill(self.opts.drain_timeout).await;
        Ok((hold, t.elapsed(), killed || left.is_err()))
    }

    /// One reload. `Ok` with the log line when the new generation took over;
    /// `Err` with the reason when it rolled back (the old one still serves).
    pub async fn reload(&mut self) -> Result<String, String> {
        let t0 = Instant::now();
        let number = self.next;
        self.next += 1;
        let old_pid = self.current.pid;
        let before = self.listening_now().unwrap_or_default();
        // Readiness messages left over from earlier generations are stale.
        while self.notify.ready.try_recv().is_ok() {}

        self.swap.hold()?;
        let mut new = match Generation::spawn(&self.opts.command, &self.notify.path) {
            Ok(g) => g,
            Err(e) => {
                self.swap.release_quietly();
                return Err(format!(
                    "reload #{number}: cannot start {:?}: {e}; PID {old_pid} keeps serving",
                    self.opts.command[0]
                ));
            }
        };
        let listening = self.wait_listening(&mut new, &before).await;
        let t_listen = t0.elapsed();
        if let Err(why) = listening {
            // The plug is still holding. Whatever it bound (if anything) is
            // taken out under it.
            let now = self.listening_now().unwrap_or_default();
            new.listeners = now.difference(&before).copied().collect();
            new.signal(libc::SIGTERM);
            let _ = self.wait_left(&mut new, self.opts.drain_timeout).await;
            self.swap.release_quietly();
            let _ = new.wait_or_kill(self.opts.drain_timeout).await;
            return Err(format!(
                "reload #{number}: rolled back: {why}; PID {old_pid} keeps serving"
            ));
        }
        // A new server gets client connections as soon as the plug opens.
        // Keep it closed until the server has passed its check, so a server
        // that fails it never serves a client (the check's own connections
        // come from an address the plug lets through).
        let hold_through_check = self.check_through_plug;
        let mut hold1 = None;
        if !hold_through_check {
            hold1 = self.swap.release()?;
        }

        let t_check = Instant::now();
        let mut released_early = None;
        let healthy = {
            std::mem::swap(&mut self.current, &mut new);
            let r = self
                .wait_healthy_current(hold_through_check.then_some(&mut released_early))
                .await;
            std::mem::swap(&mut self.current, &mut new);
            r
        };
        if released_early.is_some() {
            hold1 = released_early;
        }
        if let Err(why) = healthy {
            let _ = self.retire(&mut new).await;
            return Err(format!(
                "reload #{number}: rolled back: new server PID {} failed its check: {why}; PID {old_pid} keeps serving",
                new.pid
            ));
        }
        let check = t_check.elapsed();
        if hold_through_check && hold1.is_none() {
            hold1 = self.swap.release()?;
        }

        let mut old = std::mem::replace(&mut self.current, new);
        let (hold2, drain, killed) = self.retire(&mut old).await?;
        let mut line = format!(
            "reload #{number}: ok, PID {old_pid} -> {} | listening {} | hold {} | check {} | hold {} | drain {}{} | total {}",
            self.current.pid,
            ms(t_listen),
            hold1.map_or("-".into(), ms),
            ms(check),
            hold2.map_or("-".into(), ms),
            ms(drain),
            if killed { " (SIGKILL)" } else { "" },
            ms(t0.elapsed()),
        );
        let _ = write!(line, " [{}]", self.swap.name());
        Ok(line)
    }

    /// Stops the current server (SIGTERM, SIGKILL at the drain timeout) and
    /// releases the plug.
    pub async fn shutdown(&mut self) {
        self.current.signal(libc::SIGTERM);
        let (status, killed) = self.current.wait_or_kill(self.opts.drain_timeout).await;
        self.swap.release_quietly();
        log(&format!(
            "stopped PID {}: {}{}",
            self.current.pid,
            status.map_or("unknown status".into(), |s| s.to_string()),
            if killed {
                " (SIGKILL at the drain timeout)"
            } else {
                ""
            }
        ));
    }
}
