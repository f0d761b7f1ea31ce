//! What each `--strategy` needs, decided in one place: what the policy
//! must allow, the watchdog, the BPF program and the capability to keep
//! (`start`, before the runtime exists, with the capabilities we started
//! with), then the strategy itself and what it holds (`prepare`), and the
//! line that says why it can work here (`describe`).

use std::net::SocketAddr;

use anyhow::Context as _;
use qdisc::{Config, Plug};

use crate::logging::log;
use crate::swap::{self, NoSwap, PlugSwap, Swap};
use crate::{handoff, kernel, owner, privs, softnet, steer, LocalHold, RunArgs, Strategy};

/// Why `start` refused: said on stderr, exit status `code` (2: bad input
/// or a refusal of the policy; 1: the system failed).
pub struct Refused {
    pub code: u8,
    pub message: String,
}

impl Refused {
    fn input(message: impl ToString) -> Refused {
        Refused {
            code: 2,
            message: message.to_string(),
        }
    }
    fn system(message: impl ToString) -> Refused {
        Refused {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// What `start` made while it still had its capabilities.
pub struct Early {
    watchdog: Option<qdisc::watchdog::Watchdog>,
    steer: Option<steer::Steer>,
}

/// What a strategy asks of the process before it drops privileges.
#[derive(Default)]
struct Needs {
    /// Root's policy must allow holding the served ports.
    hold: bool,
    /// Root's policy must allow changing `tcp_migrate_req`.
    migrate: bool,
    /// A forked watchdog restores what a killed reloader leaves.
    watchdog: bool,
    /// The BPF program, loaded now.
    steer: bool,
    /// The one capability kept, and what for; none: all are dropped.
    keep: Option<(privs::Capability, &'static str)>,
}

fn needs(args: &RunArgs) -> Result<Needs, Refused> {
    Ok(match args.strategy {
        Strategy::Plug => Needs {
            hold: true,
            watchdog: true,
            keep: Some((privs::Capability::CAP_NET_ADMIN, "plug and release")),
            ..Needs::default()
        },
        Strategy::Migrate => {
            let on = swap::MigrateSwap::already_on().map_err(Refused::input)?;
            Needs {
                migrate: !on,
                watchdog: !on,
                keep: (!on).then_some((
                    privs::Capability::CAP_NET_ADMIN,
                    "set net.ipv4.tcp_migrate_req",
                )),
                ..Needs::default()
            }
        }
        Strategy::Handoff => Needs {
            keep: (args.addr.iter().any(|a| a.port() < 1024) && !handoff::activated()).then_some((
                privs::Capability::CAP_NET_BIND_SERVICE,
                "listen on a port below 1024",
            )),
            ..Needs::default()
        },
        Strategy::Steer => Needs {
            steer: true,
            ..Needs::default()
        },
        Strategy::None => Needs::default(),
    })
}

/// Everything before the runtime: checks the policy, forks the watchdog
/// (while we have one thread), loads the BPF program, then keeps one
/// capability at most (capability sets are per thread).
pub fn start(args: &RunArgs) -> Result<Early, Refused> {
    if args.probation.is_some() && args.strategy != Strategy::Steer {
        return Err(Refused::input("--probation needs --strategy steer (only the BPF program can send a share of new connections to the new server)"));
    }
    let needs = needs(args)?;
    if needs.hold {
        authorize_hold(args).map_err(Refused::input)?;
    }
    if needs.migrate {
        qdisc::policy::authorize_migrate().map_err(Refused::input)?;
    }
    crate::warn_if_open_to_all();
    let watchdog = match needs.watchdog {
        true => Some(
            qdisc::watchdog::Watchdog::spawn(
                plug_devs(args),
                args.hold_limit + crate::WATCHDOG_MARGIN,
            )
            .map_err(|e| Refused::system(format!("cannot start the watchdog: {e}")))?,
        ),
        false => None,
    };
    // Loaded with the capabilities we start with; the maps are then
    // written through their fds, which needs none.
    let steer = match needs.steer {
        true => Some(steer::Steer::load(&args.addr).map_err(Refused::system)?),
        false => None,
    };
    match needs.keep {
        Some((cap, why)) => privs::restrict_to(cap, why, &args.server_caps),
        None => privs::drop_all(&args.server_caps),
    }
    .map_err(Refused::input)?;
    Ok(Early { watchdog, steer })
}

/// What the policy (`qdisc::policy`) says of holding this run's ports on
/// its devices, for its hold's bound.
fn authorize_hold(args: &RunArgs) -> Result<(), String> {
    use qdisc::policy;
    let user = policy::Caller::current();
    if user != policy::Caller::Unrestricted && args.local_hold == LocalHold::Egress {
        return Err(format!(
            "as {}, --local-hold egress is refused: the tree on {}'s root queues every packet it sends; it is root's (the default, ingress, holds only your ports' SYNs)",
            user.name(),
            args.dev
        ));
    }
    let mut devices: Vec<String> = args.ingress_devs().into_iter().map(String::from).collect();
    if args.local_hold == LocalHold::Egress {
        devices.insert(0, args.dev.clone());
    }
    policy::authorize_hold(&policy::Hold {
        ports: &args.ports(),
        devices: &devices,
        hold: args.hold_limit,
        limit: qdisc::DEFAULT_LIMIT,
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The plugs the strategy holds (none but the plug strategy's).
fn plug_devs(args: &RunArgs) -> Vec<String> {
    match args.strategy {
        Strategy::Plug => args.plug_devs(),
        _ => Vec::new(),
    }
}

/// The strategy, ready, and what the supervisor and the report need of it.
pub struct Prepared {
    pub swap: Box<dyn Swap>,
    /// The handoff strategy's sockets.
    pub handoff: Option<handoff::Handoff>,
    /// The plugs held (their devices), for the report.
    pub plug_devs: Vec<String>,
    /// The ifbs whose queues a hold waits out.
    pub ifbs: Vec<String>,
    /// One service per plug: kept for as long as we run.
    pub owners: Vec<owner::Owner>,
}

/// Sets the strategy up: the plug tree or ingress paths (and their owner
/// records), `tcp_migrate_req`, the handed-over sockets, the BPF program.
pub fn prepare(args: &RunArgs, early: Early) -> anyhow::Result<Prepared> {
    let mut prepared = Prepared {
        swap: Box::new(NoSwap),
        handoff: None,
        plug_devs: plug_devs(args),
        ifbs: Vec::new(),
        owners: Vec::new(),
    };
    prepared.swap = match args.strategy {
        Strategy::Plug => {
            let mut plugs = Vec::new();
            if args.local_hold == LocalHold::Egress {
                anyhow::ensure!(
                    args.ports().len() == 1,
                    "--local-hold egress holds one port (the tree's filter); drop it to hold ports {:?} on {}'s ingress",
                    args.ports(),
                    args.dev
                );
                prepared
                    .owners
                    .push(owner::take(&args.dev, args.addr[0].port())?);
                plugs.push(prepare_plug(args)?);
            } else {
                warn_egress_tree(&args.dev)?;
            }
            for dev in args.ingress_devs() {
                prepared
                    .owners
                    .push(owner::take(&args.ifb_of(dev), args.addr[0].port())?);
                plugs.push(prepare_ingress(args, dev)?);
                prepared.ifbs.push(args.ifb_of(dev));
            }
            if softnet::backlogs()?.is_none() {
                log("fallback: this kernel's /proc/net/softnet_stat has no backlog column (before 5.10): each hold waits a fixed 5 ms for SYNs still in a CPU's backlog");
            }
            Box::new(PlugSwap::new(plugs, early.watchdog))
        }
        Strategy::Migrate => Box::new(swap::MigrateSwap::enable(early.watchdog)?),
        Strategy::Handoff => {
            prepared.handoff = Some(handoff_sockets(&args.addr)?);
            Box::new(swap::HandoffSwap)
        }
        Strategy::Steer => Box::new(swap::SteerSwap(early.steer.expect("loaded by start"))),
        Strategy::None => Box::new(NoSwap),
    };
    Ok(prepared)
}

/// One line at start: the strategy, and what in this kernel and this
/// process makes it work (or not).
pub fn describe(args: &RunArgs, handoff: Option<&handoff::Handoff>) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let migrate = match kernel::migrate_req() {
        Ok(true) => "tcp_migrate_req=1",
        Ok(false) => "tcp_migrate_req=0",
        Err(_) => "tcp_migrate_req unreadable",
    };
    match args.strategy {
        Strategy::Plug if migrate == "tcp_migrate_req=1" => format!(
            "strategy plug (kernel {kernel}, CAP_NET_ADMIN, plug tree ready): {migrate}, and each listener close is held anyway, at most {:?}: the kernel's migration alone lost 7 of 560,326 requests in our soak",
            args.hold_limit
        ),
        Strategy::Plug => format!(
            "strategy plug (kernel {kernel}, CAP_NET_ADMIN, plug tree ready): {migrate}, so each listener close is held, at most {:?}",
            args.hold_limit
        ),
        Strategy::Migrate => format!(
            "strategy migrate (kernel {kernel}): {migrate} in this network namespace, restored at exit; nothing is held. Not zero-loss under load (7 of 560,326 requests reset in our soak on Linux 6.1): use plug or handoff for that"
        ),
        Strategy::Handoff => format!(
            "strategy handoff (kernel {kernel}): the reloader listens on {} and gives every generation these sockets (LISTEN_FDS, LISTEN_FDNAMES={}); nothing is held, no CAP_NET_ADMIN",
            handoff.map(|h| h.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
            handoff.map(|h| h.names()).unwrap_or_default(),
        ),
        Strategy::Steer => format!(
            "strategy steer (kernel {kernel}, program loaded on {} group(s)): each new connection goes to the generation chosen, by a BPF program on the SO_REUSEPORT group; a closing listener's leftovers migrate to it; nothing is held",
            args.addr.len()
        ),
        Strategy::None => format!(
            "strategy none (kernel {kernel}): no protection; for comparison only"
        ),
    }
}

/// Makes sure the plug tree is there (setting it up unless told not to) and
/// releases a plug a killed predecessor may have left buffering.
fn prepare_plug(args: &RunArgs) -> anyhow::Result<Plug> {
    let status = qdisc::status(&args.dev)?;
    if args.no_setup {
        if !status.complete() {
            anyhow::bail!(
                "the plug tree is missing or incomplete on {}: run `qdisc setup --dev {} --port {}`, or drop --no-setup",
                args.dev, args.dev, args.addr[0].port()
            );
        }
    } else {
        // Set up, or scope an existing tree to our port: only SYNs to the
        // served port are held, never the machine's other connections.
        let classifier = match status.complete() {
            true => status.classifier().unwrap_or(args.classifier),
            false => args.classifier,
        };
        qdisc::setup(&Config {
            dev: args.dev.clone(),
            classifier,
            port: Some(args.addr[0].port()),
            ..Config::default()
        })
        .context("setting up the plug tree")?;
        log(&format!(
            "plug tree on {} holds SYNs to port {} only (classifier {})",
            args.dev,
            args.addr[0].port(),
            classifier.kind()
        ));
    }
    open_released(&args.dev)
}

/// An egress tree left on `dev` (`qdisc setup`, or an older reloader)
/// queues every packet `dev` sends: said at start, so the user can remove it.
fn warn_egress_tree(dev: &str) -> anyhow::Result<()> {
    let status = qdisc::status(dev)?;
    if status.root {
        log(&format!(
            "warning: an egress plug tree is installed on {dev}: every packet {dev} sends passes its queue (reordered across CPUs on lo and veth); this reloader holds on {dev}'s ingress and does not need it; remove it with `qdisc --dev {dev} teardown`"
        ));
        if status.buffering == Some(true) {
            open_released(dev)?;
        }
    }
    Ok(())
}

/// Opens the plug on `dev` and releases it: a reloader killed mid-reload
/// leaves it buffering, and nobody else would.
fn open_released(dev: &str) -> anyhow::Result<Plug> {
    let mut plug = Plug::open(dev)?;
    let was = qdisc::status(dev)?.buffering;
    plug.release()?;
    if was == Some(true) {
        log(&format!(
            "released a plug left buffering by an earlier reloader ({dev})"
        ));
    }
    Ok(plug)
}

/// The ingress path of `dev` (an ifb of ours holds the SYNs to our port
/// that arrive on it), set up unless told not to.
fn prepare_ingress(args: &RunArgs, dev: &str) -> anyhow::Result<Plug> {
    let ports = args.ports();
    if args.no_setup {
        let s = qdisc::ingress::status(dev, &ports)?;
        let flags: Vec<String> = ports.iter().map(|p| format!("--port {p}")).collect();
        anyhow::ensure!(
            s.complete(),
            "the ingress path is missing or incomplete on {dev}: run `qdisc --dev {dev} --ingress setup {}`, or drop --no-setup",
            flags.join(" ")
        );
    } else {
        qdisc::ingress::setup(&qdisc::IngressConfig {
            dev: dev.to_owned(),
            ports: ports.clone(),
            limit: qdisc::DEFAULT_LIMIT,
            force: args.force,
        })
        .with_context(|| format!("setting up the ingress path on {dev}"))?;
        let which = match ports.as_slice() {
            [p] => format!("port {p}"),
            many => format!("ports {many:?}"),
        };
        log(&format!(
            "ingress path on {dev} holds SYNs to {which} only (u32 redirect to {})",
            args.ifb_of(dev)
        ));
    }
    open_released(&args.ifb_of(dev))
}

/// The handoff strategy's sockets: those our own supervisor passed us
/// (socket activation), which must include `--addr`'s first address (the
/// watched port, the check), or else ours, bound now.
fn handoff_sockets(addrs: &[SocketAddr]) -> anyhow::Result<handoff::Handoff> {
    match handoff::Handoff::inherited().context("the sockets passed by systemd")? {
        Some(h) => {
            anyhow::ensure!(
                h.addrs.contains(&addrs[0]),
                "systemd passed sockets on {:?}, but --addr {} is not among them: give --addr one of those",
                h.addrs,
                addrs[0]
            );
            log(&format!(
                "handoff: serving the sockets systemd passed (LISTEN_FDS): {:?}",
                h.addrs
            ));
            Ok(h)
        }
        None => handoff::Handoff::open(addrs, 4096).context("opening the handed-over sockets"),
    }
}
