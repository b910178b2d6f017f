//! Real-packet probes with short, explicit timeouts.
//!
//! Servers answer every TCP connection / UDP datagram with the peer address
//! they saw (as text), so tests can tell masquerade from a real source.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Timeout of one probe. A blocked probe fails after at most this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a blocked probe may take beyond [`PROBE_TIMEOUT`] on a loaded machine (thread start,
/// entering the netns) before the harness calls the refusal suspiciously slow.
pub const SCHEDULING_SLACK: Duration = Duration::from_millis(1500);

/// Maps `::ffff:a.b.c.d` back to `a.b.c.d` (dual-stack listeners).
fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn bind_any<T>(port: u16, f: impl Fn(SocketAddr) -> std::io::Result<T>) -> std::io::Result<T> {
    // Dual-stack [::] first (bindv6only=0 is the per-netns default), else v4.
    f(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
        .or_else(|_| f(SocketAddr::new("0.0.0.0".parse().unwrap(), port)))
}

/// A TCP server inside a netns that writes `"<peer addr>\n"` to every
/// connection and closes it. Stopped on drop.
pub struct TcpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on all addresses of `ns`, on an ephemeral port.
    pub fn start(ns: &Netns) -> TcpServer {
        Self::start_on_port(ns, 0)
    }

    /// Listens on all addresses of `ns`, on `port` (0 = ephemeral).
    pub fn start_on_port(ns: &Netns, port: u16) -> TcpServer {
        let listener = ns
            .run_in(|| bind_any(port, TcpListener::bind))
            .unwrap_or_else(|e| panic!("tcp listen in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = s.write_all(format!("{}\n", normalize(peer)).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ip:port` of this server for a given address of its netns.
    pub fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server inside a netns that answers every datagram with
/// `"<peer addr>\n"`. Stopped on drop.
pub struct UdpServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Listens on all addresses of `ns`, on an ephemeral port.
    pub fn start(ns: &Netns) -> UdpServer {
        Self::start_on_port(ns, 0)
    }

    /// Listens on all addresses of `ns`, on `port` (0 = ephemeral).
    pub fn start_on_port(ns: &Netns, port: u16) -> UdpServer {
        let sock = ns
            .run_in(|| bind_any(port, UdpSocket::bind))
            .unwrap_or_else(|e| panic!("udp bind in {}: {e}", ns.name()));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let port = sock.local_addr().expect("local_addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{}\n", normalize(peer)).as_bytes(), peer);
                }
            }
        });
        UdpServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_seen(buf: &[u8]) -> Result<SocketAddr, String> {
    let s = String::from_utf8_lossy(buf);
    s.trim()
        .parse()
        .map_err(|e| format!("bad answer {s:?}: {e}"))
}

/// Connects from `ns` to `dst` with `timeout`; returns the source address the
/// server saw, or an error (refused, timed out, reset...).
pub fn tcp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    ns.run_in(|| {
        let deadline = Instant::now() + timeout;
        let mut s =
            TcpStream::connect_timeout(&dst, timeout).map_err(|e| format!("connect: {e}"))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
        parse_seen(&buf)
    })
}

/// Sends one datagram from `ns` to `dst` and waits up to `timeout` for the
/// answer; returns the source address the server saw.
pub fn udp_probe(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<SocketAddr, String> {
    ns.run_in(|| {
        let local: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
        s.connect(dst).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.send(b"probe\n").map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
        parse_seen(&buf[..n])
    })
}

/// One ICMP echo from `ns` to `addr` with a 1 s wait (`ping -c1 -W1`).
pub fn ping(ns: &Netns, addr: IpAddr) -> bool {
    let fam = if addr.is_ipv4() { "-4" } else { "-6" };
    ns.exec(&["ping", fam, "-n", "-c1", "-W1", &addr.to_string()])
        .success()
}

type Probe = fn(&Netns, SocketAddr, Duration) -> Result<SocketAddr, String>;

/// Retries a probe briefly (3 × PROBE_TIMEOUT at most) to ride out neighbour discovery / DAD
/// right after setup; returns the source address the server saw.
fn expect_ok(what: &str, probe: Probe, ns: &Netns, dst: SocketAddr) -> SocketAddr {
    let mut last = String::new();
    for _ in 0..3 {
        match probe(ns, dst, PROBE_TIMEOUT) {
            Ok(a) => return a,
            Err(e) => last = e,
        }
    }
    panic!(
        "{what} from netns {} ({}) to {dst} should work: {last}",
        ns.name(),
        ns.label()
    )
}

/// One probe that must fail, and within the probe timeout (a refusal, not a slow success).
fn expect_blocked(what: &str, probe: Probe, ns: &Netns, dst: SocketAddr) {
    let t = Instant::now();
    let r = probe(ns, dst, PROBE_TIMEOUT);
    let el = t.elapsed();
    assert!(
        r.is_err(),
        "{what} from netns {} ({}) to {dst} should be blocked, but the server saw {:?}",
        ns.name(),
        ns.label(),
        r
    );
    assert!(
        el < PROBE_TIMEOUT + SCHEDULING_SLACK,
        "blocked probe took {el:?}"
    );
}

/// Asserts a TCP connection from `ns` to `dst` succeeds; returns the source address the
/// server saw.
pub fn assert_tcp_ok(ns: &Netns, dst: SocketAddr) -> SocketAddr {
    expect_ok("TCP", tcp_probe, ns, dst)
}

/// Asserts a TCP connection from `ns` to `dst` fails, within the probe timeout.
pub fn assert_tcp_blocked(ns: &Netns, dst: SocketAddr) {
    expect_blocked("TCP", tcp_probe, ns, dst)
}

/// Asserts a UDP request/response from `ns` to `dst` works; returns the seen source address.
pub fn assert_udp_ok(ns: &Netns, dst: SocketAddr) -> SocketAddr {
    expect_ok("UDP", udp_probe, ns, dst)
}

/// Asserts no UDP answer comes back from `dst` within the probe timeout.
pub fn assert_udp_blocked(ns: &Netns, dst: SocketAddr) {
    expect_blocked("UDP", udp_probe, ns, dst)
}

/// Asserts `ping` from `ns` to `addr` gets a reply (up to 3 tries).
pub fn assert_ping_ok(ns: &Netns, addr: IpAddr) {
    for _ in 0..3 {
        if ping(ns, addr) {
            return;
        }
    }
    panic!(
        "ping from netns {} ({}) to {addr} should work",
        ns.name(),
        ns.label()
    )
}

/// Asserts `ping` from `ns` to `addr` gets no reply (one try, 1 s).
pub fn assert_ping_fails(ns: &Netns, addr: IpAddr) {
    let t = Instant::now();
    assert!(
        !ping(ns, addr),
        "ping from netns {} ({}) to {addr} should fail",
        ns.name(),
        ns.label()
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "failed ping took {:?}",
        t.elapsed()
    );
}
