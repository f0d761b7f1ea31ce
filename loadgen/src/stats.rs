//! The summary of a run and its per-request TSV.

use std::io::{self, Write};
use std::time::Duration;

use crate::run::Record;

/// Response-time statistics of the successful requests, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Summary {
    /// Percentiles from an HDR histogram of microseconds, 3 significant
    /// digits (a reported value is within 0.1% of the true one).
    pub fn of(records: &[Record]) -> Summary {
        // 1 us to 1 hour.
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid histogram bounds");
        for r in records.iter().filter(|r| r.pid.is_some()) {
            h.saturating_record(r.total.as_micros().max(1) as u64);
        }
        if h.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Summary {
            count: h.len() as usize,
            mean: h.mean() / 1e3,
            stddev: h.stdev() / 1e3,
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: h.max() as f64 / 1e3,
        }
    }
}

/// One line per request: start, connect and total time (ms), serving PID
/// (0 when it failed), outcome.
pub fn write_tsv(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    writeln!(out, "start_ms\tconnect_ms\ttotal_ms\tpid\toutcome")?;
    for r in records {
        writeln!(
            out,
            "{:.3}\t{:.3}\t{:.3}\t{}\t{}",
            ms(r.start),
            ms(r.connect),
            ms(r.total),
            r.pid.unwrap_or(0),
            r.outcome
        )?;
    }
    Ok(())
}

/// Reads what [`write_tsv`] wrote. Malformed lines are skipped.
pub fn read_tsv(text: &str) -> Vec<Record> {
    let secs = |v: &str| {
        v.parse::<f64>()
            .ok()
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let pid: u32 = f.get(3)?.parse().ok()?;
            Some(Record {
                start: secs(f.first()?)?,
                connect: secs(f.get(1)?)?,
                total: secs(f.get(2)?)?,
                pid: (pid != 0).then_some(pid),
                outcome: match *f.get(4)? {
                    "ok" => "ok",
                    "refused" => "refused",
                    "reset" => "reset",
                    "closed" => "closed",
                    "timeout" => "timeout",
                    "bad-status" => "bad-status",
                    _ => "other",
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(total_ms: u64, ok: bool) -> Record {
        Record {
            start: Duration::ZERO,
            connect: Duration::ZERO,
            total: Duration::from_millis(total_ms),
            pid: ok.then_some(1),
            outcome: if ok { "ok" } else { "reset" },
        }
    }

    #[test]
    fn tsv_round_trips() {
        let v = vec![rec(3, true), rec(5, false)];
        let mut out = Vec::new();
        write_tsv(&mut out, &v).unwrap();
        let back = read_tsv(&String::from_utf8(out).unwrap());
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].total, Duration::from_millis(3));
        assert_eq!(back[1].pid, None);
        assert_eq!(back[1].outcome, "reset");
    }

    #[test]
    fn percentiles_within_hdr_precision_and_skip_failures() {
        let mut v: Vec<Record> = (1..=1000).map(|i| rec(i, true)).collect();
        v.push(rec(999_999, false));
        let s = Summary::of(&v);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 1e-3;
        assert_eq!(s.count, 1000);
        assert!(near(s.p50, 500.0), "{s:?}");
        assert!(near(s.p99, 990.0), "{s:?}");
        assert!(near(s.p999, 999.0), "{s:?}");
        assert!(near(s.max, 1000.0), "{s:?}");
        assert!(near(s.mean, 500.5), "{s:?}");
    }
}
