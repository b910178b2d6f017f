//! netd's state on disk: a snapshot of one small JSON file per object, and a journal of the
//! changes made since the snapshot was last brought up to date.
//!
//! Layout under the state directory:
//! `networks/NAME.json`, `endpoints/NETWORK@CONTAINER@IFNAME.json`, `meta.json` (the
//! snapshot, the format older netd wrote and `netctl plan --state-dir` reads), `journal`,
//! and `lock` (see [`Store::open`]).
//! '@' cannot occur in validated names, so file names map back to keys unambiguously.
//!
//! A change ([`Store::commit`]) is one record appended to the journal and one fdatasync of
//! it (see [`journal`]); a record holds a list of [`Op`]s, so a change of several objects
//! (a DEL's cursor and endpoint) is one flush and reaches the disk whole or not at all.
//! When `commit` returns Ok the change survives a crash at any instant.
//!
//! Loading reads the snapshot and replays the journal's valid records over it, stopping at
//! the first torn one (it was being written when netd stopped, so nobody was told it was
//! done). **Replay is idempotent and may start from a snapshot that is partly newer than the
//! journal**: every op is a blind write of a whole object (put the value, or delete the
//! key), never a change relative to the old value, so after replay each object the journal
//! touches holds the value of the last op on it, whatever the snapshot held for it, and
//! each object it does not touch holds the snapshot's value. Compaction only ever writes an
//! object's value as of the end of the journal, so a snapshot half written by a compaction
//! that a crash interrupted converges to the same state as a complete one.
//!
//! Compaction (when a record does not fit, and at start when the journal holds records or a
//! torn tail): the objects changed since the last compaction are written as snapshot files
//! (each a temporary file, fsynced, then all renamed, then each directory fsynced once),
//! and only then is a fresh, zero-filled journal made durable in place of the old one
//! ([`journal::Journal::create`]). Until that rename the old journal still holds every
//! change, so no change ever lives only in a journal that was dropped.

mod journal;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::{Endpoint, EndpointKey, Network};

use journal::Journal;

/// Size of a fresh journal. An ADD's record is a few hundred bytes (one with 10,000
/// published ports about 600 KB), so this holds thousands of changes between compactions;
/// a record larger than a fresh journal gets a journal sized to fit it.
pub const JOURNAL_SIZE: u64 = 4 << 20;

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
    #[error("journal {path} is corrupt: {detail}")]
    Journal { path: PathBuf, detail: String },
    /// Another process holds the state directory's lock: a second netd on the same
    /// directory would interleave its journal records with the first one's.
    #[error(
        "state directory {} is in use by another netd ({}); stop that one first, or give this one its own --state-dir",
        dir.display(),
        holder.map_or_else(|| "its pid is not known yet".to_string(), |pid| format!("pid {pid}"))
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
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

