//! The Unix socket server: reads one bounded HTTP request per connection, hands it to the
//! engine on a blocking thread (the engine does netlink and fsync), and writes the answer.
//! A slow client only ever holds its own connection: the engine lock is taken after the whole
//! request has arrived, and reading it is bounded in time and size.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::engine::{Engine, EngineError};
use crate::api::http::{self, HttpError};
use crate::api::{
    ApiError, AttachRequest, CreateNetwork, ErrorBody, ErrorKind, GcRequest, Released, MAX_BODY,
};
use crate::model::EndpointKey;
use crate::resolve::Kind;

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another netd is already listening on {0}")]
    InUse(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket with owner root:`gid` and `mode`, replacing a stale socket file left by
/// a crash but never one that a running daemon still answers on. The socket is bound under a
/// temporary name in the same directory, given its owner and mode, and only then renamed to
/// `path`: a client can never connect while the socket is still wider open than asked.
fn bind(path: &Path, mode: u32, gid: u32) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::MetadataExt;
    let io = |op, source| ServeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io("removing stale socket", e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io("binding", e))?;
    let secured = std::os::unix::fs::chown(&tmp, Some(0), Some(gid))
        .map_err(|e| io("changing the owner of", e))
        .and_then(|()| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("setting the mode of", e))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e)));
    if let Err(e) = secured {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let meta = std::fs::metadata(path).map_err(|e| io("checking", e))?;
    if meta.mode() & 0o777 != mode || meta.uid() != 0 || meta.gid() != gid {
        return Err(io(
            "securing",
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "socket has mode {:04o} uid {} gid {} after setting {mode:04o} uid 0 gid {gid}",
                    meta.mode() & 0o777,
                    meta.uid(),
                    meta.gid(),
                ),
            ),
        ));
    }
    Ok(listener)
}

// ---- socket access (root and one group) ----

/// The group allowed on the socket besides root, once [`bind_secure`] found it.
static SOCKET_GID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

/// The gid of group `name` (a number is taken as the gid itself), if it exists.
pub fn group_gid(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed group is a valid out-parameter; pointers outlive the call.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live local; buf.len() is the buffer passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some(grp.gr_gid)
}

/// Refuses a socket directory that others could tamper with: world-writable (without the
/// sticky bit, and even with it: another user could plant a socket there), or not owned by
/// root or netd's own user.
pub fn check_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(format!(
            "socket directory {} is world-writable (mode {mode:04o}); use a directory only root can write to, e.g. /run/netd",
            dir.display()
        ));
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "socket directory {} belongs to uid {}, not root",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Binds the socket ([`bind`]) after checking its directory, owned and moded for who may
/// use it:
/// with `group` unset, root only (root:root 0600), which is what the docs promise and what a
/// firewall's control socket should be unless the operator says otherwise; with a group that
/// exists, root:`group` 0660; with a group that does not exist, root only again (logged),
/// failing closed rather than open. The mode and owner are read back.
pub fn bind_secure(path: &Path, group: Option<&str>) -> Result<UnixListener, ServeError> {
    let bad = |msg: String| ServeError::Io {
        op: "securing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::Io {
            op: "creating the directory of",
            path: path.to_path_buf(),
            source: e,
        })?;
        check_socket_dir(dir).map_err(bad)?;
    }
    let gid = group.and_then(group_gid);
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    // Root's group unless a socket group was found: a socket would otherwise inherit the
    // creating process's group, which need not be root's (netd started through sudo -g).
    let listener = bind(path, mode, gid.unwrap_or(0))?;
    let _ = SOCKET_GID.set(gid);
    match (group, gid) {
        (Some(group), Some(g)) => {
            info!(socket = %path.display(), group, gid = g, "socket is root:{group} 0660: root and members of {group} may use it")
        }
        (Some(group), None) => {
            warn!(socket = %path.display(), group, "group {group:?} does not exist: the socket is root-only (0600); create the group to let its members use netctl")
        }
        (None, _) => {
            info!(socket = %path.display(), "socket is root:root 0600: only root may use it (set socket_group to let a group in)")
        }
    }
    Ok(listener)
}

/// Supplementary groups of a process, from /proc/PID/status.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether a peer may use the socket: root, netd's own user, or a member of the socket group.
/// The file's owner and mode already enforce this; this is the second lock.
fn peer_allowed(peer: &Peer) -> bool {
    // SAFETY: geteuid cannot fail.
    if peer.uid == 0 || peer.uid == unsafe { libc::geteuid() } {
        return true;
    }
    let Some(Some(gid)) = SOCKET_GID.get().copied() else {
        return false;
    };
    peer.gid == gid
        || peer
            .pid
            .is_some_and(|p| supplementary_groups(p).contains(&gid))
}

pub async fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            connection(stream, engine).await;
            drop(permit);
        });
    }
}

struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid={} gid={}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid={pid}")?;
        }
        Ok(())
    }
}

async fn connection(mut stream: UnixStream, engine: Arc<Mutex<Engine>>) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let (status, body) = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => error(408, ApiError::invalid("request not received in time")),
        Ok(Err(e)) => error(400, ApiError::invalid(e.to_string())),
        Ok(Ok(None)) => return,
        // Refused only once its (bounded) request has been read: answering and closing while
        // the client is still writing would reset the connection, and the client would see
        // EPIPE/ECONNRESET instead of the reason.
        Ok(Ok(Some(_))) if !peer_allowed(&peer) => {
            warn!(peer = %peer, "refused: not root and not in the socket's group");
            error(
                403,
                ApiError::invalid(
                    "permission denied: netd serves root and members of its socket group",
                ),
            )
        }
        Ok(Ok(Some((method, path, body)))) => {
            let mutating = method != "GET";
            let what = format!("{method} {path}");
            let answer = tokio::task::spawn_blocking(move || {
                let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
                route(&mut engine, &method, &path, &body)
            })
            .await
            .unwrap_or_else(|_| error(500, ApiError::internal("request handler panicked")));
            if mutating {
                info!(request = %what, status = answer.0, peer = %peer, "change requested");
            } else {
                debug!(request = %what, status = answer.0, peer = %peer, "query");
            }
            answer
        }
    };
    let _ = tokio::time::timeout(
        READ_TIMEOUT,
        stream.write_all(&http::response(status, &body)),
    )
    .await;
    let _ = stream.shutdown().await;
}

