//! The receiving end of `NOTIFY_SOCKET`: servers send `READY=1` (with
//! `MAINPID=`) once they listen; we forward the PIDs that said so.

use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// A bound notify socket; its path goes into each server's environment.
pub struct Notify {
    pub path: PathBuf,
    pub ready: mpsc::UnboundedReceiver<u32>,
}

impl Notify {
    /// Binds `path` (replacing a stale socket) and starts forwarding.
    /// `READY=1` without `MAINPID` is forwarded as PID 0.
    pub fn bind(path: &Path) -> std::io::Result<Notify> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        let (tx, ready) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                if !text.lines().any(|l| l == "READY=1") {
                    continue;
                }
                let pid = text
                    .lines()
                    .find_map(|l| l.strip_prefix("MAINPID="))
                    .and_then(|p| p.trim().parse().ok())
                    .unwrap_or(0);
                if tx.send(pid).is_err() {
                    break;
                }
            }
        });
        Ok(Notify {
            path: path.to_owned(),
            ready,
        })
    }
}