/// One change to one object; [`Store::commit`] makes a list of them durable at once.
/// Each is a blind write of a whole object, which is what makes replay idempotent.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op<'a> {
    PutNetwork(&'a Network),
    DeleteNetwork(&'a str),
    PutEndpoint(&'a Endpoint),
    DeleteEndpoint(&'a EndpointKey),
    PutMeta(&'a Meta),
}

/// [`Op`] as read back from the journal (same JSON shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Replayed {
    PutNetwork(Network),
    DeleteNetwork(String),
    PutEndpoint(Endpoint),
    DeleteEndpoint(EndpointKey),
    PutMeta(Meta),
}

impl From<Op<'_>> for Replayed {
    fn from(op: Op<'_>) -> Replayed {
        match op {
            Op::PutNetwork(n) => Replayed::PutNetwork(n.clone()),
            Op::DeleteNetwork(n) => Replayed::DeleteNetwork(n.to_string()),
            Op::PutEndpoint(e) => Replayed::PutEndpoint(e.clone()),
            Op::DeleteEndpoint(k) => Replayed::DeleteEndpoint(k.clone()),
            Op::PutMeta(m) => Replayed::PutMeta(m.clone()),
        }
    }
}

/// Objects by key, `None` meaning deleted: the whole state when loading, and the objects
/// changed since the last compaction (what the next compaction writes) while running.
#[derive(Debug, Default)]
struct Objects {
    meta: Option<Meta>,
    networks: BTreeMap<String, Option<Network>>,
    endpoints: BTreeMap<EndpointKey, Option<Endpoint>>,
}

impl Objects {
    fn apply(&mut self, op: Replayed) {
        match op {
            Replayed::PutNetwork(n) => {
                self.networks.insert(n.name.clone(), Some(n));
            }
            Replayed::DeleteNetwork(name) => {
                self.networks.insert(name, None);
            }
            Replayed::PutEndpoint(e) => {
                self.endpoints.insert(e.key(), Some(e));
            }
            Replayed::DeleteEndpoint(key) => {
                self.endpoints.insert(key, None);
            }
            Replayed::PutMeta(m) => self.meta = Some(m),
        }
    }

    fn is_empty(&self) -> bool {
        self.meta.is_none() && self.networks.is_empty() && self.endpoints.is_empty()
    }

    fn into_loaded(self) -> Loaded {
        Loaded {
            meta: self.meta.unwrap_or_default(),
            networks: self.networks.into_values().flatten().collect(),
            endpoints: self.endpoints.into_values().flatten().collect(),
        }
    }
}

/// The snapshot plus the journal's records, as read from disk.
struct Read {
    state: Objects,
    /// The objects the journal's records touched, at their values after replay.
    changed: Objects,
    /// The journal's valid records end here; `None`: there is no journal.
    journal_end: Option<(u64, u64)>,
    records: usize,
    torn: Option<String>,
}

pub struct Store {
    dir: PathBuf,
    /// Holds the directory's `flock` for as long as the store lives (see [`Store::open`]).
    _lock: File,
    journal_size: u64,
    /// `None` before [`Store::load`], and after a failed append until the next compaction.
    journal: Option<Journal>,
    loaded: bool,
    /// Objects changed since the last compaction, at their latest values.
    changed: Objects,
}

impl Store {
    /// Opens (creating if needed, mode 0700) the state directory and takes its lock, so that
    /// one process at a time writes it: two netds on one directory would interleave their
    /// journal records and fight over the table. A directory that another process holds is
    /// refused with [`StoreError::Locked`]. The lock is released when the store is dropped,
    /// and by the kernel when the process dies, kill -9 included, so a restart after a crash
    /// never finds a stale lock. Readers ([`Store::read`]) take no lock.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in ["", "networks", "endpoints"] {
            let p = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io("creating", &p))?;
        }
        let lock = lock_dir(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            journal_size: JOURNAL_SIZE,
            journal: None,
            loaded: false,
            changed: Objects::default(),
        })
    }

    /// The same store with journals of `bytes` bytes (tests use small ones to reach
    /// compaction quickly).
    pub fn with_journal_size(mut self, bytes: u64) -> Store {
        self.journal_size = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads a state directory without changing anything in it (`netctl plan --state-dir`,
    /// possibly while netd runs): the snapshot and the journal's valid records.
    pub fn read(dir: &Path) -> Result<Loaded, StoreError> {
        Ok(read_dir_state(dir, false)?.state.into_loaded())
    }

    /// Reads everything and readies the journal for [`Store::commit`]. Temporary files left
    /// by a crash mid-write are removed: their rename never happened, so the object is as
    /// the snapshot and journal say. A journal with a torn tail is compacted into the
    /// snapshot and replaced by an empty one, so a torn tail is never appended after; a
    /// clean one is appended to where its records end, and its objects are folded in by the
    /// next compaction. Compacting at every start would make a restart cost a file write per
    /// object changed since the last compaction (about a second per thousand here).
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        let read = read_dir_state(&self.dir, true)?;
        if let Some(why) = &read.torn {
            warn!(journal = %self.dir.join(journal::FILE).display(), why, "journal ends in a record that was being written when netd stopped; it was never acknowledged and is dropped");
        }
        let new = self.dir.join(journal::NEW_FILE);
        match fs::remove_file(&new) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &new)(e)),
        }
        self.journal = None;
        self.changed = read.changed;
        match read.journal_end {
            Some((end, size)) if read.torn.is_none() => {
                self.journal = Some(Journal::reopen(&self.dir.join(journal::FILE), end, size)?);
            }
            _ => {
                let objects = self.changed_count();
                self.compact(0)?;
                if read.records > 0 {
                    info!(
                        records = read.records,
                        objects, "journal replayed and folded into the state files"
                    );
                }
            }
        }
        self.loaded = true;
        Ok(read.state.into_loaded())
    }

    /// Makes `ops` durable as one journal record: all of them survive a crash, or none.
    /// Compacts first when the record does not fit in the journal.
    pub fn commit(&mut self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        if !self.loaded {
            // Appending to a journal that was never replayed would bury its records.
            self.load()?;
        }
        let payload = serde_json::to_vec(ops).expect("state serializes");
        let size = journal::record_size(payload.len());
        if !self.journal.as_ref().is_some_and(|j| j.has_room(size)) {
            self.compact(size)?;
        }
        let journal = self.journal.as_mut().expect("compaction made a journal");
        if let Err(e) = journal.append(&payload) {
            // Whether the failed record reached the disk is unknown; the next commit starts
            // a fresh journal from the changes that did succeed.
            self.journal = None;
            return Err(e);
        }
        for op in ops {
            self.changed.apply((*op).into());
        }
        Ok(())
    }

    pub fn put_meta(&mut self, meta: &Meta) -> Result<(), StoreError> {
        self.commit(&[Op::PutMeta(meta)])
    }

    pub fn put_network(&mut self, net: &Network) -> Result<(), StoreError> {
        self.commit(&[Op::PutNetwork(net)])
    }

    pub fn delete_network(&mut self, name: &str) -> Result<(), StoreError> {
        self.commit(&[Op::DeleteNetwork(name)])
    }

    pub fn put_endpoint(&mut self, ep: &Endpoint) -> Result<(), StoreError> {
        self.commit(&[Op::PutEndpoint(ep)])
    }

    pub fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), StoreError> {
        self.commit(&[Op::DeleteEndpoint(key)])
    }

    /// Folds the journal into the snapshot now and starts an empty journal. Normally done
    /// by [`Store::commit`] and [`Store::load`] as needed; this is for tools and tests that
    /// want the snapshot files complete (for instance to edit them while netd is stopped).
    pub fn compact_now(&mut self) -> Result<(), StoreError> {
        if !self.loaded {
            self.load()?;
        }
        self.compact(0)
    }

    fn changed_count(&self) -> usize {
        self.changed.networks.len()
            + self.changed.endpoints.len()
            + self.changed.meta.is_some() as usize
    }

    /// Writes the changed objects into the snapshot, then replaces the journal with an empty
    /// one with room for at least `room` bytes of records.
    ///
    /// Crash points, in order: (1) while writing temporary files: the next load removes
    /// them and replays the old journal; (2) between renames and removals: the snapshot is
    /// part old, part new, and replaying the old journal over it converges (module docs);
    /// (3) after the directories' fsyncs, before or after the new journal's rename: both
    /// journals replay to the same state over the now complete snapshot. A failure leaves
    /// the old journal in charge and is retried by the next commit.
    fn compact(&mut self, room: u64) -> Result<(), StoreError> {
        self.journal = None;
        if !self.changed.is_empty() {
            write_snapshot(&self.dir, &self.changed)?;
            self.changed = Objects::default();
        }
        let size = journal::size_for(self.journal_size, room);
        self.journal = Some(Journal::create(&self.dir, size)?);
        Ok(())
    }

    fn network_path(dir: &Path, name: &str) -> PathBuf {
        dir.join("networks").join(format!("{name}.json"))
    }

    fn endpoint_path(dir: &Path, key: &EndpointKey) -> PathBuf {
        dir.join("endpoints").join(format!(
            "{}@{}@{}.json",
            key.network, key.container_id, key.ifname
        ))
    }
}

