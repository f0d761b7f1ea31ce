//! `--strategy steer`: a BPF program on each served SO_REUSEPORT group
//! (`bpf/steer.bpf.c`) chooses the listener of every new connection by
//! generation, so nothing is ever held:
//!
//! - a new generation's listeners join the group, and are put in the
//!   standby slot of the program's socket array: no client reaches them,
//!   but the reloader's own check (matched by its source address) does;
//! - `cut_over` makes the standby slot the active one: one map write sends
//!   every later SYN to the new generation;
//! - the old one gets nothing new; once its accept queue is empty it is
//!   signalled, and what its closing listeners still have (queued or half
//!   open) the kernel migrates to the active slot (attach type
//!   `SELECT_OR_MIGRATE`, Linux 5.14+, whatever `tcp_migrate_req` says).
//!
//! The program and its maps belong to the group, not to us: a reloader
//! killed with SIGKILL leaves the last choice in force, and the next one
//! attaches its own program over it. We keep no socket of a server's: a
//! duplicate would keep its listener open after the server closed it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::Ebpf;

use crate::generation::Generation;

/// The compiled program (`build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Listeners one generation may have in one group (nginx's `reuseport`
/// gives one per worker); `PER_SLOT` in the program.
pub const PER_SLOT: u32 = 64;

/// `struct conf` of the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Conf {
    active: u32,
    count: [u32; 2],
    probe_family: u32,
    probe_slot: u32,
    probe_addr: [u32; 4],
    probe_port: u32,
    canary_share: u32,
    canary_slot: u32,
}

