//! The kernel's per-CPU receive backlogs, as `/proc/net/softnet_stat`
//! reports them (5.10 and later: column 12 is the backlog's length).
//!
//! On `lo` (and across a veth) a packet the plug let through is queued on a
//! CPU's backlog until the receive softirq runs; under load that softirq
//! moves to `ksoftirqd` and a SYN can wait there for milliseconds. A SYN
//! still in a backlog is not yet a handshake sock_diag can see, so before a
//! listener closes the supervisor waits for the backlogs to be empty (the
//! plug holds new ones meanwhile) instead of guessing a time. A backlog is
//! a FIFO: once a CPU's is seen empty, every packet queued there before has
//! been processed, whatever arrives after.

use std::io;

/// The column (0-based) of `softnet_backlog_len` (input and process queues).
const BACKLOG_COLUMN: usize = 11;
/// Columns the kernel prints when it has that column (the CPU index follows).
const MIN_COLUMNS: usize = 13;

/// Packets waiting in each CPU's receive backlog, or `None` when this
/// kernel does not report it (before 5.10).
pub fn backlogs() -> io::Result<Option<Vec<u64>>> {
    parse(&std::fs::read_to_string("/proc/net/softnet_stat")?)
}

fn parse(text: &str) -> io::Result<Option<Vec<u64>>> {
    let mut per_cpu = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < MIN_COLUMNS {
            return Ok(None);
        }
        per_cpu.push(u64::from_str_radix(cols[BACKLOG_COLUMN], 16).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("softnet_stat: {line:?}: {e}"),
            )
        })?);
    }
    Ok(Some(per_cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_backlog_column_of_every_cpu() {
        // 6.1 (13 columns) and 6.18 (15: input and process queue lengths after the CPU).
        let v61 = "00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000000\n\
                   00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000001\n";
        assert_eq!(parse(v61).unwrap(), Some(vec![2, 10]));
        let v618 = "003b3c1d 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000\n";
        assert_eq!(parse(v618).unwrap(), Some(vec![0]));
    }

    #[test]
    fn an_old_kernel_without_the_column_says_so() {
        let v54 = "00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n";
        assert_eq!(parse(v54).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_zero() {
        let bad = "00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 zz 00000000\n";
        assert!(parse(bad).is_err());
    }

    #[test]
    fn this_kernel_answers() {
        let b = backlogs().expect("softnet_stat readable");
        assert!(b.is_some(), "a 5.10+ kernel reports its backlogs");
    }
}
