//! What the reloader says about itself: `reloader status` (over the control
//! socket, for a person or as JSON) and the Prometheus endpoint
//! (`--metrics`). The supervisor's loop records here what happened; a
//! reader copies that under a short lock and asks the kernel for the plugs'
//! counters itself, off the supervisor's thread, so a scrape never waits
//! for a reload and a reload never waits for a scrape.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::generation::Generation;
use crate::supervisor::Reloaded;

/// `reloader status --json`: stable field names; times in milliseconds,
/// instants as Unix seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub reloader_pid: u32,
    pub strategy: String,
    pub uptime_s: f64,
    /// `None` until the first generation is healthy.
    pub serving: Option<Serving>,
    pub reloads: Counts,
    pub last_reload: Option<LastReload>,
    /// One per plug qdisc (the local tree, one per `--ingress` device).
    pub plugs: Vec<PlugState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Serving {
    pub generation: u64,
    pub pid: u32,
    pub since_unix_s: f64,
    /// Inodes of its listening sockets on the served port (sock_diag).
    pub listeners: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub rolled_back: u64,
    pub failed: u64,
    /// Old generations SIGKILLed at the drain deadline.
    pub sigkilled: u64,
    /// Connections old generations' drains cut (their own drain timeout, as
    /// they reported it, or our SIGKILL): each may have been a lost request.
    #[serde(default)]
    pub connections_cut: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastReload {
    pub number: u64,
    /// "ok", "rolled back" or "failed".
    pub outcome: String,
    pub message: String,
    pub at_unix_s: f64,
    pub up_ms: Option<f64>,
    pub held_ms: Option<f64>,
    pub held_before_signal_ms: Option<f64>,
    pub total_ms: Option<f64>,
    /// `--probation`: the new generation's share of new connections over
    /// it (percent), when it passed.
    #[serde(default)]
    pub canary_pct: Option<f64>,
}

/// A plug as the kernel reports it now (`tc -s qdisc`), and as our record
/// says (the kernel does not report whether a plug buffers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlugState {
    pub dev: String,
    /// From the kernel: SYNs held now, dropped at the limit, let through.
    pub held_packets: u32,
    pub held_bytes: u32,
    pub drops: u32,
    pub sent_packets: u32,
    /// From our record.
    pub buffering: Option<bool>,
}