// SAFETY: plain old data, `repr(C)`, no padding (all u32).
unsafe impl aya::Pod for Conf {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the steering program: {0} (steer needs Linux 5.14+ and CAP_BPF with CAP_NET_ADMIN, or root)")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the steering program's map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("taking PID {pid}'s fd {fd} (pidfd_getfd): {source}")]
    GetFd {
        pid: u32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("reading PID {pid}'s sockets: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "PID {pid} holds {found} of its {listeners} listeners no more (closed since it joined?)"
    )]
    Lost {
        pid: u32,
        found: usize,
        listeners: usize,
    },
    #[error("PID {pid} has no listener on {addr} (an --addr of ours): it cannot be steered there")]
    NotOn { pid: u32, addr: SocketAddr },
    #[error("PID {pid} listens on {addr}, which is no --addr of ours: it cannot be steered")]
    Unserved { pid: u32, addr: String },
    #[error(
        "PID {pid} has {n} listeners on {addr}; steer takes at most {PER_SLOT} per generation"
    )]
    TooMany {
        pid: u32,
        addr: SocketAddr,
        n: usize,
    },
    #[error(
        "a listener on {addr} is still in another BPF map after {waited:?} (EBUSY): another steering program holds it; stop that program's owner, then start again"
    )]
    Busy { addr: SocketAddr, waited: Duration },
    #[error("attaching the steering program to the group of {addr}: {source}")]
    Attach {
        addr: SocketAddr,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// One SO_REUSEPORT group (one `--addr`): its program and maps.
struct Group {
    addr: SocketAddr,
    ebpf: Ebpf,
    socks: ReusePortSockArray<MapData>,
    conf: Array<MapData, Conf>,
    counts: Array<MapData, u64>,
    now: Conf,
}

pub struct Steer {
    groups: Vec<Group>,
}

impl Steer {
    /// Loads one program per served address (needs the BPF capabilities;
    /// nothing after this does).
    pub fn load(addrs: &[SocketAddr]) -> Result<Steer, Error> {
        let mut groups = Vec::new();
        for &addr in addrs {
            let mut ebpf = Ebpf::load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
            let prog: &mut SkReuseport = ebpf
                .program_mut("steer")
                .ok_or_else(|| Error::Load("no program `steer` in the object".into()))?
                .try_into()
                .map_err(|e| Error::Load(Box::new(e)))?;
            prog.load().map_err(|e| Error::Load(Box::new(e)))?;
            let map = |ebpf: &mut Ebpf, name: &'static str| {
                ebpf.take_map(name)
                    .ok_or_else(|| Error::Load(format!("no map `{name}` in the object").into()))
            };
            let m = map(&mut ebpf, "socks")?;
            let socks = ReusePortSockArray::try_from(m).map_err(|source| Error::Map {
                name: "socks",
                source,
            })?;
            let m = map(&mut ebpf, "conf")?;
            let conf = Array::try_from(m).map_err(|source| Error::Map {
                name: "conf",
                source,
            })?;
            let m = map(&mut ebpf, "counts")?;
            let counts = Array::try_from(m).map_err(|source| Error::Map {
                name: "counts",
                source,
            })?;
            groups.push(Group {
                addr,
                ebpf,
                socks,
                conf,
                counts,
                now: Conf::default(),
            });
        }
        Ok(Steer { groups })
    }

    /// Puts `gens`' listeners in the standby slot of their groups (what was
    /// there before is cleared): they get no client until `cut_over`, but
    /// for the check (`probe`). Attaches the program to each group.
    pub fn admit(&mut self, gens: &[&Generation]) -> Result<(), Error> {
        let mut by_group: BTreeMap<usize, Vec<OwnedFd>> = BTreeMap::new();
        for gen in gens {
            let fds = gen.fds_of(&gen.listeners).map_err(|source| Error::Proc {
                pid: gen.pid,
                source,
            })?;
            if fds.len() != gen.listeners.len() {
                return Err(Error::Lost {
                    pid: gen.pid,
                    found: fds.len(),
                    listeners: gen.listeners.len(),
                });
            }
            for (pid, fd) in fds {
                let sock = crate::privs::inspecting(|| get_fd(pid, fd))?;
                let local = local_addr(&sock).map_err(|source| Error::Proc { pid, source })?;
                let Some(i) = self.groups.iter().position(|g| Some(g.addr) == local) else {
                    return Err(Error::Unserved {
                        pid,
                        addr: local.map_or("a non-IP address".into(), |a| a.to_string()),
                    });
                };
                by_group.entry(i).or_default().push(sock);
            }
        }
        if let Some(g) = (0..self.groups.len()).find(|i| !by_group.contains_key(i)) {
            return Err(Error::NotOn {
                pid: gens[0].pid,
                addr: self.groups[g].addr,
            });
        }
        for (i, socks) in by_group {
            let g = &mut self.groups[i];
            if socks.len() > PER_SLOT as usize {
                return Err(Error::TooMany {
                    pid: gens[0].pid,
                    addr: g.addr,
                    n: socks.len(),
                });
            }
            // Attached first: a predecessor's program (a reloader killed
            // with SIGKILL) is replaced now, and its map, which still
            // holds these sockets, is freed soon after.
            let prog: &SkReuseport = g
                .ebpf
                .program("steer")
                .expect("loaded in `load`")
                .try_into()
                .expect("an SkReuseport program");
            prog.attach(socks[0].as_fd())
                .map_err(|source| Error::Attach {
                    addr: g.addr,
                    source,
                })?;
            let standby = 1 - g.now.active;
            for k in 0..PER_SLOT {
                // Most are empty already (ENOENT): nothing to clear.
                let _ = g.socks.clear_index(&(standby * PER_SLOT + k));
            }
            for (k, s) in socks.iter().enumerate() {
                g.set(standby * PER_SLOT + k as u32, s)?;
            }
            g.now.count[standby as usize] = socks.len() as u32;
            g.write()?;
        }
        Ok(())
    }

    /// Connections from `src` (the check's own socket) go to the standby
    /// slot; `None` ends that.
    pub fn probe(&mut self, src: Option<SocketAddr>) -> Result<(), Error> {
        for g in &mut self.groups {
            let (family, addr, port) = match src {
                None => (0, [0; 4], 0),
                Some(SocketAddr::V4(a)) => {
                    (4, [u32::from_ne_bytes(a.ip().octets()), 0, 0, 0], a.port())
                }
                Some(SocketAddr::V6(a)) => {
                    let o = a.ip().octets();
                    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    (6, [w(0), w(4), w(8), w(12)], a.port())
                }
            };
            g.now.probe_family = family;
            g.now.probe_addr = addr;
            // The TCP header's source port as the program reads it.
            g.now.probe_port = u32::from(u16::from_ne_bytes(port.to_be_bytes()));
            g.now.probe_slot = 1 - g.now.active;
            g.write()?;
        }
        Ok(())
    }

    /// The standby slot becomes the active one: every new connection goes
    /// to the generation admitted last.
    pub fn cut_over(&mut self) -> Result<(), Error> {
        for g in &mut self.groups {
            g.now.active = 1 - g.now.active;
            g.now.probe_family = 0;
            g.now.canary_share = 0;
            g.write()?;
        }
        Ok(())
    }

    /// The standby slot gets `share` (of 10,000) of new connections, by
    /// the kernel's hash of each connection's addresses and ports.
    pub fn canary(&mut self, share: u32) -> Result<(), Error> {
        for g in &mut self.groups {
            g.now.canary_slot = 1 - g.now.active;
            g.now.canary_share = share.min(10_000);
            g.write()?;
        }
        Ok(())
    }

    /// New connections chosen so far for (the active slot, the standby
    /// slot), all groups.
    pub fn shares(&self) -> Result<(u64, u64), Error> {
        let mut out = (0, 0);
        for g in &self.groups {
            let get = |i: u32| {
                g.counts.get(&i, 0).map_err(|source| Error::Map {
                    name: "counts",
                    source,
                })
            };
            out.0 += get(g.now.active)?;
            out.1 += get(1 - g.now.active)?;
        }
        Ok(out)
    }

    /// A generation admitted but not cut over (its check failed) leaves the
    /// standby slot.
    pub fn dismiss(&mut self) -> Result<(), Error> {
        for g in &mut self.groups {
            let standby = 1 - g.now.active;
            g.now.count[standby as usize] = 0;
            g.now.probe_family = 0;
            g.now.canary_share = 0;
            g.write()?;
        }
        Ok(())
    }

    /// Connections the programs sent so far: (to a generation, migrated
    /// from a closing listener, left to the kernel's choice), all groups.
    pub fn counts(&self) -> Result<(u64, u64, u64), Error> {
        let mut out = (0, 0, 0);
        for g in &self.groups {
            let get = |i: u32| {
                g.counts.get(&i, 0).map_err(|source| Error::Map {
                    name: "counts",
                    source,
                })
            };
            out.0 += get(0)? + get(1)?;
            out.1 += get(2)? + get(3)?;
            out.2 += get(4)?;
        }
        Ok(out)
    }
}

