//! Where our runtime files live (the plug's state record, the reloader's
//! lock, its sockets), chosen so that no other user can plant them: root
//! uses `/run/reuse-plug`, trusted only while root owns it and alone can
//! write it; anyone else `$XDG_RUNTIME_DIR/reuse-plug`, trusted only while
//! `$XDG_RUNTIME_DIR` is theirs with mode 0700. There is no fallback to a
//! shared directory such as `/tmp`: without a safe place, an error says so.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no safe directory for runtime files: XDG_RUNTIME_DIR is not set (a directory of yours with mode 0700, as systemd-logind makes); set it, or pass the path explicitly")]
    NoXdg,
    #[error("{path} is not safe for runtime files: {why}")]
    Unsafe { path: PathBuf, why: String },
    // The errno's text in the message, not as a source: these are
    // printed whole (`to_string`), and a chain would say it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The directory, created (mode 0700) if missing, checked every time: ours,
/// and writable by no one else.
pub fn dir() -> Result<PathBuf, RuntimeError> {
    let uid = euid();
    let base = if uid == 0 {
        PathBuf::from("/run")
    } else {
        let x = std::env::var_os("XDG_RUNTIME_DIR").ok_or(RuntimeError::NoXdg)?;
        let x = PathBuf::from(x);
        check(&x, uid, true)?;
        x
    };
    if uid == 0 {
        check(&base, 0, false)?;
    }
    let dir = base.join("reuse-plug");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(RuntimeError::Io {
                path: dir,
                err: source,
            })
        }
    }
    check(&dir, uid, false)?;
    Ok(dir)
}

/// `path` is a real directory (no symlink), owned by `uid`, that nobody
/// else may write (with `private`, nobody else may even enter).
pub fn check(path: &Path, uid: u32, private: bool) -> Result<(), RuntimeError> {
    let m = std::fs::symlink_metadata(path).map_err(|source| RuntimeError::Io {
        path: path.to_owned(),
        err: source,
    })?;
    let unsafe_ = |why: String| {
        Err(RuntimeError::Unsafe {
            path: path.to_owned(),
            why,
        })
    };
    if !m.file_type().is_dir() {
        return unsafe_("not a directory (a symbolic link?)".into());
    }
    if m.uid() != uid {
        return unsafe_(format!("it belongs to uid {}, not {uid}", m.uid()));
    }
    let open = if private { 0o077 } else { 0o022 };
    if m.mode() & open != 0 {
        return unsafe_(format!(
            "its mode is {:o} (want {})",
            m.mode() & 0o7777,
            if private {
                "0700"
            } else {
                "no write for group or others"
            }
        ));
    }
    Ok(())
}

/// Opens `path` for reading and writing, creating it (mode 0600) if it is
/// not there, never through a symbolic link, and only if it is ours.
pub fn open_own(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    if m.uid() != euid() || !m.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a file of ours (uid {})", path.display(), m.uid()),
        ));
    }
    Ok(f)
}
