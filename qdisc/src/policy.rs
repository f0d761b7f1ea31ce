//! Who may hold what. A binary installed with a file capability runs with
//! CAP_NET_ADMIN for whoever starts it; the kernel then lets it hold any
//! port on any device. So when it runs that way for a user who is not root
//! (the kernel says so: `AT_SECURE`), every action is checked against a
//! policy only root can write, as `fusermount3` reads `/etc/fuse.conf`:
//!
//! ```toml
//! # /etc/reloader/policy.toml (root:root, not writable by others)
//! [limits]             # everyone's, root's too (defaults: 5s, 1048576)
//! max_hold = "5s"      # the longest one hold may last
//! max_limit = 1048576  # the largest plug limit, in bytes
//!
//! [[allow]]
//! users = ["alice"]    # names or uids
//! groups = ["web"]     # names or gids
//! ports = [7000, "8000-8099"]
//! devices = ["lo", "eth0"]   # whose clients may be held (default ["lo"])
//! max_hold = "1s"      # within [limits]
//! migrate = false      # may set net.ipv4.tcp_migrate_req
//! ```
//!
//! No policy file: a user is refused, with how to allow them. Root, and a
//! service given the capability by its unit (`AmbientCapabilities`: no
//! `AT_SECURE`), are checked only against `[limits]`.

use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The policy's path, fixed at build time (`RELOADER_POLICY` when building).
pub const PATH: &str = match option_env!("RELOADER_POLICY") {
    Some(p) => p,
    None => "/etc/reloader/policy.toml",
};

/// What applies with no `[limits]`.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_LIMIT: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{user} runs this binary with its file capability, and no policy allows anything ({path} does not exist). To allow it, root writes there e.g.\n  [[allow]]\n  users = [\"{user}\"]\n  ports = [7000]\n(see `docs/security.md`)")]
    NoPolicy { user: String, path: PathBuf },
    #[error("{path} is ignored: {why}; it and every directory above it must belong to root and be writable by root only")]
    Unsafe { path: PathBuf, why: String },
    // The errno's text in the message, not as a source: these are
    // printed whole (`to_string`), and a chain would say it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the policy ({path}) does not allow {user} to {what}; ask root to add it to an [[allow]] entry")]
    NotAllowed {
        user: String,
        what: String,
        path: PathBuf,
    },
    #[error(
        "{flag} {asked} is above the most allowed{whose}: {max} (root sets it: [limits] in {path})"
    )]
    OverLimit {
        flag: &'static str,
        asked: String,
        max: String,
        whose: String,
        path: PathBuf,
    },
    #[error("a user may only hold given ports: name them (--port), every port is root's")]
    EveryPort,
}

/// The bounds one caller works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_hold: Duration,
    pub max_limit: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_hold: DEFAULT_MAX_HOLD,
            max_limit: DEFAULT_MAX_LIMIT,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Root, or a process whose capabilities its own starter gave it.
    Unrestricted,
    /// A user running us with our file capability.
    User { uid: u32, gids: Vec<u32> },
}

impl Caller {
    pub fn current() -> Caller {
        // SAFETY: getauxval and getuid have no preconditions.
        let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
        let uid = unsafe { libc::getuid() };
        if !secure || uid == 0 {
            return Caller::Unrestricted;
        }
        let mut gids: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        // SAFETY: getgid has no preconditions.
        gids.push(unsafe { libc::getgid() });
        Caller::User { uid, gids }
    }

