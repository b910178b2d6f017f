//! Clears a released endpoint's conntrack entries after the DEL has been answered.
//!
//! Finding them means dumping the conntrack table, and the kernel walks its whole hash table
//! for every dump (all network namespaces share it: 262,144 buckets on a small host), about
//! 10 ms each. Done inside DEL that made a DEL six times slower and serialized bursts of DELs
//! behind one walk each. Nothing the runtime does next needs the entries gone: the endpoint's
//! table elements are removed before the answer, so no new flow reaches the old address. What
//! must not happen is a new container getting the address while stale flows still point at
//! it, so an attach first settles a pending sweep of the address it is about to use
//! ([`Sweeper::settle`]). Addresses released while a sweep runs are cleared together by the
//! next one: a burst of DELs costs a few walks, not one each.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};

use tracing::{info, warn};

#[derive(Default)]
struct Queue {
    queued: BTreeSet<IpAddr>,
    running: BTreeSet<IpAddr>,
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
                q.running = std::mem::take(&mut q.queued);
                q.running.iter().copied().collect()
            };
            match crate::conntrack::clear_addrs(&batch) {
                Ok(n) => info!(
                    addrs = batch.len(),
                    deleted = n,
                    "cleared released endpoints' conntrack entries"
                ),
                Err(e) => {
                    warn!(error = %e, "could not clear released endpoints' conntrack entries")
                }
            }
            let mut q = self.lock();
            q.running.clear();
            self.changed.notify_all();
        }
    }
}