/// How long a predecessor's map may keep our sockets (`EBUSY`) after its
/// program was replaced. The kernel frees it once an RCU grace period has
/// passed (tens of milliseconds; docs/testing.md): this bound is the
/// kernel's own RCU stall timeout (21 s by default, 60 s at most), past
/// which the kernel itself reports a stall.
/// Only an adopted generation's sockets can be held so (a new one's are
/// fresh), and the orphans serve meanwhile: waiting costs no client.
const BUSY_FOR: Duration = Duration::from_secs(60);

impl Group {
    /// `socks[index] = sock`, waiting out a predecessor's map.
    fn set(&mut self, index: u32, sock: &OwnedFd) -> Result<(), Error> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut busy = false;
        loop {
            match self.socks.set(index, sock, 0) {
                Ok(()) => {
                    if busy {
                        crate::logging::log(&format!(
                            "steer: {}: a killed reloader's map held a listener for {} ms (freed by the kernel after an RCU grace period)",
                            self.addr,
                            start.elapsed().as_millis()
                        ));
                    }
                    return Ok(());
                }
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
                {
                    if start.elapsed() >= BUSY_FOR {
                        return Err(Error::Busy {
                            addr: self.addr,
                            waited: start.elapsed(),
                        });
                    }
                    busy = true;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(64));
                }
                Err(source) => {
                    return Err(Error::Map {
                        name: "socks",
                        source,
                    })
                }
            }
        }
    }

    fn write(&mut self) -> Result<(), Error> {
        self.conf.set(0, self.now, 0).map_err(|source| Error::Map {
            name: "conf",
            source,
        })
    }
}

/// A duplicate of `pid`'s `fd` (`pidfd_getfd(2)`: a parent may, for its
/// children of the same user).
fn get_fd(pid: u32, fd: i32) -> Result<OwnedFd, Error> {
    let err = |source| Error::GetFd { pid, fd, source };
    // SAFETY: pidfd_open takes a pid and flags; the result is a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags (0).
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd (close-on-exec, as pidfd_getfd makes them) we own.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

fn local_addr(sock: &OwnedFd) -> std::io::Result<Option<SocketAddr>> {
    let s = socket2::SockRef::from(sock);
    Ok(s.local_addr()?.as_socket())
}
