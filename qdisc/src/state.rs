//! Whether the plug is buffering, recorded by whoever toggled it last. The
//! kernel never reports a plug's state, so `qdisc status` reads it from here.
//!
//! The record is a file named after the network namespace and device, in
//! the first usable of `/run/reuse-plug`, `$XDG_RUNTIME_DIR/reuse-plug` and
//! `/tmp/reuse-plug-<uid>`: present while buffering, absent once released.
//! Recording is best effort and never fails a plug or a release.

use std::path::PathBuf;

fn dirs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/run/reuse-plug")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        v.push(PathBuf::from(x).join("reuse-plug"));
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    v.push(PathBuf::from(format!("/tmp/reuse-plug-{}", unsafe {
        libc::getuid()
    })));
    v
}

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
    /// Finds (creating if needed) the first usable record directory.
    pub fn for_dev(dev: &str) -> Record {
        let name = file_name(dev);
        let path = dirs()
            .into_iter()
            .find(|d| std::fs::create_dir_all(d).is_ok() && writable(d))
            .map(|d| d.join(name));
        Record { path }
    }

    /// Records the plug as buffering or released.
    pub fn set(&self, buffering: bool) {
        let Some(path) = &self.path else { return };
        if buffering {
            let _ = std::fs::File::create(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A file beside the record, named after the network namespace and `dev`
/// with `suffix`, in the first usable record directory.
pub fn path_for(dev: &str, suffix: &str) -> Option<PathBuf> {
    let name = format!("{}-{dev}.{suffix}", crate::sys::netns_id());
    dirs()
        .into_iter()
        .find(|d| std::fs::create_dir_all(d).is_ok() && writable(d))
        .map(|d| d.join(name))
}

fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// `Some(true)` if a record says buffering; `Some(false)` if a record
/// directory exists without one; `None` if nothing was ever recorded here.
pub fn recorded(dev: &str) -> Option<bool> {
    let name = file_name(dev);
    let mut seen_dir = false;
    for dir in dirs() {
        if dir.join(&name).exists() {
            return Some(true);
        }
        seen_dir |= dir.is_dir();
    }
    seen_dir.then_some(false)
}
