//! `reuse-server`: the server that every reload in this project replaces.
//!
//! It answers every request with its own PID, so a client can tell which
//! generation served it, and it drains without losing a request.
//!
//! - [`listen`]: parse `--listen`, bind SO_REUSEPORT sockets, adopt inherited
//!   (`LISTEN_FDS`) sockets.
//! - [`serve`]: the accept loops, the HTTP service and the drain.
//!
//! Readiness and the join gate are the `gate` crate's (both ends of the
//! protocol live there).

pub mod listen;
pub mod serve;

pub use listen::{bind_all, inherited, parse_listen, ListenError, Listener};
pub use serve::{serve, DrainReport, ServeOptions};

/// `eprintln!` in one `write()`: generations and their supervisor share one
/// stderr, and `eprintln!` writes a line in pieces that another process's
/// line can land between.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// Prefix for every log line: the binary name and our PID, so the lines of
/// two generations sharing one stderr can be told apart.
pub fn log_prefix() -> String {
    format!("reuse-server[{}]", std::process::id())
}
