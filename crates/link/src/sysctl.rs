//! Sysctls through a private procfs instance instead of the host's `/proc`.
//!
//! In one procfs, every network namespace that ever looked under `sys/net` leaves a directory
//! entry named `net` under the same parent, and the kernel's lookup of `net` from a namespace
//! it has not cached yet walks all of them (they differ only in which namespace may see them).
//! So on a host with many containers, the first sysctl a new container's namespace reads costs
//! time in proportion to the containers that came before: measured on this project's VM,
//! 52 µs with 10 other namespaces and 399 µs with 1,000. A lookup of the host's own `net` is
//! no better off, since the host's entry, made at boot, sits behind all of theirs.
//!
//! A procfs instance made with `fsopen`/`fsmount` has a cache of its own, holding only what
//! this process looked up: 100–126 µs to make and use once, whatever the count, and the
//! instance is made once per process. It is a detached mount, never attached anywhere, and
//! `sys/net` in it shows the network namespace of the thread that opens a path, exactly as
//! `/proc/sys/net` does. It is not free either: making one costs about 20 µs, and closing it
//! about 75 µs more (the kernel unmounts it and waits for an expedited RCU grace period),
//! which in a burst of concurrent ADDs showed as 20–30% more time until all were attached.
//! So a process uses it only once told the host is crowded ([`note_namespace_count`]; the
//! plugin learns that from the id its namespace gives the container's, which is about the
//! number of containers); until then, and in netd, sysctls go through `/proc`. With the costs
//! above (the host-side lookup assumed to grow as the container-side one was measured to),
//! `/proc` costs about 71 + 0.7·N µs for the plugin's two writes against about 131 µs for a
//! private instance, so they cross near N = 90; [`CROWDED`] leaves room for the burst
//! penalty. Where the kernel or a sandbox refuses it (before Linux 5.2, a seccomp
//! filter, no CAP_SYS_ADMIN), the host's `/proc` serves, and so it does where `/proc/sys` is
//! mounted read-only (systemd's `ProtectKernelTunables=`): a fresh instance would not carry
//! that restriction, and a sandbox's intent is not ours to get around.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// From this many network namespaces on the host, a private instance is cheaper than `/proc`.
pub(crate) const CROWDED: i32 = 128;

static CROWDED_HOST: AtomicBool = AtomicBool::new(false);

/// Whether this process was told the host is crowded ([`note_namespace_count`]).
pub(crate) fn crowded() -> bool {
    CROWDED_HOST.load(Ordering::Relaxed)
}

/// Tells this process about how many network namespaces the host has (`n`, e.g. the id the
/// calling namespace gave a new container's); from [`CROWDED`] on, sysctls go through a
/// private procfs instance.
pub(crate) fn note_namespace_count(n: i32) {
    if n >= CROWDED {
        CROWDED_HOST.store(true, Ordering::Relaxed);
    }
}

/// Sets `disable_ipv6` on the interface `ifname` of the calling thread's namespace, before it
/// goes up, so it never gets an IPv6 address, route or multicast membership. An interface
/// without IPv6 state (IPv6 off in the kernel, an MTU below 1280) has nothing to turn off.
pub(crate) fn disable_ipv6(ifname: &str) -> io::Result<()> {
    match write(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), b"1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if exists(&format!("net/ipv6/conf/{ifname}")) {
                Err(e)
            } else {
                Ok(())
            }
        }
        r => r,
    }
}

/// Reads `rel` (a path under /proc/sys).
pub(crate) fn read(rel: &str) -> io::Result<String> {
    let mut s = String::new();
    open(rel, libc::O_RDONLY)?.read_to_string(&mut s)?;
    Ok(s)
}

/// Writes `value` to `rel` (a path under /proc/sys) in one write, as the kernel wants it.
pub(crate) fn write(rel: &str, value: &[u8]) -> io::Result<()> {
    open(rel, libc::O_WRONLY)?.write_all(value)
}

fn exists(rel: &str) -> bool {
    open(rel, libc::O_RDONLY | libc::O_DIRECTORY).is_ok()
}

