//! The library's error: what we were doing, the errno and the kernel's own
//! text, and what the user should do about it.

use std::fmt;
use std::io;

/// What an operation touched, so an error can say what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Qdisc(&'static str),
    Filter(&'static str),
    /// A change to a qdisc that must already exist (the plug toggles).
    Existing(&'static str),
    NfTables,
    /// A network device of a kind (the ifb).
    Link(&'static str),
    Other,
}

/// A kernel feature an error showed missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Qdisc(&'static str),
    Classifier(&'static str),
    Action(&'static str),
    Link(&'static str),
    NfTables,
}

#[derive(Debug)]
pub enum Error {
    /// The kernel refused a request.
    Kernel {
        /// What we asked, e.g. "add plug qdisc 40: on lo".
        op: String,
        object: Object,
        errno: i32,
        /// The kernel's extended-ack text, when it sent one.
        text: Option<String>,
    },
    /// No network device by that name (in this network namespace).
    NoDevice(String),
    /// A socket-level failure (not a refusal by the kernel).
    Io { op: String, source: io::Error },
    /// Something already on the device that is not ours and that we will not replace.
    NotOurs { dev: String, what: String },
    /// An object of ours recorded as another user's.
    Owned { what: String, uid: u32, pid: u32 },
    /// The kernel answered in a way we do not understand.
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The advice for needing CAP_NET_ADMIN, said the same way everywhere.
pub const NEEDS_CAP_NET_ADMIN: &str =
    "needs CAP_NET_ADMIN: run as root or `sudo setcap cap_net_admin+ep <binary>`";

impl Error {
    /// The errno, so callers can match ENOENT, EEXIST, EPERM.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel's extended-ack text, if any.
    pub fn kernel_text(&self) -> Option<&str> {
        match self {
            Error::Kernel { text, .. } => text.as_deref(),
            _ => None,
        }
    }

    /// Whether this says the kernel lacks the kind of object asked for.
    pub fn is_unsupported(&self) -> bool {
        self.missing().is_some()
    }

    /// The kernel feature this error shows missing, read from the errno,
    /// what we asked for and the kernel's own text.
    pub fn missing(&self) -> Option<Missing> {
        let Error::Kernel {
            object,
            errno,
            text,
            ..
        } = self
        else {
            return None;
        };
        let text = text.as_deref().unwrap_or("");
        match (*errno, object) {
            (libc::ENOENT, Object::Qdisc(kind))
                if text.contains("kind is unknown")
                    || text == "Specified qdisc not found"
                    || text.is_empty() =>
            {
                Some(Missing::Qdisc(kind))
            }
            (libc::ENOENT, Object::Filter(_)) if text.contains("action module") => {
                Some(Missing::Action("mirred"))
            }
            (libc::ENOENT, Object::Filter(kind))
                if text.contains("classifier not found") || text.is_empty() =>
            {
                Some(Missing::Classifier(kind))
            }
            (libc::EOPNOTSUPP, Object::Link(kind)) => Some(Missing::Link(kind)),
            (libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP, Object::NfTables) => {
                Some(Missing::NfTables)
            }
            (libc::ENOENT, Object::NfTables) if text.is_empty() => Some(Missing::NfTables),
            _ => None,
        }
    }

    /// What to do, when we can tell.
    pub fn advice(&self) -> Option<String> {
        let Error::Kernel { object, errno, .. } = self else {
            return None;
        };
        if *errno == libc::EPERM {
            return Some(NEEDS_CAP_NET_ADMIN.into());
        }
        if let Some(m) = self.missing() {
            return Some(match m {
                Missing::Qdisc(kind) => format!(
                    "kernel lacks the {kind} qdisc ({}): load the module or use a kernel that has it",
                    config_name(kind)
                ),
                Missing::Classifier(kind) => format!(
                    "kernel lacks the {kind} classifier ({}): load the module or use a kernel that has it",
                    config_name(kind)
                ),
                Missing::Action(kind) => format!(
                    "kernel lacks the {kind} action ({}): load the module or use a kernel that has it",
                    config_name(kind)
                ),
                Missing::Link(kind) => format!(
                    "kernel lacks {kind} devices ({}): load the module or use a kernel that has it",
                    config_name(kind)
                ),
                Missing::NfTables => {
                    "kernel lacks nf_tables (CONFIG_NF_TABLES, route chains): use --classifier u32, which needs no netfilter".into()
                }
            });
        }
        match (*errno, object) {
            (libc::ENOENT, Object::Existing(kind)) => Some(format!(
                "there is no {kind} qdisc of ours on this device: run `qdisc setup` first"
            )),
            _ => None,
        }
    }
}

/// The module and config option that provide a qdisc or classifier.
fn config_name(kind: &str) -> String {
    match kind {
        "prio" => "sch_prio, CONFIG_NET_SCH_PRIO".into(),
        "plug" => "sch_plug, CONFIG_NET_SCH_PLUG".into(),
        "pfifo" => "CONFIG_NET_SCH_FIFO".into(),
        "fw" => "cls_fw, CONFIG_NET_CLS_FW".into(),
        "u32" => "cls_u32, CONFIG_NET_CLS_U32".into(),
        "ingress" => "sch_ingress, CONFIG_NET_SCH_INGRESS".into(),
        "mirred" => "act_mirred, CONFIG_NET_ACT_MIRRED".into(),
        "ifb" => "ifb, CONFIG_IFB".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Kernel {
                op, errno, text, ..
            } => {
                let strerror = io::Error::from_raw_os_error(*errno);
                match self.advice() {
                    Some(advice) => write!(f, "{op}: {advice}")?,
                    None => write!(f, "{op}: {strerror}")?,
                }
                match text {
                    Some(t) if !t.is_empty() => write!(f, " (kernel: \"{t}\", errno {errno})"),
                    _ => write!(f, " (errno {errno}: {strerror})"),
                }
            }
            Error::NoDevice(dev) => write!(
                f,
                "device {dev} not found (in this network namespace): check the name with `ip link`"
            ),
            Error::Io { op, source } => {
                if source.raw_os_error() == Some(libc::EPERM) {
                    write!(f, "{op}: {NEEDS_CAP_NET_ADMIN}")
                } else {
                    write!(f, "{op}: {source}")
                }
            }
            Error::NotOurs { dev, what } => write!(
                f,
                "{dev} already has {what}, which this tool did not create; refusing to replace it \
                 (remove it yourself, or use another device)"
            ),
            Error::Owned { what, uid, pid } => write!(
                f,
                "{what} belongs to uid {uid} (set up by PID {pid}): only that user may plug, release or remove it (root may take it over with --force)"
            ),
            Error::Protocol(what) => write!(f, "unexpected netlink reply: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
