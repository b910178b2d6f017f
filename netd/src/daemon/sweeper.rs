//! Clears a released endpoint's conntrack entries after the DEL has been answered.
//!
//! Finding them means dumping the conntrack table, and the kernel walks its whole hash table
//! for every dump (all network namespaces share it: 262,144 buckets on a small host), about
//! 10 ms each. Done inside DEL that made a DEL six times slower and serialized bursts of DELs
//! behind one walk each. Nothing the runtime does next needs the entries gone: the endpoint's
//! table elements are removed before the answer, so no new flow reaches the old address. What
//! must not happen is a new container getting the address while stale flows still point at
//! it, so an attach first settles a pending sweep of the address it is about to use
//! ([`Sweeper::settle`]), which starts it at once. Otherwise a sweep waits [`GATHER`] for more
//! released addresses and clears them together: the walk costs the kernel several ms of CPU
//! (measured: serial ADD/DEL pairs 3 ms slower with a walk per DEL on 2 vCPUs), and a burst or
//! a steady stream of DELs then costs one walk per [`GATHER`], not one each.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long a sweep waits for more released addresses unless an attach needs it now.
const GATHER: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Queue {
    queued: BTreeSet<IpAddr>,
    running: BTreeSet<IpAddr>,
    /// An attach is waiting for a queued address: sweep without gathering.
    urgent: bool,
}

pub struct Sweeper {
    queue: Mutex<Queue>,
    /// Signalled when addresses are queued (for the worker) and when a sweep ends (for
    /// [`Sweeper::settle`]).
    changed: Condvar,
}

impl Sweeper {
    /// Starts the worker thread. It enters no namespace of its own: it clears entries of the
    /// network namespace the daemon runs in, like the calls it replaces.
    pub fn start() -> std::io::Result<Arc<Sweeper>> {
        let sweeper = Arc::new(Sweeper {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&sweeper);
        std::thread::Builder::new()
            .name("netd-sweeper".into())
            .spawn(move || worker.work())?;
        Ok(sweeper)
    }

    /// Queues the conntrack entries of `addrs` for deletion.
    pub fn schedule(&self, addrs: &[IpAddr]) {
        if addrs.is_empty() {
            return;
        }
        let mut q = self.lock();
        q.queued.extend(addrs.iter().copied());
        self.changed.notify_all();
    }

    /// Returns once no sweep of any of `addrs` is queued or running.
    pub fn settle(&self, addrs: &[IpAddr]) {
        let mut q = self.lock();
        while addrs
            .iter()
            .any(|a| q.queued.contains(a) || q.running.contains(a))
        {
            if addrs.iter().any(|a| q.queued.contains(a)) {
                q.urgent = true;
                self.changed.notify_all();
            }
            q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn work(&self) {
        loop {
            let batch: Vec<IpAddr> = {
                let mut q = self.lock();
                while q.queued.is_empty() {
                    q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                let until = Instant::now() + GATHER;
                while !q.urgent {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q = self
                        .changed
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                q.urgent = false;
                q.running = std::mem::take(&mut q.queued);
                q.running.iter().copied().collect()
            };
            // A conntrack dump is not a snapshot: entries moved by concurrent changes to the
            // table (other namespaces share it) can be missed. A pass that deleted something is
            // followed by another, until one finds nothing (at most three).
            let mut deleted = 0;
            for _ in 0..3 {
                match crate::conntrack::clear_addrs(&batch) {
                    Ok(0) => break,
                    Ok(n) => deleted += n,
                    Err(e) => {
                        warn!(error = %e, "could not clear released endpoints' conntrack entries");
                        break;
                    }
                }
            }
            info!(
                addrs = batch.len(),
                deleted, "cleared released endpoints' conntrack entries"
            );
            let mut q = self.lock();
            q.running.clear();
            self.changed.notify_all();
        }
    }
}
