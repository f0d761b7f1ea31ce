//! The trigger loop: what makes a reload happen (SIGHUP, `reloader reload`,
//! `--every`), what ends the supervision (SIGTERM, SIGINT, the serving
//! generation exiting on its own), and what is said of each reload (the
//! log, the report, our own supervisor's status line).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::{control, error, service};

/// How often a release that failed is tried again between reloads.
const RETRY_RELEASE: Duration = Duration::from_millis(50);

/// The triggers, registered before the first generation starts (a signal
/// that arrives during the start is then kept, not lost).
pub struct Triggers {
    term: Signal,
    int: Signal,
    hup: Signal,
    requests: mpsc::Receiver<control::Request>,
    /// `--every`: reload, wait this long, reload again.
    every: Option<Every>,
}

/// `--every`'s pause, on a timerfd: the kernel wakes us once, at the
/// deadline. (A tokio sleep of 100 ms wakes the runtime twice, at its
/// timer wheel's 64 ms slot and at the deadline, and on an idle host each
/// wake costs more than the rest of a reload's waiting.)
struct Every {
    timer: AsyncFd<Timer>,
    period: Duration,
}

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Every {
    fn new(period: Duration) -> std::io::Result<Every> {
        let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
        // SAFETY: the timerfd is owned by `Timer`, which the AsyncFd owns
        // from now on; its raw fd stays the same open file until dropped.
        let timer = unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let every = Every { timer, period };
        every.arm()?;
        Ok(every)
    }

    /// Starts the pause from now. A zero period (`--every 0s`) becomes
    /// 1 ns: a zero expiration would disarm the timer instead.
    fn arm(&self) -> std::io::Result<()> {
        let at = TimeSpec::from_duration(self.period.max(Duration::from_nanos(1)));
        self.timer
            .get_ref()
            .0
            .set(Expiration::OneShot(at), TimerSetTimeFlags::empty())?;
        Ok(())
    }

    /// The pause is over (cancel-safe: a wake lost to another trigger
    /// leaves the timer readable for the next call).
    async fn over(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.timer.readable().await?;
            match ready.try_io(|t| t.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(read) => return read,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Triggers {
    pub fn new(
        requests: mpsc::Receiver<control::Request>,
        period: Option<Duration>,
    ) -> std::io::Result<Triggers> {
        Ok(Triggers {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            requests,
            every: period.map(Every::new).transpose()?,
        })
    }
}

impl Supervisor {
    /// Reloads on every trigger until told to stop (`Ok`) or the serving
    /// generation exits on its own (`Err`); `shutdown` comes after.
    pub async fn serve(&mut self, mut t: Triggers, report: &Report) -> anyhow::Result<()> {
        loop {
            let (current, tend) = self.watched(RETRY_RELEASE);
            let reply = tokio::select! {
                _ = t.term.recv() => break Ok(()),
                _ = t.int.recv() => break Ok(()),
                status = current.wait() => {
                    break Err(anyhow::anyhow!("server PID {} exited on its own ({})", self.current.pid,
                        status.map_or("unknown status".into(), |s| s.to_string())));
                }
                _ = tend => {
                    self.reap().await;
                    report.sigkilled(self.sigkills, self.cut_by_sigkill);
                    continue;
                }
                _ = t.hup.recv() => None,
                Some(reply) = t.requests.recv() => Some(reply),
                over = async { t.every.as_ref().unwrap().over().await }, if t.every.is_some() => {
                    if let Err(e) = over {
                        break Err(anyhow::anyhow!("--every's timer could not be read: {e}"));
                    }
                    None
                }
            };
            // SIGTERM/SIGINT end a reload half-way: `shutdown` stops whatever it
            // started and releases the plug.
            service::reloading();
            let outcome = tokio::select! {
                outcome = self.reload() => outcome,
                _ = t.term.recv() => break Ok(()),
                _ = t.int.recv() => break Ok(()),
            };
            if let Some(every) = &t.every {
                if let Err(e) = every.arm() {
                    break Err(anyhow::anyhow!("--every's timer could not be set: {e}"));
                }
            }
            report.sigkilled(self.sigkills, self.cut_by_sigkill);
            match &outcome {
                Ok(r) => {
                    let held_ms = r.held.map(|d| d.as_secs_f64() * 1e3);
                    tracing::info!(
                        event = "reload",
                        number = r.number,
                        outcome = "ok",
                        old_pid = r.old_pid,
                        new_pid = r.new_pid,
                        up_ms = r.up.as_secs_f64() * 1e3,
                        held_ms,
                        total_ms = r.total.as_secs_f64() * 1e3,
                        strategy = r.strategy,
                        "{r}"
                    );
                    report.reloaded(r, &self.current);
                    service::ready(&format!(
                        "serving: PID {}; last reload ok",
                        self.current.pid
                    ));
                }
                Err(e) => {
                    let (number, outcome) = match e {
                        error::ReloadError::RolledBack { number, .. } => (*number, "rolled back"),
                        error::ReloadError::Failed { number, .. } => (*number, "failed"),
                    };
                    tracing::warn!(event = "reload", number, outcome, "{e}");
                    report.not_reloaded(e);
                    service::ready(&format!(
                        "serving: PID {}; last reload failed: {e}",
                        self.current.pid
                    ));
                }
            }
            if let Some(reply) = reply {
                let _ = reply.send(outcome.map(|r| r.to_string()).map_err(|e| e.to_string()));
            }
        }
    }
}