    /// The user's name, or their uid.
    pub fn name(&self) -> String {
        match self {
            Caller::Unrestricted => "root".into(),
            Caller::User { uid, .. } => user_name(*uid),
        }
    }
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// A request to hold SYNs: the ports, the devices whose clients wait, and
/// the bounds asked for.
#[derive(Debug, Clone)]
pub struct Hold<'a> {
    pub ports: &'a [u16],
    pub devices: &'a [String],
    pub hold: Duration,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct Policy {
    path: PathBuf,
    limits: Limits,
    grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    users: Vec<String>,
    groups: Vec<String>,
    ports: Vec<RangeInclusive<u16>>,
    devices: Vec<String>,
    limits: Limits,
    migrate: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Text {
    #[serde(default)]
    limits: LimitsText,
    #[serde(default)]
    allow: Vec<GrantText>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsText {
    max_hold: Option<String>,
    max_limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantText {
    #[serde(default)]
    users: Vec<Id>,
    #[serde(default)]
    groups: Vec<Id>,
    ports: Vec<Ports>,
    devices: Option<Vec<String>>,
    max_hold: Option<String>,
    max_limit: Option<u32>,
    #[serde(default)]
    migrate: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Number(u32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ports {
    One(u16),
    Range(String),
}

impl Policy {
    /// The policy at [`PATH`]; `None` if there is none.
    pub fn load() -> Result<Option<Policy>, PolicyError> {
        Policy::load_from(Path::new(PATH))
    }

    /// The policy at `path`, refused unless root alone can have written it.
    pub fn load_from(path: &Path) -> Result<Option<Policy>, PolicyError> {
        let io = |err| PolicyError::Io {
            path: path.to_owned(),
            err,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(PolicyError::Unsafe {
                    path: path.to_owned(),
                    why: "it is a symbolic link".into(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        root_only(path, &meta, "it")?;
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let m = std::fs::symlink_metadata(d).map_err(io)?;
            root_only(path, &m, &format!("its directory {}", d.display()))?;
            dir = d.parent();
        }
        let text = std::io::read_to_string(file).map_err(io)?;
        Policy::parse(path, &text).map(Some)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_owned(),
            message,
        };
        let t: Text = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let duration = |s: &str| {
            humantime::parse_duration(s).map_err(|e| invalid(format!("{s:?}: {e} (e.g. 1s)")))
        };
        let limits = Limits {
            max_hold: match &t.limits.max_hold {
                Some(s) => duration(s)?,
                None => DEFAULT_MAX_HOLD,
            },
            max_limit: t.limits.max_limit.unwrap_or(DEFAULT_MAX_LIMIT),
        };
        let mut grants = Vec::new();
        for (i, g) in t.allow.into_iter().enumerate() {
            let at = |m: String| invalid(format!("[[allow]] #{}: {m}", i + 1));
            let mut ports = Vec::new();
            for p in g.ports {
                ports.push(match p {
                    Ports::One(0) => return Err(at("port 0".into())),
                    Ports::One(p) => p..=p,
                    Ports::Range(r) => parse_range(&r).ok_or_else(|| {
                        at(format!(
                            "{r:?} is not a port or a range such as \"8000-8099\""
                        ))
                    })?,
                });
            }
            let grant_limits = Limits {
                max_hold: match &g.max_hold {
                    Some(s) => duration(s)?.min(limits.max_hold),
                    None => limits.max_hold,
                },
                max_limit: g
                    .max_limit
                    .unwrap_or(limits.max_limit)
                    .min(limits.max_limit),
            };
            let ids = |v: Vec<Id>| -> Vec<String> {
                v.into_iter()
                    .map(|i| match i {
                        Id::Number(n) => format!("#{n}"),
                        Id::Name(s) => s,
                    })
                    .collect()
            };
            grants.push(Grant {
                users: ids(g.users),
                groups: ids(g.groups),
                ports,
                devices: g.devices.unwrap_or_else(|| vec!["lo".into()]),
                limits: grant_limits,
                migrate: g.migrate,
            });
        }
        Ok(Policy {
            path: path.to_owned(),
            limits,
            grants,
        })
    }

    /// The bounds everyone works within.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn grants_for<'a>(&'a self, who: &'a Caller) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants.iter().filter(move |g| g.covers(who))
    }

    fn not_allowed(&self, who: &Caller, what: String) -> PolicyError {
        PolicyError::NotAllowed {
            user: who.name(),
            what,
            path: self.path.clone(),
        }
    }
}

/// `5s`, `1.5s`, `250ms`: as a user would have written it.
fn seconds(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ if d.as_secs() == 0 => format!("{}ms", d.as_millis()),
        _ => format!("{:.3}s", d.as_secs_f64()),
    }
}

fn parse_range(s: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b).then_some(a..=b)
}

fn root_only(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), PolicyError> {
    let why = if meta.uid() != 0 {
        format!("{what} belongs to uid {}", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "{what} is writable by others (mode {:o})",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(PolicyError::Unsafe {
        path: path.to_owned(),
        why,
    })
}

impl Grant {
    fn covers(&self, who: &Caller) -> bool {
        let Caller::User { uid, gids } = who else {
            return true;
        };
        let user_is = |id: &String| match id.strip_prefix('#') {
            Some(n) => n.parse() == Ok(*uid),
            None => {
                matches!(nix::unistd::User::from_name(id), Ok(Some(u)) if u.uid.as_raw() == *uid)
            }
        };
        let group_is = |id: &String| match id.strip_prefix('#') {
            Some(n) => n.parse().is_ok_and(|g: u32| gids.contains(&g)),
            None => {
                matches!(nix::unistd::Group::from_name(id), Ok(Some(g)) if gids.contains(&g.gid.as_raw()))
            }
        };
        self.users.iter().any(user_is) || self.groups.iter().any(group_is)
    }

    fn holds(&self, port: u16) -> bool {
        self.ports.iter().any(|r| r.contains(&port))
    }
}

/// Checks `req` for the current caller: against `[limits]` for everyone,
/// and against an `[[allow]]` entry for a user running us by our file
/// capability. Returns the bounds that apply.
pub fn authorize_hold(req: &Hold) -> Result<Limits, PolicyError> {
    authorize_hold_as(&Caller::current(), Policy::load()?.as_ref(), req)
}

pub fn authorize_hold_as(
    who: &Caller,
    policy: Option<&Policy>,
    req: &Hold,
) -> Result<Limits, PolicyError> {
    let path = policy.map_or_else(|| PathBuf::from(PATH), |p| p.path.clone());
    let limits = match who {
        Caller::Unrestricted => policy.map(Policy::limits).unwrap_or_default(),
        Caller::User { .. } => {
            let Some(policy) = policy else {
                return Err(PolicyError::NoPolicy {
                    user: who.name(),
                    path,
                });
            };
            if req.ports.is_empty() {
                return Err(PolicyError::EveryPort);
            }
            let fits = |g: &&Grant| {
                req.ports.iter().all(|p| g.holds(*p))
                    && req.devices.iter().all(|d| g.devices.contains(d))
            };
            let Some(grant) = policy.grants_for(who).find(fits) else {
                return Err(policy.not_allowed(
                    who,
                    format!("hold port(s) {:?} on {}", req.ports, req.devices.join(", ")),
                ));
            };
            grant.limits
        }
    };
    let whose = match who {
        Caller::Unrestricted => String::new(),
        Caller::User { .. } => format!(" for {}", who.name()),
    };
    if req.hold > limits.max_hold {
        return Err(PolicyError::OverLimit {
            flag: "--hold-limit",
            asked: seconds(req.hold),
            max: seconds(limits.max_hold),
            whose,
            path,
        });
    }
    if req.limit > limits.max_limit {
        return Err(PolicyError::OverLimit {
            flag: "--limit",
            asked: format!("{} bytes", req.limit),
            max: format!("{} bytes", limits.max_limit),
            whose,
            path,
        });
    }
    Ok(limits)
}

/// May the current caller act on `dev` at all (plug, release, teardown of
/// what is recorded as theirs)? Returns the widest bounds a grant for
/// `dev` gives them.
pub fn authorize_device(dev: &str) -> Result<Limits, PolicyError> {
    let who = Caller::current();
    let policy = Policy::load()?;
    if who == Caller::Unrestricted {
        return Ok(policy.map(|p| p.limits()).unwrap_or_default());
    }
    let policy = policy.ok_or_else(|| PolicyError::NoPolicy {
        user: who.name(),
        path: PATH.into(),
    })?;
    policy
        .grants_for(&who)
        .filter(|g| g.devices.iter().any(|d| d == dev))
        .map(|g| g.limits)
        .reduce(|a, b| Limits {
            max_hold: a.max_hold.max(b.max_hold),
            max_limit: a.max_limit.max(b.max_limit),
        })
        .ok_or_else(|| policy.not_allowed(&who, format!("act on {dev}")))
}

/// May the current caller change `net.ipv4.tcp_migrate_req`?
pub fn authorize_migrate() -> Result<(), PolicyError> {
    let who = Caller::current();
    if who == Caller::Unrestricted {
        return Ok(());
    }
    let policy = Policy::load()?.ok_or_else(|| PolicyError::NoPolicy {
        user: who.name(),
        path: PATH.into(),
    })?;
    if policy.grants_for(&who).any(|g| g.migrate) {
        return Ok(());
    }
    Err(policy.not_allowed(
        &who,
        "change net.ipv4.tcp_migrate_req (host-wide in this network namespace)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(Path::new("/test/policy.toml"), text).unwrap()
    }

    fn hold<'a>(ports: &'a [u16], devices: &'a [String], ms: u64) -> Hold<'a> {
        Hold {
            ports,
            devices,
            hold: Duration::from_millis(ms),
            limit: 10_000,
        }
    }

    const ALICE: &str =
        "[[allow]]\nusers = [1000]\nports = [7000, \"8000-8001\"]\nmax_hold = \"1s\"\n";

    fn alice() -> Caller {
        Caller::User {
            uid: 1000,
            gids: vec![1000],
        }
    }

    #[test]
    fn a_user_gets_only_their_ports_on_their_devices() {
        let p = policy(ALICE);
        let lo = ["lo".to_string()];
        let ok = authorize_hold_as(&alice(), Some(&p), &hold(&[7000, 8001], &lo, 500)).unwrap();
        assert_eq!(ok.max_hold, Duration::from_secs(1));
        for (ports, devs) in [
            (&[22u16][..], &lo[..]),
            (&[7000, 8002][..], &lo[..]),
            (&[7000][..], &["eth0".to_string()][..]),
        ] {
            let e = authorize_hold_as(&alice(), Some(&p), &hold(ports, devs, 500)).unwrap_err();
            assert!(matches!(e, PolicyError::NotAllowed { .. }), "{e}");
        }
        let other = Caller::User {
            uid: 1001,
            gids: vec![1001],
        };
        assert!(authorize_hold_as(&other, Some(&p), &hold(&[7000], &lo, 1)).is_err());
        let e = authorize_hold_as(&alice(), Some(&p), &hold(&[], &lo, 1)).unwrap_err();
        assert!(matches!(e, PolicyError::EveryPort), "{e}");
    }

    #[test]
    fn groups_by_gid() {
        let p = policy("[[allow]]\ngroups = [500]\nports = [9000]\n");
        let lo = ["lo".to_string()];
        let member = Caller::User {
            uid: 7,
            gids: vec![7, 500],
        };
        assert!(authorize_hold_as(&member, Some(&p), &hold(&[9000], &lo, 1)).is_ok());
        assert!(authorize_hold_as(&alice(), Some(&p), &hold(&[9000], &lo, 1)).is_err());
    }

    #[test]
    fn bounds_apply_to_everyone() {
        let lo = ["lo".to_string()];
        let e = authorize_hold_as(&Caller::Unrestricted, None, &hold(&[1], &lo, 6_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--hold-limit 6s is above the most allowed: 5s"),
            "{e}"
        );
        let p = policy("[limits]\nmax_hold = \"10s\"\n");
        assert!(
            authorize_hold_as(&Caller::Unrestricted, Some(&p), &hold(&[1], &lo, 6_000)).is_ok()
        );
        // A grant never goes past [limits].
        let p = policy(&format!("[limits]\nmax_hold = \"200ms\"\n{ALICE}"));
        assert!(authorize_hold_as(&alice(), Some(&p), &hold(&[7000], &lo, 500)).is_err());
        let mut big = hold(&[7000], &lo, 1);
        big.limit = u32::MAX;
        let e = authorize_hold_as(&Caller::Unrestricted, None, &big).unwrap_err();
        assert!(e.to_string().contains("--limit 4294967295 bytes"), "{e}");
    }

    #[test]
    fn no_policy_refuses_a_user_and_says_how_to_allow() {
        let lo = ["lo".to_string()];
        let e = authorize_hold_as(&alice(), None, &hold(&[7000], &lo, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no policy allows anything"), "{e}");
        assert!(e.contains("[[allow]]"), "{e}");
    }

    #[test]
    fn bad_text_is_an_error_naming_the_file() {
        for text in [
            "[[allow]]\nusers = [1]\n",            // no ports
            "[[allow]]\nports = [\"9-1\"]\n",      // reversed range
            "[[allow]]\nports = [0]\n",            // port 0
            "[limits]\nmax_hold = \"soon\"\n",     // no duration
            "[[allow]]\nports = [1]\nuser = []\n", // misspelt key
        ] {
            let e = Policy::parse(Path::new("/p.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/p.toml: "), "{text}: {e}");
        }
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        // A fresh directory of ours, mode 0700, made exclusively (nobody
        // can have planted it).
        let tmp = tempfile::Builder::new()
            .prefix("policy-test-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_owned();
        let file = dir.join("policy.toml");
        std::fs::write(&file, ALICE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Policy::load_from(&file).unwrap_err();
        // The temporary directory (sticky, world-writable) or the file.
        assert!(matches!(e, PolicyError::Unsafe { .. }), "{e}");
        let link = dir.join("link.toml");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = Policy::load_from(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(Policy::load_from(&dir.join("absent.toml"))
            .unwrap()
            .is_none());
    }
}