/// Snapshot, then the journal's records over it. `clean`: remove temporary files left by
/// a crash (only the daemon does; a reader must not write).
fn read_dir_state(dir: &Path, clean: bool) -> Result<Read, StoreError> {
    // The journal is read before the snapshot: a compaction running meanwhile (a reader such
    // as `netctl plan` beside a running netd) then leaves an old journal replayed over newer
    // files, which converges like any replay; the other order could pair old files with the
    // new, empty journal and miss changes.
    let path = dir.join(journal::FILE);
    let journal_bytes = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &path)(e)),
    };
    let mut state = Objects::default();
    let meta = dir.join("meta.json");
    if meta.exists() {
        state.meta = Some(read_json(&meta)?);
    }
    for net in load_dir::<Network>(dir, "networks", clean)? {
        state.networks.insert(net.name.clone(), Some(net));
    }
    for ep in load_dir::<Endpoint>(dir, "endpoints", clean)? {
        state.endpoints.insert(ep.key(), Some(ep));
    }
    let mut read = Read {
        state,
        changed: Objects::default(),
        journal_end: None,
        records: 0,
        torn: None,
    };
    let Some(bytes) = journal_bytes else {
        return Ok(read);
    };
    let corrupt = |detail: String| StoreError::Journal {
        path: path.clone(),
        detail,
    };
    let scan = journal::scan(&bytes).map_err(corrupt)?;
    for range in &scan.records {
        // A record whose checksum holds but which does not parse was written by something
        // other than this netd: stop loudly rather than guess.
        let ops: Vec<Replayed> = serde_json::from_slice(&bytes[range.clone()]).map_err(|e| {
            corrupt(format!(
                "record at offset {} does not parse: {e}",
                range.start - 8
            ))
        })?;
        for op in ops {
            read.changed.apply(op.clone());
            read.state.apply(op);
        }
    }
    read.journal_end = Some((scan.end as u64, bytes.len() as u64));
    read.records = scan.records.len();
    read.torn = scan.torn;
    Ok(read)
}

