//! netd's state on disk: one small JSON file per network and per endpoint, each replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory), so a crash at any
//! instant leaves every object either as it was or as it became, and an ADD costs one small
//! write however many endpoints exist.
//!
//! Layout under the state directory:
//! `networks/NAME.json`, `endpoints/NETWORK@CONTAINER@IFNAME.json`, `meta.json`.
//! '@' cannot occur in validated names, so file names map back to keys unambiguously.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
        })
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
        write_atomic(&self.dir.join("meta.json"), &to_json(meta))
    }

    pub fn put_network(&self, net: &Network) -> Result<(), StoreError> {
        write_atomic(&self.network_path(&net.name), &to_json(net))
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        remove_durable(&self.network_path(name))
    }

    pub fn put_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        write_atomic(&self.endpoint_path(&ep.key()), &to_json(ep))
    }

    pub fn delete_endpoint(&self, key: &EndpointKey) -> Result<(), StoreError> {
        remove_durable(&self.endpoint_path(key))
    }
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

/// Removes `path` durably; a missing file is fine (removal is idempotent).
fn remove_durable(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
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
