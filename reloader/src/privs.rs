//! Least privilege, handled once in `main` before any thread exists
//! (capability sets are per thread): keep CAP_NET_ADMIN and nothing else,
//! and make sure the servers we start get no capabilities at all, unless
//! root names the ones they keep (`--server-caps`: nginx started as root
//! binds port 80 and switches to its `user`).

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

/// The capabilities servers keep (`--server-caps`), once restricted.
static SERVER_CAPS: std::sync::OnceLock<Vec<Capability>> = std::sync::OnceLock::new();

/// Runs `f` (a read of a server's `/proc/PID/fd`) with the servers' kept
/// capabilities raised to effective, and lowers them again: the kernel
/// shows a process's fds only to a caller whose effective set covers that
/// process's permitted set. Without `--server-caps`, just `f`.
pub fn inspecting<T>(f: impl FnOnce() -> T) -> T {
    let caps = SERVER_CAPS.get().map(Vec::as_slice).unwrap_or(&[]);
    for c in caps {
        let _ = caps::raise(None, CapSet::Effective, *c);
    }
    let out = f();
    for c in caps {
        let _ = caps::drop(None, CapSet::Effective, *c);
    }
    out
}

/// Keeps only `cap` (effective and permitted); clears inheritable
/// and ambient; as root, empties the bounding set but for `servers`, so
/// exec hands our children exactly those. Errors say which `setcap` to run.
pub fn restrict_to(cap: Capability, what: &str, servers: &[Capability]) -> Result<(), String> {
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
    bound_servers(servers)?;
    // Servers that keep capabilities may change their uid (nginx's workers
    // become `user`); signalling them then takes CAP_KILL, kept for that.
    let mut only: CapsHashSet = [cap].into_iter().collect();
    if !servers.is_empty() {
        only.insert(Capability::CAP_KILL);
    }
    // The kernel lets us read a server's /proc/PID/fd (its listeners) only
    // while our effective set covers its permitted one (ptrace access, with
    // fs credentials): the ones it keeps stay in our permitted set, raised
    // to effective only around those reads (`inspecting`).
    let mut permitted = only.clone();
    permitted.extend(servers.iter().copied());
    let _ = SERVER_CAPS.set(servers.to_vec());
    caps::set(None, CapSet::Effective, &only)
        .map_err(|e| format!("cannot set effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| format!("cannot set permitted capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("cannot clear inheritable capabilities: {e}"))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| format!("cannot clear ambient capabilities: {e}"))?;
    Ok(())
}

/// For the strategies that need no privilege: every set emptied, so
/// neither we nor the servers hold anything (as root: but `servers`, and
/// CAP_KILL to signal them once they change uid, as in `restrict_to`).
pub fn drop_all(servers: &[Capability]) -> Result<(), String> {
    bound_servers(servers)?;
    let mut effective = CapsHashSet::new();
    if !servers.is_empty() {
        effective.insert(Capability::CAP_KILL);
    }
    let mut permitted = effective.clone();
    permitted.extend(servers.iter().copied());
    let _ = SERVER_CAPS.set(servers.to_vec());
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| format!("cannot clear ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("cannot clear inheritable capabilities: {e}"))?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| format!("cannot set effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| format!("cannot set permitted capabilities: {e}"))?;
    Ok(())
}

/// Root regains every capability in the bounding set on exec: empty it
/// but for `servers` (needs CAP_SETPCAP, which root still holds here). Not
/// root, our children get nothing whatever we hold, so `servers` is refused.
fn bound_servers(servers: &[Capability]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if servers.is_empty() {
            return Ok(());
        }
        return Err(
            "--server-caps needs the reloader to run as root: an ordinary user's children get no capabilities from it".into(),
        );
    }
    for cap in caps::all() {
        if !servers.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("cannot drop {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// `CAP_NET_BIND_SERVICE` or `net_bind_service`.
pub fn parse_cap(s: &str) -> Result<Capability, String> {
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("CAP_") {
        name
    } else {
        format!("CAP_{name}")
    };
    name.parse::<Capability>()
        .map_err(|_| format!("{s:?} is not a capability (e.g. CAP_NET_BIND_SERVICE, CAP_SETUID)"))
}