fn load_dir<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    sub: &str,
    clean: bool,
) -> Result<Vec<T>, StoreError> {
    let dir = dir.join(sub);
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
            if clean {
                fs::remove_file(&path).map_err(io("removing", &path))?;
            }
        } else if name.ends_with(".json") {
            out.push(read_json(&path)?);
        }
    }
    Ok(out)
}

/// Brings the snapshot files of `changed` up to date: every new content is written to a
/// temporary file, one syncfs(2) makes them all durable, then all are renamed into place and
/// deleted objects removed, then each directory is fsynced once. One flush for all the files
/// instead of one each: a compaction runs under the engine's lock, and with thousands of
/// changed objects an fsync per file stalled requests for seconds (5,000 files: ~0.3 s
/// with syncfs, ~5 s with an fsync each, on this VM). As safe: a crash anywhere leaves each
/// file old or new, and the journal is still there to replay.
fn write_snapshot(dir: &Path, changed: &Objects) -> Result<(), StoreError> {
    let mut puts: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut deletes: Vec<PathBuf> = Vec::new();
    if let Some(meta) = &changed.meta {
        puts.push((dir.join("meta.json"), to_json(meta)));
    }
    for (name, net) in &changed.networks {
        let path = Store::network_path(dir, name);
        match net {
            Some(n) => puts.push((path, to_json(n))),
            None => deletes.push(path),
        }
    }
    for (key, ep) in &changed.endpoints {
        let path = Store::endpoint_path(dir, key);
        match ep {
            Some(e) => puts.push((path, to_json(e))),
            None => deletes.push(path),
        }
    }
    // Opened before the writes: syncfs reports a write-back error on the filesystem only if
    // it happened after this fd was opened.
    let fs_handle = File::open(dir).map_err(io("opening", dir))?;
    for (path, bytes) in &puts {
        write_new(&tmp_path(path), bytes)?;
    }
    if !puts.is_empty() {
        syncfs(&fs_handle, dir)?;
        // syncfs reports write-back errors only since Linux 5.8. On older kernels an
        // fdatasync of each file (its data is already on disk; ~45 µs a file here) reports
        // them from 4.13 on, to the first caller that looks, even through a new fd.
        if !kernel_at_least(5, 8) {
            for (path, _) in &puts {
                let tmp = tmp_path(path);
                File::open(&tmp)
                    .and_then(|f| f.sync_data())
                    .map_err(io("syncing", &tmp))?;
            }
        }
    }
    for (path, _) in &puts {
        let tmp = tmp_path(path);
        fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    }
    for path in &deletes {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", path)(e)),
        }
    }
    if !changed.networks.is_empty() {
        fsync_dir(&dir.join("networks"))?;
    }
    if !changed.endpoints.is_empty() {
        fsync_dir(&dir.join("endpoints"))?;
    }
    if changed.meta.is_some() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// The ops of each record in a state directory's journal, by name (for tests of what one
