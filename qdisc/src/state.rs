//! Whether the plug is buffering, recorded by whoever toggled it last. The
//! kernel never reports a plug's state, so `qdisc status` reads it from here.
//!
//! The record is a file named after the network namespace and device, in
//! the caller's runtime directory (`runtime`: `/run/reuse-plug` for root,
//! `$XDG_RUNTIME_DIR/reuse-plug` for anyone else): present while
//! buffering, absent once released. It is made with `O_EXCL|O_NOFOLLOW`,
//! so a planted link is never followed. Recording is best effort and never
//! fails a plug or a release; without a safe directory, nothing is recorded.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

fn file_name(dev: &str) -> String {
    format!("{}-{dev}.buffering", crate::sys::netns_id())
}

/// The record for one device, its location found once, so each toggle costs
/// one file operation.
#[derive(Debug, Clone)]
pub struct Record {
    path: Option<PathBuf>,
}

impl Record {
    pub fn for_dev(dev: &str) -> Record {
        Record {
            path: crate::runtime::dir().ok().map(|d| d.join(file_name(dev))),
        }
    }

    /// Records the plug as buffering or released.
    pub fn set(&self, buffering: bool) {
        let Some(path) = &self.path else { return };
        if buffering {
            // Already there (EEXIST) is as good as made.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A file beside the record, named after the network namespace and `dev`
/// with `suffix`.
pub fn path_for(dev: &str, suffix: &str) -> Result<PathBuf, crate::runtime::RuntimeError> {
    let name = format!("{}-{dev}.{suffix}", crate::sys::netns_id());
    Ok(crate::runtime::dir()?.join(name))
}

/// `Some(true)` if a record says buffering; `Some(false)` if the record
/// directory exists without one; `None` if there is no safe directory.
pub fn recorded(dev: &str) -> Option<bool> {
    let dir = crate::runtime::dir().ok()?;
    Some(std::fs::symlink_metadata(dir.join(file_name(dev))).is_ok())
}
