//! The trigger loop: what makes a reload happen (SIGHUP, `reloader reload`,
//! `--every`), what ends the supervision (SIGTERM, SIGINT, the serving
//! generation exiting on its own), and what is said of each reload (the
//! log, the report, our own supervisor's status line).

use std::time::Duration;

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
    period: Option<Duration>,
    every: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
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
            period,
            every: period.map(|d| Box::pin(tokio::time::sleep(d))),
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
                _ = async { t.every.as_mut().unwrap().as_mut().await }, if t.every.is_some() => None,
            };
            // SIGTERM/SIGINT end a reload half-way: `shutdown` stops whatever it
            // started and releases the plug.
            service::reloading();
            let outcome = tokio::select! {
                outcome = self.reload() => outcome,
                _ = t.term.recv() => break Ok(()),
                _ = t.int.recv() => break Ok(()),
            };
            if let (Some(sleep), Some(d)) = (t.every.as_mut(), t.period) {
                sleep.as_mut().reset(tokio::time::Instant::now() + d);
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
