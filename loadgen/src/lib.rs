//! `loadgen`: a real HTTP/1.1 load client. By default a new TCP connection
//! per request (like `ab` without `-k`): each request exercises the SYN path
//! a reload disturbs. Every request is recorded (start, connect time, total
//! time, serving PID, outcome) and every failure classified.
//!
//! - [`http`]: one request, and its outcome.
//! - [`run`](mod@run): many requests, closed loop (`c` at a time) or open
//!   loop (a fixed rate, so stalls show as latency), with a progress line.
//! - [`stats`]: the summary (mean, stddev, percentiles) and the TSV.

pub mod http;
pub mod run;
pub mod stats;

pub use http::{get, get_detailed, parse_response, try_get, wait_ready, Outcome};
pub use run::{run, Live, Options, Record, Report};
