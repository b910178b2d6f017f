//! netd's state on disk: one small JSON file per network and per endpoint, each replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), so a crash at any
//! instant leaves every object either as it was or as it became, and an ADD costs one small
//! write however many endpoints exist.
//!
//! Group commit: the two fsyncs are most of a change's time under the engine lock (0.3 ms on
//! a quiet disk, up to 10 ms on a busy one), and concurrent ADDs would queue behind each
//! other's. So each change is a [`Ticket`]: under the lock only the temporary file is written;
//! [`Store::finish`], called by the server after it released the lock and before it answers,
//! fsyncs the file, renames it in the order the changes were made (a sequence number; so a
//! DEL never overtakes the ADD it undoes), and fsyncs the directory once for every rename done
//! by then. Concurrent fsyncs share the journal commit in the kernel, and one directory fsync
//! covers all the renames before it. A change is still answered only once it is durable.
//! Callers outside the server (start-up, reconciliation) finish their changes at once.
//!
//! Layout under the state directory:
//! `networks/NAME.json`, `endpoints/NETWORK@CONTAINER@IFNAME.json`, `meta.json`.
//! '@' cannot occur in validated names, so file names map back to keys unambiguously.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, EndpointKey, Network};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Facts that belong to the daemon rather than to one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// RFC 4193 global ID for ULA subnets, chosen once so subnets stay stable across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ula_global_id: Option<u64>,
    /// Per network, where address allocation continues ([`crate::ipam::Cursor`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, crate::ipam::Cursor>,
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub meta: Meta,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
}

pub struct Store {
    dir: PathBuf,
    /// While set (by the server, under the engine lock), changes wait in `pending` for
    /// [`Store::finish`] instead of finishing before the call returns.
    deferring: AtomicBool,
    pending: Mutex<Vec<Ticket>>,
    order: Sequencer,
}

/// One change written as a temporary file (or a removal) that still has to be made durable
/// and visible under its final name.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Put {
        tmp: PathBuf,
        path: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// A change that failed before it was queued; its turn just passes.
    Skip,
}

/// Renames in change order, and directory fsyncs shared by every rename done before them.
#[derive(Default)]
struct Sequencer {
    state: Mutex<SeqState>,
    turn: Condvar,
}

#[derive(Default)]
struct SeqState {
    /// Next sequence number to hand out.
    next: u64,
    /// Changes up to (excluding) this one have been renamed or removed (or given up).
    done: u64,
    /// Every change below this one is durable (its directory was fsynced after it).
    synced: u64,
    /// A thread is fsyncing directories now.
    syncing: bool,
    /// Directories with renames or removals not yet fsynced.
    dirty: BTreeSet<PathBuf>,
}

