//! The control socket: `reloader reload` asks the running supervisor for a
//! reload and waits for the outcome. A unix stream socket, mode 0600, whose
//! peer must be our own user (or root).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A reload asked for over the socket, with where to send its outcome.
pub type Request = oneshot::Sender<Result<String, String>>;

/// The default socket path: `$XDG_RUNTIME_DIR/reloader.sock`, else
/// `/run/reloader.sock` for root, else `/tmp/reloader-<uid>.sock`.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("reloader.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        PathBuf::from("/run/reloader.sock")
    } else {
        PathBuf::from(format!("/tmp/reloader-{uid}.sock"))
    }
}

/// Binds the socket (replacing a stale one) and forwards each request.
pub fn serve(path: &Path) -> std::io::Result<mpsc::Receiver<Request>> {
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
            tokio::spawn(async move {
                let _ = handle(stream, tx, me).await;
            });
        }
    });
    Ok(rx)
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Request>, me: u32) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read before any answer, refusals included: a client
    // whose request is still unread when we close would see EPIPE instead
    // of the reason. One line, at most 256 bytes.
    let mut line = String::new();
    BufReader::new(read.take(256)).read_line(&mut line).await?;
    if uid != me && uid != 0 {
        write
            .write_all(b"error: permission denied (not the reloader's user)\n")
            .await?;
        return Ok(());
    }
    let reply = match line.trim() {
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
        other => format!("error: unknown request {other:?}\n"),
    };
    write.write_all(reply.as_bytes()).await
}

/// `reloader reload`: asks and reports. `Ok` when the new server took over.
pub fn request_reload(path: &Path) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "no reloader answers on {} ({e}): is `reloader run` running? (--control PATH)",
            path.display()
        )
    })?;
    s.write_all(b"reload\n").map_err(|e| e.to_string())?;
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