fn open(rel: &str, flags: libc::c_int) -> io::Result<std::fs::File> {
    let private = crowded().then(private_proc).flatten();
    match private {
        Some(root) => open_at(root, &format!("sys/{rel}"), flags),
        None => open_at_cwd(&format!("/proc/sys/{rel}"), flags),
    }
}

/// This process's private procfs (its root directory), made on first use; None when the
/// kernel refused to make one.
fn private_proc() -> Option<&'static OwnedFd> {
    static ROOT: OnceLock<Option<OwnedFd>> = OnceLock::new();
    ROOT.get_or_init(|| {
        if sandboxed() {
            tracing::debug!("/proc/sys is read-only here; sysctls go through /proc");
            return None;
        }
        new_procfs()
            .inspect_err(|e| {
                tracing::debug!(error = %e, "no private procfs instance; sysctls go through /proc")
            })
            .ok()
    })
    .as_ref()
}

/// Whether this mount namespace has `/proc/sys` read-only.
fn sandboxed() -> bool {
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live, writable statvfs.
    let r = unsafe { libc::statvfs(c"/proc/sys".as_ptr(), &mut st) };
    r == 0 && st.f_flag & libc::ST_RDONLY != 0
}

/// A new, unattached procfs instance for this process's pid namespace.
fn new_procfs() -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC: only sysctls are read here.
    const MOUNT_ATTRS: libc::c_uint = 0x2 | 0x4 | 0x8;
    // SAFETY: fsopen takes a NUL-terminated name and flags.
    let ctx = owned(unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key, value or aux argument.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount takes the context descriptor and two flag words.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTRS,
        )
    })
}

fn owned(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) })
}

fn open_at(dir: &OwnedFd, rel: &str, flags: libc::c_int) -> io::Result<std::fs::File> {
    open_raw(dir.as_raw_fd(), rel, flags)
}

fn open_at_cwd(path: &str, flags: libc::c_int) -> io::Result<std::fs::File> {
    open_raw(libc::AT_FDCWD, path, flags)
}

fn open_raw(dir: libc::c_int, path: &str, flags: libc::c_int) -> io::Result<std::fs::File> {
    let c = CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a directory descriptor (or AT_FDCWD) and a NUL-terminated path.
    let fd =
        owned(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC) } as libc::c_long)?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(dir: std::fs::File) -> Vec<String> {
        let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut v: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The private instance shows the network namespace of the thread that reads it (the
    /// container's, in the plugin's namespace thread), as /proc does. Needs root, as the
    /// plugin does.
    #[test]
    fn the_private_procfs_follows_the_threads_network_namespace() {
        let root =
            private_proc().expect("a private procfs (fsopen/fsmount need root, Linux ≥ 5.2)");
        std::thread::spawn(move || {
            // SAFETY: unshare on this thread only; the namespace goes with the thread.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            let dir = open_at(
                root,
                "sys/net/ipv4/conf",
                libc::O_RDONLY | libc::O_DIRECTORY,
            );
            // A new namespace has only its loopback device, and /proc shows the same here.
            let ours = listed(dir.unwrap());
            assert_eq!(ours, ["all", "default", "lo"]);
            let procs = listed(open_at_cwd("/proc/sys/net/ipv4/conf", libc::O_RDONLY).unwrap());
            assert_eq!(ours, procs);
            // Through /proc first (no hint yet), then through the private instance.
            write("net/ipv6/conf/lo/disable_ipv6", b"0").unwrap();
            assert_eq!(read("net/ipv6/conf/lo/disable_ipv6").unwrap(), "0\n");
            note_namespace_count(CROWDED);
            assert!(CROWDED_HOST.load(Ordering::Relaxed));
            disable_ipv6("lo").unwrap();
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6").unwrap(),
                "1\n"
            );
            assert_eq!(read("net/ipv6/conf/lo/disable_ipv6").unwrap(), "1\n");
        })
        .join()
        .unwrap();
    }
}