impl Store {
    /// Opens (creating if needed, mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in ["", "networks", "endpoints"] {
            let p = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io("creating", &p))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            deferring: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            order: Sequencer::default(),
        })
    }

    /// From now on changes are left for [`Store::take_deferred`] and [`Store::finish`]. Call
    /// under the same lock as the changes themselves.
    pub fn defer(&self) {
        self.deferring.store(true, Ordering::SeqCst);
    }

    /// Stops deferring and returns the changes made since [`Store::defer`].
    pub fn take_deferred(&self) -> Vec<Ticket> {
        self.deferring.store(false, Ordering::SeqCst);
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Makes `tickets` durable: fsyncs their files, renames (or removes) in change order,
    /// then waits for a directory fsync that started after its own renames. Need not hold the
    /// engine lock: many callers may finish at once, which is the point. Every ticket is
    /// taken care of even if one fails (later changes wait for each sequence number); the
    /// first error is returned.
    pub fn finish(&self, tickets: Vec<Ticket>) -> Result<(), StoreError> {
        let mut first_err = None;
        let mut last = None;
        for t in tickets {
            // The data must be on disk before the name points at it.
            let synced = match &t.op {
                Op::Put { tmp, .. } => File::open(tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io("syncing", tmp)),
                Op::Remove { .. } | Op::Skip => Ok(()),
            };
            let mut st = self.order.wait_turn(t.seq);
            let visible = synced.and_then(|()| match &t.op {
                Op::Put { tmp, path } => fs::rename(tmp, path).map_err(io("renaming", tmp)),
                Op::Remove { path } => match fs::remove_file(path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io("removing", path)(e)),
                },
                Op::Skip => Ok(()),
            });
            match visible {
                Ok(()) => {
                    if let Op::Put { path, .. } | Op::Remove { path } = &t.op {
                        st.dirty.insert(parent(path).to_path_buf());
                    }
                }
                Err(e) => {
                    if let Op::Put { tmp, .. } = &t.op {
                        let _ = fs::remove_file(tmp);
                    }
                    first_err.get_or_insert(e);
                }
            }
            st.done = t.seq + 1;
            drop(st);
            self.order.turn.notify_all();
            last = Some(t.seq);
        }
        if let Some(seq) = last {
            if let Err(e) = self.order.wait_synced(seq) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Writes `bytes` to a temporary file next to `path` and queues its rename.
    fn put(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let seq = self.order.reserve();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{seq}.tmp"));
        let tmp = PathBuf::from(tmp);
        let written = write_file(&tmp, bytes);
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        match written {
            // The sequence number is spent either way; later changes must not wait for it.
            Err(e) => {
                self.queue(Ticket { seq, op: Op::Skip })?;
                Err(e)
            }
            Ok(()) => self.queue(Ticket {
                seq,
                op: Op::Put {
                    tmp,
                    path: path.to_path_buf(),
                },
            }),
        }
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        let seq = self.order.reserve();
        self.queue(Ticket {
            seq,
            op: Op::Remove {
                path: path.to_path_buf(),
            },
        })
    }

    fn queue(&self, t: Ticket) -> Result<(), StoreError> {
        if self.deferring.load(Ordering::SeqCst) {
            lock(&self.pending).push(t);
            Ok(())
        } else {
            self.finish(vec![t])
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn network_path(&self, name: &str) -> PathBuf {
        self.dir.join("networks").join(format!("{name}.json"))
    }

    fn endpoint_path(&self, key: &EndpointKey) -> PathBuf {
        self.dir.join("endpoints").join(format!(
            "{}@{}@{}.json",
            key.network, key.container_id, key.ifname
        ))
    }

    /// Reads everything. Temporary files left by a crash mid-write are removed: the rename
    /// never happened, so the object is as it was before that write.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let meta = self.dir.join("meta.json");
        if meta.exists() {
            loaded.meta = read_json(&meta)?;
        }
        loaded.networks = self.load_dir("networks")?;
        loaded.endpoints = self.load_dir("endpoints")?;
        Ok(loaded)
    }

    fn load_dir<T: for<'de> Deserialize<'de>>(&self, sub: &str) -> Result<Vec<T>, StoreError> {
        let dir = self.dir.join(sub);
        let mut out = Vec::new();
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(io("reading", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io("reading", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io("removing", &path))?;
            } else if name.ends_with(".json") {
                out.push(read_json(&path)?);
            }
        }
        Ok(out)
    }

    pub fn put_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        self.put(&self.dir.join("meta.json"), &to_json(meta))
    }

    pub fn put_network(&self, net: &Network) -> Result<(), StoreError> {
        self.put(&self.network_path(&net.name), &to_json(net))
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.remove(&self.network_path(name))
    }

    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        self.put(&self.endpoint_path(&ep.key()), &to_json(ep))
    }

    pub fn delete_endpoint(&self, key: &EndpointKey) -> Result<(), StoreError> {
        self.remove(&self.endpoint_path(key))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

impl Sequencer {
    fn reserve(&self) -> u64 {
        let mut st = lock(&self.state);
        st.next += 1;
        st.next - 1
    }

    /// Blocks until every change before `seq` is renamed or removed.
    fn wait_turn(&self, seq: u64) -> MutexGuard<'_, SeqState> {
        let mut st = lock(&self.state);
        while st.done < seq {
            st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// Blocks until a directory fsync that started after change `seq` was made visible has
    /// ended; the first caller to find none running does it for everyone waiting.
    fn wait_synced(&self, seq: u64) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        loop {
            if st.synced > seq {
                return Ok(());
            }
            if !st.syncing {
                st.syncing = true;
                let upto = st.done;
                let dirs = std::mem::take(&mut st.dirty);
                drop(st);
                let mut res = Ok(());
                for d in &dirs {
                    if let Err(e) = File::open(d).and_then(|f| f.sync_all()) {
                        res = Err(io("syncing", d)(e));
                        break;
                    }
                }
                st = lock(&self.state);
                st.syncing = false;
                match res {
                    Ok(()) => st.synced = st.synced.max(upto),
                    // Put them back: the next sync tries again; this caller reports it.
                    Err(e) => {
                        st.dirty.extend(dirs);
                        drop(st);
                        self.turn.notify_all();
                        return Err(e);
                    }
                }
                self.turn.notify_all();
                continue;
            }
            st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))?;
    f.write_all(bytes).map_err(io("writing", path))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("state serializes");
    bytes.push(b'\n');
    bytes
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `bytes` so that readers (and a restart after a crash) see either the
/// old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GatewayMode;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netd-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_crash_leftovers() {
        let dir = tmpdir("rt");
        let store = Store::open(&dir).unwrap();
        let net = Network {
            name: "blue".into(),
            bridge: "nd-blue".into(),
            subnet4: Some("10.1.0.0/24".parse().unwrap()),
            gateway4: Some("10.1.0.1".parse().unwrap()),
            subnet6: None,
            gateway6: None,
            internal: false,
            icc: true,
            gateway_mode4: GatewayMode::Nat,
            gateway_mode6: GatewayMode::Nat,
            mtu: 1500,
            cni_version: "1.0.0".into(),
            created: 1,
        };
        store.put_network(&net).unwrap();
        let ep = Endpoint {
            network: "blue".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/c1".into(),
            host_veth: "vn0".into(),
            addr4: Some("10.1.0.2".parse().unwrap()),
            addr6: None,
            ports: vec![],
            mac: None,
            created: 2,
        };
        store.put_endpoint(&ep).unwrap();
        // A write that crashed before its rename leaves a .tmp file behind.
        fs::write(dir.join("endpoints/blue@c2@eth0.json.tmp"), b"{\"half").unwrap();
        store
            .put_meta(&Meta {
                ula_global_id: Some(42),
                ..Default::default()
            })
            .unwrap();

        let loaded = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(loaded.networks, vec![net.clone()]);
        assert_eq!(loaded.endpoints, vec![ep.clone()]);
        assert_eq!(loaded.meta.ula_global_id, Some(42));
        assert!(!dir.join("endpoints/blue@c2@eth0.json.tmp").exists());

        store.delete_endpoint(&ep.key()).unwrap();
        store.delete_endpoint(&ep.key()).unwrap();
        store.delete_network("blue").unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.networks.is_empty() && loaded.endpoints.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn endpoint(cid: &str) -> Endpoint {
        Endpoint {
            network: "blue".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{cid}"),
            host_veth: "vn0".into(),
            addr4: None,
            addr6: None,
            ports: vec![],
            mac: None,
            created: 2,
        }
    }

    /// Deferred changes are invisible until finished, then land in the order they were made
    /// even when finished out of order and from several threads at once.
    #[test]
    fn deferred_changes_finish_in_change_order() {
        let dir = tmpdir("defer");
        let store = std::sync::Arc::new(Store::open(&dir).unwrap());
        let a = endpoint("a");
        let b = endpoint("b");
        store.defer();
        store.put_endpoint(&a).unwrap();
        let first = store.take_deferred();
        store.defer();
        store.delete_endpoint(&a.key()).unwrap();
        store.put_endpoint(&b).unwrap();
        let second = store.take_deferred();
        assert_eq!((first.len(), second.len()), (1, 2));
        // (Not load(): it removes temporary files, as after a crash.)
        assert!(
            !dir.join("endpoints/blue@a@eth0.json").exists(),
            "nothing is visible before finish"
        );
        // The later request finishes first; its removal must wait for the earlier put.
        let s2 = store.clone();
        let later = std::thread::spawn(move || s2.finish(second));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !later.is_finished(),
            "the removal waited for the put before it"
        );
        store.finish(first).unwrap();
        later.join().unwrap().unwrap();
        assert_eq!(store.load().unwrap().endpoints, vec![b.clone()]);

        // Many finishing at once: every one durable and visible, no temporary files left.
        let tickets: Vec<Vec<Ticket>> = (0..32)
            .map(|i| {
                store.defer();
                store.put_endpoint(&endpoint(&format!("c{i:02}"))).unwrap();
                store.take_deferred()
            })
            .collect();
        std::thread::scope(|s| {
            for t in tickets.into_iter().rev() {
                let store = &store;
                s.spawn(move || store.finish(t).unwrap());
            }
        });
        assert_eq!(store.load().unwrap().endpoints.len(), 33);
        let leftovers = fs::read_dir(dir.join("endpoints"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_reported_with_their_path() {
        let dir = tmpdir("corrupt");
        let store = Store::open(&dir).unwrap();
        fs::write(dir.join("networks/x.json"), b"not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("networks/x.json"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