/// change writes).
#[cfg(test)]
pub(crate) fn journal_records(dir: &Path) -> Vec<Vec<&'static str>> {
    let bytes = fs::read(dir.join(journal::FILE)).unwrap();
    let scan = journal::scan(&bytes).unwrap();
    let kind = |op: &Replayed| match op {
        Replayed::PutNetwork(_) => "put_network",
        Replayed::DeleteNetwork(_) => "delete_network",
        Replayed::PutEndpoint(_) => "put_endpoint",
        Replayed::DeleteEndpoint(_) => "delete_endpoint",
        Replayed::PutMeta(_) => "put_meta",
    };
    scan.records
        .iter()
        .map(|r| {
            let ops: Vec<Replayed> = serde_json::from_slice(&bytes[r.clone()]).unwrap();
            ops.iter().map(kind).collect()
        })
        .collect()
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
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

/// Creates or truncates `path` and writes `bytes`; durable only after [`syncfs`].
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    create_private(path)?
        .write_all(bytes)
        .map_err(io("writing", path))
}

/// Creates or truncates `path` for writing, readable by root only (state names containers).
fn create_private(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("creating", path))
}

/// The state directory's lock file; it holds the pid of the netd that has the lock.
const LOCK_FILE: &str = "lock";

/// Takes an exclusive `flock` on `dir/lock` without waiting. flock rather than a POSIX
/// record lock: a record lock belongs to the process and is dropped when *any* of its file
/// descriptors for the file is closed, a flock only when the locked open file itself is.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("opening", &path))?;
    // SAFETY: plain syscall on an fd that `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io("locking", &path)(err));
        }
        // Empty while the holder is between taking the lock and writing its pid.
        let holder = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        return Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    // The pid is for the error message of whoever comes second; it needs no fsync (after a
    // crash the lock is free and the next holder writes its own).
    file.set_len(0)
        .and_then(|()| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io("writing", &path))?;
    Ok(file)
}

