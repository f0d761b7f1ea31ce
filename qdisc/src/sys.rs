//! The few raw system calls the library makes, each with why it is sound.

use std::ffi::CString;
use std::io;

use crate::error::{Error, Result};

/// The index of network device `dev` in this thread's network namespace.
pub fn ifindex(dev: &str) -> Result<i32> {
    let name = CString::new(dev).map_err(|_| Error::NoDevice(dev.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Error::NoDevice(dev.to_owned()));
    }
    Ok(index as i32)
}

/// Moves the calling thread into a new, empty network namespace.
pub fn unshare_netns() -> io::Result<()> {
    // SAFETY: unshare only takes flags; it affects the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An identifier of this thread's network namespace (its inode number).
pub fn netns_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}
