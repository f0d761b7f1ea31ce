//! Is the new generation serving? One HTTP/1.1 GET on a fresh connection.
//!
//! Default check (as the seed): `GET /` on the server's address answers 200
//! with the new server's PID as the body. With `--health URL`, the URL must
//! answer 2xx, and when the response names its server (`x-server-pid`),
//! that must be the new one: with SO_REUSEPORT the old server may answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone)]
pub enum Check {
    /// `GET /` on this address must be answered by the new PID.
    Pid(SocketAddr),
    /// `GET path` on this address must answer 2xx (from the new PID, if it says).
    Url { addr: SocketAddr, path: String },
    /// A check played by a unit test: called with the new PID.
    #[cfg(test)]
    Scripted(Scripted),
}

#[cfg(test)]
#[derive(Clone)]
pub struct Scripted(pub std::sync::Arc<dyn Fn(u32) -> Result<(), Failed> + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl Check {
    /// Parses `http://IP:PORT/path`.
    pub fn from_url(url: &str) -> Result<Check, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--health {url:?}: want http://IP:PORT/PATH"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host.parse().map_err(|_| {
            format!("--health {url:?}: {host:?} is not IP:PORT (use [::1]:PORT for IPv6)")
        })?;
        Ok(Check::Url {
            addr,
            path: path.to_owned(),
        })
    }

    /// One attempt against the new server, led by PID `pid` (`is_new`
    /// tells whether an answering PID is one of its processes: a launcher's
    /// child, a master's worker): at `at` (its private gate address, when it
    /// has one) or at the configured address.
    pub async fn once(
        &self,
        pid: u32,
        is_new: &dyn Fn(u32) -> bool,
        at: Option<SocketAddr>,
        timeout: Duration,
        probe: &mut dyn FnMut(SocketAddr) -> Result<(), String>,
    ) -> Result<(), Failed> {
        let (addr, path) = match self {
            Check::Pid(a) => (*a, "/"),
            Check::Url { addr, path } => (*addr, path.as_str()),
            #[cfg(test)]
            Check::Scripted(f) => return (f.0)(pid),
        };
        let addr = at.unwrap_or(addr);
        let other = |text: String| Failed {
            by_new: false,
            text,
        };
        let (status, pid_header, body) = tokio::time::timeout(timeout, get(addr, path, probe))
            .await
            .map_err(|_| {
                other(format!(
                    "GET http://{addr}{path}: no answer within {timeout:?}"
                ))
            })?
            .map_err(|e| other(format!("GET http://{addr}{path}: {e}")))?;
        let by_new = pid_header.is_some_and(is_new) || at.is_some();
        let fail = |text: String| Err(Failed { by_new, text });
        let body_pid = body.trim().parse::<u32>().ok();
        match self {
            Check::Pid(_) if status == 200 && body_pid.is_some_and(is_new) => Ok(()),
            Check::Pid(_) if by_new => fail(format!(
                "the new server answered GET http://{addr}/ with {status}"
            )),
            Check::Pid(_) => fail(format!(
                "GET http://{addr}/ answered {status} {:?}, not PID {pid}",
                body.trim()
            )),
            Check::Url { .. } if !(200..300).contains(&status) => {
                fail(format!("GET http://{addr}{path} answered {status}"))
            }
            Check::Url { .. } => match pid_header {
                Some(p) if !is_new(p) => fail(format!("answered by PID {p}, not the new {pid}")),
                _ => Ok(()),
            },
            #[cfg(test)]
            Check::Scripted(_) => unreachable!("answered above"),
        }
    }
}

/// Why a check did not pass.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The new server itself gave this answer (the most telling failure).
    pub by_new: bool,
    pub text: String,
}

/// The source address health checks connect from, known before the
/// connect (the steer strategy sends that one connection to the new
/// generation): for an IPv4 loopback or unspecified target, another
/// loopback address (127.0.0.2), so a plug that holds SYNs from 127.0.0.1
/// (the default) does not hold the check itself; IPv6's loopback for its
/// loopback or unspecified target; otherwise the target's own (local)
/// address.
fn check_source(target: SocketAddr) -> SocketAddr {
    let ip = match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => {
            IpAddr::V4(if ip == Ipv4Addr::new(127, 0, 0, 2) {
                Ipv4Addr::new(127, 0, 0, 3)
            } else {
                Ipv4Addr::new(127, 0, 0, 2)
            })
        }
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, 0)
}

async fn get(
    addr: SocketAddr,
    path: &str,
    probe: &mut dyn FnMut(SocketAddr) -> Result<(), String>,
) -> std::io::Result<(u16, Option<u32>, String)> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(check_source(addr))?;
    probe(sock.local_addr()?).map_err(std::io::Error::other)?;
    let mut s: TcpStream = sock.connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    // Room for a whole small answer in one read (an empty Vec grows from
    // 32 bytes, a read each time).
    let mut raw = Vec::with_capacity(4096);
    s.read_to_end(&mut raw).await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a whole response head",
            ))
        }
        Err(e) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad response head: {e}"),
            ))
        }
    };
    let status = r.code.unwrap_or(0);
    let pid = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-server-pid"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    let body = String::from_utf8_lossy(&raw[head_len..]);
    Ok((status, pid, body.into_owned()))
}
