//! Removes host veths after a DEL has been answered. Deleting a veth waits for the kernel to
//! unregister both ends (an RCU grace period: 15–30 ms here, most of a DEL otherwise), and
//! nothing the runtime does next depends on it: the endpoint is already released, and an ADD
//! that reuses the name first settles the pending removal ([`Reaper::settle`]). A removal lost
//! to a crash is found by the start-up reconciliation, which removes marked veths no endpoint
//! claims (an unmarked pair lost that way goes with its container's netns, or an ADD of the
//! same interface replaces it).

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::{debug, warn};

use crate::link::{HostLinks, Removal as Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Queued,
    Running,
}

/// A queued or running removal.
struct Job {
    state: Removal,
    /// The network whose mark the link must carry.
    network: String,
    /// The released endpoint's container netns: an unmarked veth whose peer is there is that
    /// endpoint's pair too (see [`Reaper::run`]). None when the DEL released no endpoint.
    netns: Option<String>,
}

pub struct Reaper {
    /// By link name.
    pending: Mutex<BTreeMap<String, Job>>,
    done: Condvar,
    links: HostLinks,
    queue: Mutex<Sender<String>>,
}

impl Reaper {
    /// Opens its netlink socket in the calling thread's netns (the daemon's) and starts the
    /// worker thread. Test knob `NETD_TEST_REAPER_DELAY_MS`: the worker waits that long
    /// before each removal it takes from the queue, so that a test can pile up pending
    /// removals as churn faster than the kernel's unregistering would.
    pub fn start() -> Result<Arc<Reaper>, crate::link::LinkError> {
        let delay = std::env::var("NETD_TEST_REAPER_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let (tx, rx) = channel::<String>();
        let reaper = Arc::new(Reaper {
            pending: Mutex::new(BTreeMap::new()),
            done: Condvar::new(),
            links: HostLinks::new()?,
            queue: Mutex::new(tx),
        });
        let worker = Arc::downgrade(&reaper);
        std::thread::Builder::new()
            .name("netd-reaper".into())
            .spawn(move || {
                while let Ok(name) = rx.recv() {
                    if let Some(d) = delay {
                        std::thread::sleep(d);
                    }
                    let Some(reaper) = worker.upgrade() else {
                        break;
                    };
                    reaper.run(&name);
                }
            })
            .map_err(|e| crate::link::LinkError::Os {
                step: "starting the link reaper thread".into(),
                err: e,
            })?;
        Ok(reaper)
    }

    /// Queues the removal of host link `name`, a veth marked as `network`'s, or unmarked with
    /// its peer in `netns`.
    pub fn schedule(&self, name: &str, network: &str, netns: Option<&str>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains_key(name) {
            return;
        }
        pending.insert(
            name.to_string(),
            Job {
                state: Removal::Queued,
                network: network.to_string(),
                netns: netns.map(str::to_string),
            },
        );
        drop(pending);
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(name.to_string());
        if sent.is_err() {
            // The worker is gone (shutdown): remove it here instead.
            self.run(name);
        }
    }

    /// Returns once no removal of `name` is pending: a queued one is done here and now, a
    /// running one is waited for.
    pub fn settle(&self, name: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match pending.get(name).map(|job| job.state) {
                None => return,
                Some(Removal::Queued) => {
                    drop(pending);
                    // The worker may have taken the removal between our unlock and run's
                    // lock; run then returns at once while the veth still exists, so look
                    // again (and wait for the worker) rather than return.
                    self.run(name);
                    pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                }
                Some(Removal::Running) => {
                    pending = self.done.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Returns once at most `keep` removals of `network`'s links are pending: queued ones
    /// are done here and now (any of them: each frees one port of the network's bridge), a
    /// running one is waited for. An attach calls it when the network's endpoints and its
    /// pending removals would otherwise fill the bridge: the veths still being removed are
    /// still its ports, and the kernel refuses a port past the limit (EXFULL) however few
    /// endpoints netd holds.
    pub fn settle_network(&self, network: &str, keep: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut of_network = pending.iter().filter(|(_, job)| job.network == network);
            let queued = of_network
                .clone()
                .find(|(_, job)| job.state == Removal::Queued)
                .map(|(name, _)| name.clone());
            if of_network.nth(keep).is_none() {
                return;
            }
            match queued {
                Some(name) => {
                    drop(pending);
                    debug!(link = %name, network, "removing a DEL's veth before an attach: the bridge is near its port limit");
                    self.run(&name);
                    pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                }
                None => pending = self.done.wait(pending).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    fn run(&self, name: &str) {
        let (network, netns) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get_mut(name) {
                Some(job) if job.state == Removal::Queued => {
                    job.state = Removal::Running;
                    (job.network.clone(), job.netns.clone())
                }
                // Settled or being removed by someone else already.
                _ => return,
            }
        };
        // A veth carrying the mark of the DEL's network (one marked for another network
        // belongs to that network), or an unmarked one whose peer is in the released
        // endpoint's netns: the pair the plugin of that endpoint's ADD made while netd
        // worked and would have marked after the answer, had it not died in between.
        // That second case can also be a new ADD's pair: the plugin makes it before netd
        // answers, so an ADD of the same interface right after this DEL may make it before
        // this runs, and if the DEL found no pair at all, this removes the new one. The
        // ADD settles this removal before netd answers it, so the plugin finds its pair
        // gone at once after the answer and makes it again (cni/src/commands.rs); the
        // pair it makes then is never removed by this DEL.
        match self
            .links
            .delete_host_veth(name, Some(&network), netns.as_deref())
        {
            Ok(Outcome::Deleted) => debug!(link = %name, "host veth removed after DEL"),
            Ok(Outcome::Missing) => debug!(link = %name, "host veth already gone after DEL"),
            Ok(Outcome::Foreign(why)) => {
                debug!(link = %name, why = %why, "left a link alone after DEL: not netd's")
            }
            Err(e) => warn!(link = %name, error = %e, "could not remove host veth after DEL"),
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(name);
        self.done.notify_all();
    }
}
