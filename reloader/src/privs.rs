//! Least privilege, handled once in `main` before any thread exists
//! (capability sets are per thread): keep CAP_NET_ADMIN and nothing else,
//! and make sure the servers we start get no capabilities at all.

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

/// Keeps only `cap` (effective and permitted); clears inheritable
/// and ambient; as root, clears the bounding set so exec cannot hand
/// capabilities back to our children. Errors say which `setcap` to run.
pub fn restrict_to(cap: Capability, what: &str) -> Result<(), String> {
    let has = caps::has_cap(None, CapSet::Permitted, cap)
        .map_err(|e| format!("cannot read capabilities: {e}"))?;
    if !has {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "reloader".into());
        let name = cap.to_string().to_lowercase();
        return Err(format!(
            "needs {cap} to {what}: run `sudo setcap {name}+ep {exe}` \
             (once after every build), or run as root"
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Root regains every capability in the bounding set on exec; empty
        // it (needs CAP_SETPCAP, which we still hold) before giving it up.
        for cap in caps::all() {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    let only: CapsHashSet = [cap].into_iter().collect();
    caps::set(None, CapSet::Effective, &only)
        .map_err(|e| format!("cannot set effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &only)
        .map_err(|e| format!("cannot set permitted capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("cannot clear inheritable capabilities: {e}"))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| format!("cannot clear ambient capabilities: {e}"))?;
    Ok(())
}

/// For `--strategy none`, which needs no privilege at all: drop everything
/// so the servers never inherit anything.
pub fn drop_all() {
    let _ = caps::clear(None, CapSet::Ambient);
    let _ = caps::clear(None, CapSet::Inheritable);
}
