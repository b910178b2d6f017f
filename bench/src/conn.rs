//! Real TCP: a listener in a container netns that accepts and closes, and bounded connect
//! loops from the external netns through the host's DNAT.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netd_netns_tests::Netns;

/// Accepts and closes every connection on `0.0.0.0:port` of a netns. Stopped on drop.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn start(ns: &Netns, port: u16) -> Listener {
        let l = ns
            .run_in(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("listen on {port} in {}: {e}", ns.name()));
        // A deep accept queue, so a burst of connects never waits for SYN retransmits.
        // SAFETY: listen(2) on a socket we own.
        unsafe { libc::listen(l.as_raw_fd(), 4096) };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let fd = l.as_raw_fd();
            while !stop2.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let n = unsafe { libc::poll(&mut p, 1, 100) };
                if n > 0 {
                    // Drain what is queued; each accepted stream closes at once.
                    let _ = l.accept();
                }
            }
        });
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Closes with RST (SO_LINGER 0) so a few thousand connects leave no TIME_WAIT behind.
fn abort(s: TcpStream) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on a socket we own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// Retries a connect from `ns` to `dst` until it succeeds or `limit` passes; returns the time
/// it took.
pub fn wait_answer(ns: &Netns, dst: SocketAddr, limit: Duration) -> Option<Duration> {
    ns.run_in(|| {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(s) = TcpStream::connect_timeout(&dst, Duration::from_millis(200)) {
                abort(s);
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
}

/// New connections per second from `ns` to `dst`: sequential connect + close for `dur`.
pub fn rate(ns: &Netns, dst: SocketAddr, dur: Duration) -> f64 {
    ns.run_in(|| {
        let t0 = Instant::now();
        let mut ok = 0u64;
        let mut fails = 0u64;
        while t0.elapsed() < dur {
            match TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                Ok(s) => {
                    abort(s);
                    ok += 1;
                }
                Err(_) => {
                    fails += 1;
                    if fails > 100 {
                        break;
                    }
                }
            }
        }
        ok as f64 / t0.elapsed().as_secs_f64()
    })
}
