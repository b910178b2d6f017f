//! Network namespace files and running netlink work inside them.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use super::{LinkError, Result};

/// An open, verified network namespace file (a `/run/netns/*` bind mount or `/proc/PID/ns/net`).
/// Holding the fd pins the namespace, so it cannot vanish between the check and its use.
pub(crate) struct NetnsFile {
    file: File,
    pub(crate) path: String,
}

impl NetnsFile {
    pub(crate) fn open(path: &str) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| LinkError::os(format!("opening netns {path}"), e))?;
        match is_netns_fd(file.as_raw_fd()) {
            Ok(true) => Ok(NetnsFile {
                file,
                path: path.to_string(),
            }),
            Ok(false) => Err(LinkError::NotNetns {
                path: path.to_string(),
            }),
            Err(e) => Err(LinkError::os(format!("checking netns {path}"), e)),
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether `path` is a network namespace: on nsfs, and of type CLONE_NEWNET (a mount or PID
/// namespace file is on nsfs too). False for anything that cannot be opened.
pub fn is_netns(path: impl AsRef<Path>) -> bool {
    match File::open(path.as_ref()) {
        Ok(f) => is_netns_fd(f.as_raw_fd()).unwrap_or(false),
        Err(_) => false,
    }
}

fn is_netns_fd(fd: RawFd) -> io::Result<bool> {
    // SAFETY: fstatfs writes only into the zeroed struct we pass; fd is open for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live, writable statfs; fd stays open for the call.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    if st.f_type as i64 != libc::NSFS_MAGIC as i64 {
        return Ok(false);
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let ty = unsafe { libc::ioctl(fd, libc::NS_GET_NSTYPE as _) };
    if ty < 0 {
        let err = io::Error::last_os_error();
        // Kernels before 4.11 cannot say; setns(CLONE_NEWNET) will refuse a wrong type later.
        return if err.raw_os_error() == Some(libc::ENOTTY) {
            Ok(true)
        } else {
            Err(err)
        };
    }
    Ok(ty == libc::CLONE_NEWNET)
}

/// Runs `f` with a netlink handle bound to the namespace `ns`, on a dedicated thread that
/// enters the namespace and is then discarded: setns(2) changes only the calling thread, and a
/// thread that changed namespace must never run anybody else's work afterwards.
pub(crate) fn run_in_netns<T, F, Fut>(ns: &NetnsFile, f: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T>>,
    T: Send,
{
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("netd-netns".to_string())
            .spawn_scoped(s, move || {
                // SAFETY: plain syscall on an fd that `ns` keeps open.
                if unsafe { libc::setns(ns.raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(LinkError::os(
                        format!("entering netns {}", ns.path),
                        io::Error::last_os_error(),
                    ));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| LinkError::os("starting a tokio runtime", e))?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
                        LinkError::os(format!("opening a netlink socket in netns {}", ns.path), e)
                    })?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            })
            .map_err(|e| LinkError::os("starting a thread for netns work", e))?;
        match thread.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
