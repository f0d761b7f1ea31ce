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

/// The nearest-rank percentile of sorted values (`q` in 0..=1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of(records: &[Record]) -> Summary {
        let mut t: Vec<f64> = records
            .iter()
            .filter(|r| r.pid.is_some())
            .map(|r| ms(r.total))
            .collect();
        if t.is_empty() {
            return Summary::default();
        }
        t.sort_by(f64::total_cmp);
        let n = t.len() as f64;
        let mean = t.iter().sum::<f64>() / n;
        let var = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Summary {
            count: t.len(),
            mean,
            stddev: var.sqrt(),
            p50: percentile(&t, 0.50),
            p99: percentile(&t, 0.99),
            p999: percentile(&t, 0.999),
            max: *t.last().unwrap(),
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
    fn percentiles_use_nearest_rank_and_skip_failures() {
        let mut v: Vec<Record> = (1..=1000).map(|i| rec(i, true)).collect();
        v.push(rec(999_999, false));
        let s = Summary::of(&v);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500.0);
        assert_eq!(s.p99, 990.0);
        assert_eq!(s.p999, 999.0);
        assert_eq!(s.max, 1000.0);
        assert!((s.mean - 500.5).abs() < 1e-9);
    }
}