/// Reading the kernel's plug counters failed: said, never replaced by zeros.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("asking the kernel for the plug on {dev}: {source}")]
    Kernel {
        dev: String,
        #[source]
        source: qdisc::Error,
    },
    #[error("the plug tree on {0} is gone (no plug qdisc): was it torn down?")]
    NoPlug(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

struct State {
    strategy: String,
    started: Instant,
    serving: Option<Serving>,
    reloads: Counts,
    /// The supervisor's SIGKILL cut count as last seen.
    cut_by_sigkill: u64,
    last: Option<LastReload>,
}

struct Metrics {
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
    duration: Histogram,
    held: Histogram,
    serving_pid: Gauge,
    serving_generation: Gauge,
    sigkilled: Counter,
    connections_cut: Counter,
}

/// The shared record. Cheap to update (a lock and a few atomics).
pub struct Report {
    state: Mutex<State>,
    metrics: Metrics,
    registry: Registry,
    plugs: Arc<PlugCollector>,
}

impl Report {
    /// `plug_devs`: the devices whose plug qdisc the reloader toggles.
    pub fn new(strategy: &str, plug_devs: Vec<String>) -> Arc<Report> {
        let metrics = Metrics {
            reloads: Family::default(),
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            held: Histogram::new(exponential_buckets(0.0005, 2.0, 12)),
            serving_pid: Gauge::default(),
            serving_generation: Gauge::default(),
            sigkilled: Counter::default(),
            connections_cut: Counter::default(),
        };
        let mut registry = Registry::with_prefix("reloader");
        registry.register(
            "reloads",
            "Reloads by outcome (ok, rolled_back, failed)",
            metrics.reloads.clone(),
        );
        registry.register(
            "reload_duration_seconds",
            "Time from a reload's start until the new generation serves alone",
            metrics.duration.clone(),
        );
        registry.register(
            "held_seconds",
            "Time new connections were held per successful reload (0 when nothing was held)",
            metrics.held.clone(),
        );
        registry.register(
            "serving_pid",
            "PID of the serving generation",
            metrics.serving_pid.clone(),
        );
        registry.register(
            "serving_generation",
            "Number of the serving generation",
            metrics.serving_generation.clone(),
        );
        registry.register(
            "sigkilled",
            "Old generations SIGKILLed at the drain deadline",
            metrics.sigkilled.clone(),
        );
        registry.register(
            "connections_cut",
            "Connections an old generation's drain cut (its drain timeout, or our SIGKILL at ours)",
            metrics.connections_cut.clone(),
        );
        let plugs = Arc::new(PlugCollector {
            devs: plug_devs,
            now: Mutex::new(Vec::new()),
        });
        registry.register_collector(Box::new(plugs.clone()));
        // Make every outcome visible at 0 from the start.
        for outcome in ["ok", "rolled_back", "failed"] {
            let _ = metrics.reloads.get_or_create(&[("outcome", outcome)]);
        }
        let report = Report {
            state: Mutex::new(State {
                strategy: strategy.to_owned(),
                started: Instant::now(),
                serving: None,
                reloads: Counts::default(),
                cut_by_sigkill: 0,
                last: None,
            }),
            metrics,
            registry,
            plugs,
        };
        Arc::new(report)
    }

    /// `gen` serves (the first one, once healthy; then after each reload).
    pub fn serving(&self, gen: &Generation) {
        self.metrics.serving_pid.set(i64::from(gen.pid));
        self.metrics.serving_generation.set(gen.number as i64);
        self.state.lock().expect("report lock").serving = Some(serving(gen));
    }

    /// A reload replaced the serving generation with `now`.
    pub fn reloaded(&self, r: &Reloaded, now: &Generation) {
        self.metrics
            .reloads
            .get_or_create(&[("outcome", "ok")])
            .inc();
        self.metrics.duration.observe(r.total.as_secs_f64());
        self.metrics
            .held
            .observe(r.held.unwrap_or_default().as_secs_f64());
        self.serving(now);
        let mut s = self.state.lock().expect("report lock");
        s.reloads.ok += 1;
        s.last = Some(LastReload {
            number: r.number,
            outcome: "ok".into(),
            message: r.to_string(),
            at_unix_s: unix(SystemTime::now()),
            up_ms: Some(ms(r.up)),
            held_ms: r.held.map(ms),
            held_before_signal_ms: r.before_signal.map(ms),
            total_ms: Some(ms(r.total)),
            canary_pct: r.canary_pct,
        });
    }

    /// The reloads so far, by outcome: the one tally (status, metrics and
    /// the exit line read it).
    pub fn counts(&self) -> Counts {
        self.state.lock().expect("report lock").reloads.clone()
    }

    /// A reload did not replace the serving generation.
    pub fn not_reloaded(&self, e: &crate::error::ReloadError) {
        use crate::error::ReloadError;
        let (number, outcome, label, held) = match e {
            ReloadError::RolledBack { number, held, .. } => {
                (*number, "rolled back", "rolled_back", *held)
            }
            ReloadError::Failed { number, .. } => (*number, "failed", "failed", None),
        };
        self.metrics
            .reloads
            .get_or_create(&[("outcome", label)])
            .inc();
        let mut s = self.state.lock().expect("report lock");
        match e {
            ReloadError::RolledBack { .. } => s.reloads.rolled_back += 1,
            ReloadError::Failed { .. } => s.reloads.failed += 1,
        }
        s.last = Some(LastReload {
            number,
            outcome: outcome.into(),
            message: e.to_string(),
            at_unix_s: unix(SystemTime::now()),
            up_ms: None,
            held_ms: held.map(ms),
            held_before_signal_ms: None,
            total_ms: None,
            canary_pct: None,
        });
    }

    /// The supervisor's count of SIGKILLs at the drain deadline, and of
    /// the connections they cut.
    pub fn sigkilled(&self, total: u64, cut_total: u64) {
        let mut s = self.state.lock().expect("report lock");
        if total > s.reloads.sigkilled {
            self.metrics.sigkilled.inc_by(total - s.reloads.sigkilled);
            s.reloads.sigkilled = total;
        }
        if cut_total > s.cut_by_sigkill {
            let n = cut_total - s.cut_by_sigkill;
            self.metrics.connections_cut.inc_by(n);
            s.reloads.connections_cut += n;
            s.cut_by_sigkill = cut_total;
        }
    }

    /// An old generation's drain cut `n` connections.
    pub fn connections_cut(&self, n: u64) {
        self.metrics.connections_cut.inc_by(n);
        self.state
            .lock()
            .expect("report lock")
            .reloads
            .connections_cut += n;
    }

    /// The status now, the plugs' counters asked from the kernel. Blocking
    /// (netlink): call it off the supervisor's thread.
    pub fn status(&self) -> Result<Status, ReportError> {
        let plugs = self.plugs.query()?;
        let s = self.state.lock().expect("report lock");
        Ok(Status {
            reloader_pid: std::process::id(),
            strategy: s.strategy.clone(),
            uptime_s: s.started.elapsed().as_secs_f64(),
            serving: s.serving.clone(),
            reloads: s.reloads.clone(),
            last_reload: s.last.clone(),
            plugs,
        })
    }

    /// The Prometheus text exposition (OpenMetrics), the plugs' counters
    /// asked from the kernel. Blocking (netlink).
    pub fn metrics(&self) -> Result<String, ReportError> {
        *self.plugs.now.lock().expect("plug lock") = self.plugs.query()?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        Ok(out)
    }
}

fn serving(gen: &Generation) -> Serving {
    Serving {
        generation: gen.number,
        pid: gen.pid,
        since_unix_s: unix(SystemTime::now()),
        listeners: gen.listeners.iter().copied().collect(),
    }
}

/// The plugs' kernel counters, asked at each scrape.
#[derive(Debug)]
struct PlugCollector {
    devs: Vec<String>,
    /// What the last query found, for `encode` (which cannot fail usefully).
    now: Mutex<Vec<PlugState>>,
}

impl PlugCollector {
    fn query(&self) -> Result<Vec<PlugState>, ReportError> {
        let mut out = Vec::new();
        for dev in &self.devs {
            let s = qdisc::status(dev).map_err(|source| ReportError::Kernel {
                dev: dev.clone(),
                source,
            })?;
            let p = s.plug.ok_or_else(|| ReportError::NoPlug(dev.clone()))?;
            out.push(PlugState {
                dev: dev.clone(),
                held_packets: p.held_packets,
                held_bytes: p.held_bytes,
                drops: p.drops,
                sent_packets: p.sent_packets,
                buffering: s.buffering,
            });
        }
        Ok(out)
    }
}

impl Collector for PlugCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.now.lock().expect("plug lock");
        type Gauged = fn(&PlugState) -> i64;
        type Counted = fn(&PlugState) -> u64;
        let gauges: [(&str, &str, Gauged); 3] = [
            (
                "plug_held_packets",
                "SYNs the plug holds now (kernel)",
                |p| i64::from(p.held_packets),
            ),
            (
                "plug_held_bytes",
                "Bytes the plug holds now (kernel)",
                |p| i64::from(p.held_bytes),
            ),
            (
                "plug_buffering",
                "1 while the plug holds new connections (our record)",
                |p| i64::from(p.buffering == Some(true)),
            ),
        ];
        for (name, help, pick) in gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in now.iter() {
                let labels = [("dev", p.dev.as_str())];
                ConstGauge::new(pick(p)).encode(family.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, Counted); 2] = [
            (
                "plug_dropped_packets",
                "Packets the plug dropped at its limit since the tree was set up (kernel)",
                |p| u64::from(p.drops),
            ),
            (
                "plug_sent_packets",
                "SYNs the plug let through since the tree was set up (kernel)",
                |p| u64::from(p.sent_packets),
            ),
        ];
        for (name, help, pick) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in now.iter() {
                let labels = [("dev", p.dev.as_str())];
                ConstCounter::new(pick(p)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `reloader status` for a person.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        writeln!(
            f,
            "reloader PID {}, strategy {}, up {:.0} s",
            self.reloader_pid, self.strategy, self.uptime_s
        )?;
        match &self.serving {
            Some(s) => {
                let ago = unix(SystemTime::now()) - s.since_unix_s;
                writeln!(
                    f,
                    "serving: generation {} PID {} for {ago:.1} s, listeners {:?}",
                    s.generation, s.pid, s.listeners
                )?;
            }
            None => writeln!(f, "serving: nothing yet (the first generation is starting)")?,
        }
        let r = &self.reloads;
        writeln!(
            f,
            "reloads: {} ok, {} rolled back, {} failed; {} old generation(s) SIGKILLed at the drain deadline; {} connection(s) cut by drains",
            r.ok, r.rolled_back, r.failed, r.sigkilled, r.connections_cut
        )?;
        match &self.last_reload {
            Some(l) => writeln!(
                f,
                "last reload: #{} {}: up {}, held {} ({} before the signal), total {}\n  {}",
                l.number,
                l.outcome,
                opt(l.up_ms),
                opt(l.held_ms),
                opt(l.held_before_signal_ms),
                opt(l.total_ms),
                l.message
            )?,
            None => writeln!(f, "last reload: none yet")?,
        }
        for p in &self.plugs {
            writeln!(
                f,
                "plug on {}: kernel: {} SYN(s) held now ({} bytes), {} dropped, {} let through; our record: {}",
                p.dev,
                p.held_packets,
                p.held_bytes,
                p.drops,
                p.sent_packets,
                match p.buffering {
                    Some(true) => "holding",
                    Some(false) => "released",
                    None => "no record",
                }
            )?;
        }
        Ok(())
    }
}
