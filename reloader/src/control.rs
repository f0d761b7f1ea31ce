//! The control socket: `reloader reload` asks the running supervisor for a
//! reload and waits for the outcome; `reloader status` asks what it is
//! doing. A unix stream socket, mode 0600, whose peer must be our own user
//! (or root). One request line (`reload` or `status`), one reply line
//! (`ok: ...` or `error: ...`; a status is JSON after `ok: `).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::report::Report;

/// A reload asked for over the socket, with where to send its outcome.
pub type Request = oneshot::Sender<Result<String, String>>;

/// The default socket path: `/run/reloader.sock` for root, else
/// `$XDG_RUNTIME_DIR/reloader.sock` while that directory is the caller's
/// own with mode 0700; never a shared directory such as `/tmp`.
pub fn default_path() -> Result<PathBuf, qdisc::runtime::RuntimeError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return Ok(PathBuf::from("/run/reloader.sock"));
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").ok_or(qdisc::runtime::RuntimeError::NoXdg)?;
    let dir = PathBuf::from(dir);
    qdisc::runtime::check(&dir, uid, true)?;
    Ok(dir.join("reloader.sock"))
}

/// Binds the socket (replacing a stale one), forwards each reload request
/// and answers status requests from `report`.
pub fn serve(path: &Path, report: Arc<Report>) -> std::io::Result<mpsc::Receiver<Request>> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    // Created with a restrictive umask so there is no window at a wider mode.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(8);
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let _ = handle(stream, tx, me, report).await;
            });
        }
    });
    Ok(rx)
}

async fn handle(
    stream: UnixStream,
    tx: mpsc::Sender<Request>,
    me: u32,
    report: Arc<Report>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read before any answer, refusals included: a client
    // whose request is still unread when we close would see EPIPE instead
    // of the reason. One line, at most 256 bytes.
    let mut input = BufReader::new(read);
    let mut raw = Vec::new();
    (&mut input).take(256).read_until(b'\n', &mut raw).await?;
    // Not UTF-8 is not a request either: answered like any unknown one.
    let line = String::from_utf8_lossy(&raw);
    let reply = if uid != me && uid != 0 {
        "error: permission denied (not the reloader's user)\n".to_string()
    } else {
        answer(line.trim(), tx, report).await
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await?;
    // Input left unread at close makes the kernel reset the connection, and
    // the client would lose the reply: read what remains, within bounds.
    let (mut rest, mut sink) = (input.take(64 * 1024), tokio::io::sink());
    let drained = tokio::io::copy(&mut rest, &mut sink);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drained).await;
    Ok(())
}

/// The reply line to one request.
async fn answer(request: &str, tx: mpsc::Sender<Request>, report: Arc<Report>) -> String {
    match request {
        "reload" => {
            let (done, outcome) = oneshot::channel();
            if tx.send(done).await.is_err() {
                "error: the supervisor is shutting down\n".to_string()
            } else {
                match outcome.await {
                    Ok(Ok(msg)) => format!("ok: {msg}\n"),
                    Ok(Err(msg)) => format!("error: {msg}\n"),
                    Err(_) => "error: the supervisor stopped during the reload\n".to_string(),
                }
            }
        }
        // The kernel is asked off this thread: a status never delays a hold.
        "status" => match tokio::task::spawn_blocking(move || report.status()).await {
            Ok(Ok(status)) => format!(
                "ok: {}\n",
                serde_json::to_string(&status).expect("plain data serializes")
            ),
            Ok(Err(e)) => format!("error: {e}\n"),
            Err(e) => format!("error: {e}\n"),
        },
        other => format!(
            "error: unknown request {:?} (reload or status)\n",
            other.chars().take(64).collect::<String>()
        ),
    }
}

/// `reloader reload` and `reloader status`: sends `request`, returns the
/// reply after `ok: `, or the reason. `Ok` for a reload when the new server
/// took over.
pub fn ask(path: &Path, request: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "no reloader answers on {} ({e}): is `reloader run` running? (--control PATH)",
            path.display()
        )
    })?;
    // Whoever bound the path answers: trust only our own user, or root
    // (root, who may ask any user's reloader, trusts the path it named).
    let peer = socket2::SockRef::from(&s);
    let uid = peer_uid(&peer).map_err(|e| format!("{}: SO_PEERCRED: {e}", path.display()))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if uid != me && uid != 0 && me != 0 {
        return Err(format!(
            "{} is served by uid {uid}, not by you (uid {me}) or root: not trusting its answer (someone else bound that path; pass --control PATH of your reloader)",
            path.display()
        ));
    }
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let line = line.trim_end();
    match line.strip_prefix("ok: ") {
        Some(msg) => Ok(msg.to_string()),
        None => Err(line.strip_prefix("error: ").unwrap_or(line).to_string()),
    }
}

fn peer_uid(s: &socket2::SockRef<'_>) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::{Read, Write};

    /// A control socket served from a runtime on its own thread.
    fn served() -> (PathBuf, std::sync::mpsc::Receiver<()>) {
        // A fresh directory of ours (mode 0700, made exclusively), kept for
        // the socket's lifetime.
        let dir = tempfile::Builder::new()
            .prefix("reloader-control-")
            .tempdir()
            .unwrap()
            .keep();
        let path = dir.join("ctl.sock");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (asked_tx, asked_rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut rx = serve(&p, Report::new("none", Vec::new())).unwrap();
                ready_tx.send(()).unwrap();
                while let Some(reply) = rx.recv().await {
                    asked_tx.send(()).unwrap();
                    let _ = reply.send(Err("not in this test".into()));
                }
            });
        });
        ready_rx.recv().unwrap();
        (path, asked_rx)
    }

    fn send(path: &Path, bytes: &[u8]) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any bytes that are not a request get one `error:` line and start
        /// nothing; the supervisor is never asked.
        #[test]
        fn malformed_requests_get_one_error_line_and_change_nothing(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            static SOCKET: std::sync::OnceLock<(PathBuf, std::sync::Mutex<std::sync::mpsc::Receiver<()>>)> =
                std::sync::OnceLock::new();
            let (path, asked) = SOCKET.get_or_init(|| {
                let (p, rx) = served();
                (p, std::sync::Mutex::new(rx))
            });
            let head = &bytes[..bytes.len().min(256)];
            let first_line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let word = String::from_utf8_lossy(first_line);
            prop_assume!(!matches!(word.trim(), "reload" | "status"));
            let reply = send(path, &bytes);
            prop_assert!(reply.starts_with("error: "), "{reply:?}");
            prop_assert_eq!(reply.matches('\n').count(), 1, "{:?}", reply);
            prop_assert!(asked.lock().unwrap().try_recv().is_err(), "a reload was asked for");
        }
    }

    #[test]
    fn a_reload_request_reaches_the_supervisor() {
        let (path, asked) = served();
        let reply = send(&path, b"reload\n");
        assert_eq!(reply, "error: not in this test\n");
        asked.try_recv().expect("the supervisor was asked");
    }
}
