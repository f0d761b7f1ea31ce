//! A child process under test: its stderr read line by line on a thread, so
//! a test can wait for a log line, signal it, and wait for its exit, each
//! with a deadline. Dropping it kills the process: tests end what they start.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    pub log: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` with stderr captured (stdout is discarded).
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            log: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`. Returns it, or `None` at
    /// the deadline or when stderr closed.
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Collects whatever stderr lines have arrived, without waiting.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the PID of our own child, which has not been
        // reaped (we hold `Child`), so the PID cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