type Request = (String, String, Vec<u8>);

async fn read_request(stream: &mut UnixStream) -> Result<Option<Request>, HttpError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16384];
    loop {
        if let Some((head, off)) = http::parse_head(&buf, MAX_BODY)? {
            let want = off + head.content_length;
            // One allocation for the whole (bounded) body instead of doubling as it arrives.
            buf.reserve(want.saturating_sub(buf.len()));
            while buf.len() < want {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|_| HttpError::Malformed("connection error"))?;
                if n == 0 {
                    return Err(HttpError::Malformed("body shorter than Content-Length"));
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > want {
                    return Err(HttpError::Malformed("body longer than Content-Length"));
                }
            }
            let [method, path, _] = head.first;
            return Ok(Some((method, path, buf.split_off(off))));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HttpError::Malformed("connection error"))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(HttpError::Malformed("connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn ok<T: Serialize>(status: u16, v: &T) -> (u16, Vec<u8>) {
    (status, serde_json::to_vec(v).expect("answers serialize"))
}

fn error(status: u16, e: ApiError) -> (u16, Vec<u8>) {
    ok(status, &ErrorBody { error: e })
}

fn api_error(e: ApiError) -> (u16, Vec<u8>) {
    error(e.kind.status(), e)
}

fn decode<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))
}

/// Dispatches one request. Paths are `/v1/...`; the query parameters are `links=remove` on an
/// endpoint's DELETE (netd then removes the host veth too, after answering) and `ports=omit`
/// on an attach (the answer's endpoint leaves out the port mappings the caller just sent).
pub fn route(engine: &mut Engine, method: &str, full_path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let (path, query) = full_path.split_once('?').unwrap_or((full_path, ""));
    let remove_links = query.split('&').any(|kv| kv == "links=remove");
    let omit_ports = query.split('&').any(|kv| kv == "ports=omit");
    let Some(rest) = path.strip_prefix("/v1/") else {
        return error(
            404,
            ApiError::not_found(format!("no such API path {path:?}; netd serves /v1/")),
        );
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let result = match (method, parts.as_slice()) {
        ("GET", ["status"]) => Ok(ok(200, &engine.status())),
        ("GET", ["networks"]) => Ok(ok(200, &engine.networks().collect::<Vec<_>>())),
        ("POST", ["networks"]) => decode::<CreateNetwork>(body)
            .and_then(|req| engine.create_network(req).map_err(ApiError::from))
            .map(|n| ok(201, &n)),
        ("GET", ["networks", name]) => engine
            .network(name)
            .map(|n| ok(200, &n))
            .map_err(ApiError::from),
        ("DELETE", ["networks", name]) => engine
            .remove_network(name)
            .map(|()| ok(200, &serde_json::json!({})))
            .map_err(ApiError::from),
        ("GET", ["endpoints"]) => Ok(ok(200, &engine.endpoints().collect::<Vec<_>>())),
        ("POST", ["endpoints"]) => decode::<AttachRequest>(body)
            .and_then(|req| engine.attach(req).map_err(ApiError::from))
            .map(|mut a| {
                if omit_ports {
                    a.endpoint.ports = Vec::new();
                }
                ok(201, &a)
            }),
        ("GET", ["endpoints", network, container, ifname]) => engine
            .endpoint(&key(network, container, ifname))
            .map(|a| ok(200, &a))
            .map_err(ApiError::from),
        ("DELETE", ["endpoints", network, container, ifname]) => {
            let key = key(network, container, ifname);
            if remove_links {
                engine.release(&key)
            } else {
                engine.detach(&key)
            }
            .map(|released| ok(200, &Released { released }))
            .map_err(ApiError::from)
        }
        ("POST", ["gc"]) => decode::<GcRequest>(body)
            .and_then(|req| engine.gc(req).map_err(ApiError::from))
            .map(|released| ok(200, &crate::api::GcResult { released })),
        (_, ["status" | "networks" | "endpoints" | "gc", ..]) => Err(ApiError::invalid(format!(
            "{method} is not supported on {path}"
        ))),
        _ => Err(ApiError::not_found(format!("no such API path {path:?}"))),
    };
    result.unwrap_or_else(api_error)
}

/// The one place an engine error becomes an API error. The statuses (and so the plugin's CNI
/// codes) are pinned by tests/netns/tests/reliability.rs and docs/reliability.md: a request
/// wrong in itself is 400, one that clashes with the state or the host 409, a missing object
/// 404, and a kernel, disk or consistency failure 500.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let kind = match &e {
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Invalid(_) => ErrorKind::Invalid,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::Refused(r) => match r.kind() {
                Kind::Invalid => ErrorKind::Invalid,
                Kind::Conflict => ErrorKind::Conflict,
                Kind::Inconsistent => ErrorKind::Internal,
            },
            EngineError::Kernel { .. }
            | EngineError::TableRefused { .. }
            | EngineError::Store { .. }
            | EngineError::Io { .. } => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

fn key(network: &str, container: &str, ifname: &str) -> EndpointKey {
    EndpointKey {
        network: network.to_string(),
        container_id: container.to_string(),
        ifname: ifname.to_string(),
    }
}
