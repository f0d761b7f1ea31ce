//! One reloader per plug tree. A service's tree has one plug, so two
//! reloaders sharing it would release each other's holds (and re-scope each
//! other's filters to their own ports). Services on other ports have
//! plugs of their own (`qdisc::ingress`). The first one takes an exclusive
//! `flock` on a file beside the plug's state record; the kernel drops it when
//! that reloader exits, even by SIGKILL, so its successor gets it at once.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("the plug's owner lock")]
    Runtime(#[from] qdisc::runtime::RuntimeError),
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another reloader already uses the plug tree on {dev} ({holder}); run one reloader per service (a service on other ports gets its own plug beside this one)")]
    Taken { dev: String, holder: String },
}

/// Held for the reloader's lifetime.
pub struct Owner {
    _file: File,
}

pub fn take(dev: &str, port: u16) -> Result<Owner, OwnerError> {
    let path = qdisc::runtime_path(dev, "reloader")?;
    let io = |source| OwnerError::Io {
        path: path.clone(),
        source,
    };
    let mut file = qdisc::runtime::open_own(&path).map_err(io)?;
    // SAFETY: flock on a file we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut who = String::new();
        let _ = file.read_to_string(&mut who);
        return Err(OwnerError::Taken {
            dev: dev.to_owned(),
            holder: who.trim().to_owned(),
        });
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "PID {}, port {port}", std::process::id());
    Ok(Owner { _file: file })
}