/// Whether the running kernel is at least `major.minor` (from uname; false if unreadable).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// Flushes everything written to the filesystem that holds `dir` (open as `handle`). Since
/// Linux 5.8 it also reports a write-back error that happened on that filesystem after
/// `handle` was opened, as fsync would for one file.
fn syncfs(handle: &File, dir: &Path) -> Result<(), StoreError> {
    // SAFETY: plain syscall on an fd that `handle` keeps open for the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io("syncing the filesystem of", dir)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that readers (and a restart after a crash) see either the
/// old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let mut f = create_private(&tmp)?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, making a rename or removal in it durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GatewayMode, PortMapping, Proto};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netd-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn net(name: &str) -> Network {
        Network {
            name: name.into(),
            bridge: format!("nd-{name}"),
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
        }
    }

    fn ep(network: &str, id: &str, created: u64) -> Endpoint {
        Endpoint {
            network: network.into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{id}"),
            host_veth: format!("vn{id}"),
            addr4: Some("10.1.0.2".parse().unwrap()),
            addr6: None,
            ports: vec![],
            mac: None,
            created,
        }
    }

    fn with_ports(mut e: Endpoint, n: u16) -> Endpoint {
        e.ports = (0..n)
            .map(|i| PortMapping {
                host_port: 10000 + i,
                container_port: 80,
                protocol: Proto::Tcp,
                host_ip: None,
            })
            .collect();
        e
    }

    fn meta(id: u64) -> Meta {
        Meta {
            ula_global_id: Some(id),
            ..Default::default()
        }
    }

    fn snapshot_files(dir: &Path, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Byte ranges (header included) of the valid records in the journal.
    fn records(dir: &Path) -> Vec<std::ops::Range<usize>> {
        let bytes = fs::read(dir.join("journal")).unwrap();
        let scan = journal::scan(&bytes).unwrap();
        scan.records.iter().map(|r| r.start - 8..r.end).collect()
    }

    fn patch_journal(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let path = dir.join("journal");
        let mut bytes = fs::read(&path).unwrap();
        f(&mut bytes);
        fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn round_trip_and_crash_leftovers() {
        let dir = tmpdir("rt");
        let mut store = Store::open(&dir).unwrap();
        let net = net("blue");
        store.put_network(&net).unwrap();
        let ep = ep("blue", "c1", 2);
        store.put_endpoint(&ep).unwrap();
        // A write that crashed before its rename leaves a .tmp file behind.
        fs::write(dir.join("endpoints/blue@c2@eth0.json.tmp"), b"{\"half").unwrap();
        store.put_meta(&meta(42)).unwrap();
        // Each reopen below is a restart: the process that held the lock is gone.
        drop(store);

        let loaded = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(loaded.networks, vec![net.clone()]);
        assert_eq!(loaded.endpoints, vec![ep.clone()]);
        assert_eq!(loaded.meta.ula_global_id, Some(42));
        assert!(!dir.join("endpoints/blue@c2@eth0.json.tmp").exists());

        let mut store = Store::open(&dir).unwrap();
        store.load().unwrap();
        store.delete_endpoint(&ep.key()).unwrap();
        store.delete_endpoint(&ep.key()).unwrap();
        store.delete_network("blue").unwrap();
        drop(store);
        let loaded = Store::open(&dir).unwrap().load().unwrap();
        assert!(loaded.networks.is_empty() && loaded.endpoints.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// One writer per directory: a second open is refused naming the directory and the
    /// holder's pid, a reader needs no lock, and the lock goes with the store that held it.
    #[test]
    fn the_state_directory_has_one_writer_at_a_time() {
        let dir = tmpdir("lock");
        let mut store = Store::open(&dir).unwrap();
        store.load().unwrap();
        store.put_network(&net("blue")).unwrap();
        let err = Store::open(&dir).err().expect("a second writer was let in");
        match &err {
            StoreError::Locked { dir: d, holder } => {
                assert_eq!(d, &dir);
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("wrong error: {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string())
                && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(Store::read(&dir).unwrap().networks, vec![net("blue")]);
        drop(store);
        let mut again = Store::open(&dir).unwrap();
        assert_eq!(again.load().unwrap().networks, vec![net("blue")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_reported_with_their_path() {
        let dir = tmpdir("corrupt");
        let mut store = Store::open(&dir).unwrap();
        fs::write(dir.join("networks/x.json"), b"not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("networks/x.json"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_version_check() {
        // Whatever kernel runs the tests is newer than 2.6 and older than 999.
        assert!(kernel_at_least(2, 6));
        assert!(!kernel_at_least(999, 0));
    }

    #[test]
    fn a_change_is_one_record_and_load_folds_the_journal_into_files() {
        let dir = tmpdir("fold");
        let mut store = Store::open(&dir).unwrap();
        assert!(store.load().unwrap().networks.is_empty());
        let size = fs::metadata(dir.join("journal")).unwrap().len();
        assert_eq!(size, JOURNAL_SIZE);
        store.put_network(&net("blue")).unwrap();
        store.put_endpoint(&ep("blue", "c1", 2)).unwrap();
        // The changes are in the journal only: no snapshot file was written, and the
        // journal kept its size (an append rewrites zeros, it does not grow the file).
        assert!(snapshot_files(&dir, "networks").is_empty());
        assert!(snapshot_files(&dir, "endpoints").is_empty());
        assert_eq!(records(&dir).len(), 2);
        assert_eq!(fs::metadata(dir.join("journal")).unwrap().len(), size);

        // A reader sees them and changes nothing.
        let read = Store::read(&dir).unwrap();
        assert_eq!(read.networks, vec![net("blue")]);
        assert_eq!(read.endpoints, vec![ep("blue", "c1", 2)]);
        assert_eq!(records(&dir).len(), 2);

        // A restart replays them and goes on appending to the (clean) journal: a restart
        // writes no files.
        drop(store);
        let mut again = Store::open(&dir).unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.endpoints, vec![ep("blue", "c1", 2)]);
        assert!(snapshot_files(&dir, "networks").is_empty());
        again.put_endpoint(&ep("blue", "c2", 3)).unwrap();
        assert_eq!(records(&dir).len(), 3);
        again.delete_endpoint(&ep("blue", "c2", 3).key()).unwrap();
        // A compaction writes them as files and starts an empty journal.
        again.compact_now().unwrap();
        assert_eq!(snapshot_files(&dir, "networks"), vec!["blue.json"]);
        assert_eq!(snapshot_files(&dir, "endpoints"), vec!["blue@c1@eth0.json"]);
        assert!(records(&dir).is_empty());
        assert!(!dir.join("journal.new").exists());
        // The files alone say the same (what an older netd or `netctl plan` would read).
        fs::remove_file(dir.join("journal")).unwrap();
        assert_eq!(Store::read(&dir).unwrap().endpoints, loaded.endpoints);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_tails_are_dropped_and_never_appended_after() {
        let dir = tmpdir("torn");
        let eps = [
            ep("blue", "c1", 1),
            ep("blue", "c2", 2),
            ep("blue", "c3", 3),
        ];
        // Each way a last record can be torn: a flipped payload byte, the header lost but
        // the payload written, a length longer than what reached the disk.
        type Tear = fn(&mut Vec<u8>, std::ops::Range<usize>);
        let tears: [(&str, Tear); 3] = [
            ("checksum", |b, r| b[r.end - 2] ^= 0x20),
            ("header lost", |b, r| b[r.start..r.start + 8].fill(0)),
            ("cut short", |b, r| {
                b[r.start..r.start + 4].copy_from_slice(&(1u32 << 30).to_le_bytes())
            }),
        ];
        for (what, tear) in tears {
            let _ = fs::remove_dir_all(&dir);
            let mut store = Store::open(&dir).unwrap();
            store.put_network(&net("blue")).unwrap();
            store.put_endpoint(&eps[0]).unwrap();
            // DEL's shape: two ops in one record, torn as a whole.
            store
                .commit(&[Op::PutMeta(&meta(7)), Op::PutEndpoint(&eps[1])])
                .unwrap();
            drop(store);
            let last = records(&dir).pop().unwrap();
            patch_journal(&dir, |b| tear(b, last));
            assert_eq!(Store::read(&dir).unwrap().endpoints, vec![eps[0].clone()]);

            let mut store = Store::open(&dir).unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded.endpoints, vec![eps[0].clone()], "{what}");
            assert_eq!(loaded.meta, Meta::default(), "{what}");
            // The start compacted into a fresh journal, so a new record is not hidden
            // behind the torn one.
            assert!(records(&dir).is_empty(), "{what}");
            store.put_endpoint(&eps[2]).unwrap();
            drop(store);
            let loaded = Store::open(&dir).unwrap().load().unwrap();
            assert_eq!(
                loaded.endpoints,
                vec![eps[0].clone(), eps[2].clone()],
                "{what}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_over_a_half_written_snapshot_converges() {
        let dir = tmpdir("half");
        let mut store = Store::open(&dir).unwrap();
        store.put_network(&net("blue")).unwrap();
        store.put_endpoint(&ep("blue", "gone", 1)).unwrap();
        store.put_endpoint(&ep("blue", "old", 1)).unwrap();
        store.compact_now().unwrap();
        assert_eq!(snapshot_files(&dir, "endpoints").len(), 2);

        store.put_endpoint(&ep("blue", "c1", 1)).unwrap();
        store.put_endpoint(&ep("blue", "c1", 2)).unwrap();
        store.put_endpoint(&ep("blue", "c2", 3)).unwrap();
        store.put_endpoint(&ep("blue", "old", 4)).unwrap();
        store.delete_endpoint(&ep("blue", "gone", 1).key()).unwrap();
        store.put_meta(&meta(9)).unwrap();
        let journal = fs::read(dir.join("journal")).unwrap();
        let want = Store::read(&dir).unwrap();

        // A compaction that the crash stopped after some renames: c1 and the removal of
        // "gone" made it, c2 is still a temporary file, "old" and meta.json are old, and
        // the new journal was being written. The old journal is still in place.
        store.compact_now().unwrap();
        fs::write(dir.join("journal"), &journal).unwrap();
        let c2 = dir.join("endpoints/blue@c2@eth0.json");
        fs::rename(&c2, dir.join("endpoints/blue@c2@eth0.json.tmp")).unwrap();
        write_atomic(
            &dir.join("endpoints/blue@old@eth0.json"),
            &to_json(&ep("blue", "old", 1)),
        )
        .unwrap();
        fs::remove_file(dir.join("meta.json")).unwrap();
        fs::write(dir.join("journal.new"), b"netdjnl1\x05\0\0").unwrap();
        drop(store);

        let mut again = Store::open(&dir).unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.endpoints, want.endpoints);
        assert_eq!(loaded.meta, meta(9));
        assert_eq!(
            loaded
                .endpoints
                .iter()
                .map(|e| (e.container_id.as_str(), e.created))
                .collect::<Vec<_>>(),
            vec![("c1", 2), ("c2", 3), ("old", 4)]
        );
        assert!(!dir.join("journal.new").exists());
        assert!(!dir.join("endpoints/blue@c2@eth0.json.tmp").exists());
        // And after the next compaction the snapshot alone holds it all.
        again.compact_now().unwrap();
        fs::remove_file(dir.join("journal")).unwrap();
        assert_eq!(Store::read(&dir).unwrap().endpoints, want.endpoints);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_journal_is_compacted_and_a_record_larger_than_it_fits() {
        let dir = tmpdir("full");
        let mut store = Store::open(&dir).unwrap().with_journal_size(4096);
        store.put_network(&net("blue")).unwrap();
        let eps: Vec<Endpoint> = (0..40).map(|i| ep("blue", &format!("c{i}"), i)).collect();
        for e in &eps {
            store.put_endpoint(e).unwrap();
        }
        // 40 records of ~300 bytes do not fit in 4 KiB: compactions wrote files.
        let files = snapshot_files(&dir, "endpoints").len();
        assert!((20..40).contains(&files), "{files} endpoint files");
        assert_eq!(fs::metadata(dir.join("journal")).unwrap().len(), 4096);

        // 400 published ports (~21 KB of JSON) in one record.
        let big = with_ports(ep("blue", "big", 99), 400);
        store.put_endpoint(&big).unwrap();
        let size = fs::metadata(dir.join("journal")).unwrap().len();
        assert!(size > 20480 && size.is_multiple_of(4096), "{size}");
        assert_eq!(records(&dir).len(), 1);
        // The next compaction goes back to the usual size.
        store.delete_endpoint(&eps[0].key()).unwrap();
        store.compact_now().unwrap();
        assert_eq!(fs::metadata(dir.join("journal")).unwrap().len(), 4096);
        store.put_endpoint(&eps[0]).unwrap();
        drop(store);

        let loaded = Store::open(&dir).unwrap().load().unwrap();
        let mut want = eps.clone();
        want.push(big);
        want.sort_by_key(Endpoint::key);
        assert_eq!(loaded.endpoints, want);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_that_parses_not_is_an_error() {
        let dir = tmpdir("badrec");
        let mut store = Store::open(&dir).unwrap();
        store.load().unwrap();
        drop(store);
        // A record with a valid checksum whose payload is not a list of ops.
        patch_journal(&dir, |b| {
            let payload = b"{\"x\":1}";
            let len = (payload.len() as u32).to_le_bytes();
            let crc = journal::crc32c(journal::crc32c(0, &len), payload);
            b[8..12].copy_from_slice(&len);
            b[12..16].copy_from_slice(&crc.to_le_bytes());
            b[16..16 + payload.len()].copy_from_slice(payload);
        });
        let err = Store::open(&dir).unwrap().load().unwrap_err();
        assert!(
            matches!(err, StoreError::Journal { .. }) && err.to_string().contains("offset 8"),
            "{err}"
        );
        fs::write(dir.join("journal"), b"something else").unwrap();
        let err = Store::read(&dir).unwrap_err();
        assert!(err.to_string().contains("not a netd journal"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
