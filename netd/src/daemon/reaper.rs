//! Removes host veths after a DEL has been answered. Deleting a veth waits for the kernel to
//! unregister both ends (an RCU grace period: 15–30 ms here, most of a DEL otherwise), and
//! nothing the runtime does next depends on it: the endpoint is already released, and an ADD
//! that reuses the name first settles the pending removal ([`Reaper::settle`]). A removal lost
//! to a crash is found by the start-up reconciliation, which removes veths no endpoint claims.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};

use tracing::{debug, warn};

use crate::link::{HostLinks, Removal as Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Queued,
    Running,
}

pub struct Reaper {
    /// By link name: the removal's state and the network whose mark the link must carry.
    pending: Mutex<BTreeMap<String, (Removal, String)>>,
    done: Condvar,
    links: HostLinks,
    queue: Mutex<Sender<String>>,
}

impl Reaper {
    /// Opens its netlink socket in the calling thread's netns (the daemon's) and starts the
    /// worker thread.
    pub fn start() -> Result<Arc<Reaper>, crate::link::LinkError> {
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

    /// Queues the removal of host link `name`, a veth marked as `network`'s.
    pub fn schedule(&self, name: &str, network: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains_key(name) {
            return;
        }
        pending.insert(name.to_string(), (Removal::Queued, network.to_string()));
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
            match pending.get(name).map(|(state, _)| *state) {
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

    fn run(&self, name: &str) {
        let network = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get_mut(name) {
                Some((state @ Removal::Queued, network)) => {
                    *state = Removal::Running;
                    network.clone()
                }
                // Settled or being removed by someone else already.
                _ => return,
            }
        };
        // Only a veth carrying the mark of the DEL's network: the plugin creates the pair of
        // an ADD before netd answers (and marks it after), so a fresh, unmarked veth under a
        // name whose removal is still queued belongs to that ADD, not to the DEL that queued
        // the removal; and one marked for another network belongs to that network.
        match self.links.delete_owned(name, "veth", Some(&network)) {
            Ok(Outcome::Deleted) => debug!(link = %name, "host veth removed after DEL"),
            Ok(Outcome::Missing) => debug!(link = %name, "host veth already gone after DEL"),
            Ok(Outcome::Foreign(why)) => {
                debug!(link = %name, why = %why, "left a link alone after DEL: not a marked veth")
            }
            Err(e) => warn!(link = %name, error = %e, "could not remove host veth after DEL"),
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(name);
        self.done.notify_all();
    }
}
