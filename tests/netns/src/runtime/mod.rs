//! Real container runtimes (Podman, containerd with `ctr` and its CRI plugin) driven against
//! netd inside a test's [`World`].
//!
//! Runtimes insist on fixed paths (`/run/netns`, `/var/lib/cni`, `/etc/cni/net.d`,
//! `/opt/cni/bin`, `/run/containerd`...). A [`Sandbox`] gives them private ones: a long-lived
//! holder process in the World's host netns and in a private mount namespace where `/run`,
//! `/var/lib`, `/opt` and `/etc/cni` are empty tmpfs, `/opt/cni/bin` holds the built
//! `netd-cni` beside the reference plugins of `/usr/lib/cni`, and both `/etc/cni/net.d` (the
//! runtimes' default) and `/etc/cni/netd.d` (the dedicated dir docs/guide.md suggests for
//! containerd) are netd's conflist dir. So the runtime configurations in the tests name the
//! same paths as the guide's examples.
//! Runtime commands and netd itself run in it through `nsenter -t HOLDER -m -n`: netd too,
//! because the daemon opens the CNI_NETNS path the runtime hands the plugin, and runtimes
//! make those paths under the private `/run/netns`.
//!
//! On drop every process of that mount namespace and every descendant of one (containerd,
//! its shims, conmon, the containers, netd) is SIGKILLed; with the last of them the mount
//! namespace and all its mounts go away, so nothing outlives the test.
//!
//! A missing runtime fails the test unless `NETD_TESTS_ALLOW_SKIP=1` (never set in CI) turns it
//! into a skip, as for every other test that cannot run ([`crate::util::cannot_run`]).

pub mod containerd;
pub mod cri;
pub mod podman;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::util::{run_cmd, CmdOutput, TempDir, CMD_TIMEOUT};
use crate::world::World;

/// Whether every tool in `tools` is on PATH. If one is missing the test fails, or with
/// `NETD_TESTS_ALLOW_SKIP=1` is skipped: then this returns false and the test returns early.
pub fn require(tools: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    crate::util::cannot_run(
        "runtime test",
        &format!(
            "{missing:?} not on PATH (Debian: apt-get install podman containerd runc \
             busybox-static containernetworking-plugins; see .ci/run)"
        ),
    );
    false
}

/// A private mount namespace in the World's host netns, kept alive by a holder process.
pub struct Sandbox {
    holder: Child,
    /// `mnt:[INODE]` of the private mount namespace.
    mnt_ns: String,
    /// Keeps the mount namespace, and so its inode number, ours until the sweep on drop is
    /// over: a namespace freed earlier could lend its number to another test's new sandbox,
    /// whose processes the sweep would then kill.
    mnt_ns_fd: Option<File>,
    dir: TempDir,
}

impl Sandbox {
    /// Makes the namespace, sets its mounts up and starts netd in it (netd must not run yet).
    pub fn new(world: &mut World) -> Sandbox {
        assert!(
            !world.netd_running(),
            "start netd through the runtime's Sandbox"
        );
        let dir = TempDir::new("rt");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", world.host.path().display()))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut holder = cmd.spawn().expect("spawn nsenter/unshare holder");
        let pid = holder.id();
        // nsenter and unshare exec in turn, so the pid ends up being sleep's, in the new
        // mount namespace.
        let ours = mnt_ns_of("self").expect("own mount ns");
        let deadline = Instant::now() + CMD_TIMEOUT;
        let mnt_ns = loop {
            if let Ok(Some(st)) = holder.try_wait() {
                panic!("mount namespace holder exited: {st}");
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            match mnt_ns_of(&pid.to_string()) {
                Some(ns) if ns != ours && comm.trim() == "sleep" => break ns,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "holder {pid} never entered its mount namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mnt_ns_fd = File::open(format!("/proc/{pid}/ns/mnt")).ok();
        assert!(
            mnt_ns_of(&pid.to_string()).as_deref() == Some(mnt_ns.as_str()) && mnt_ns_fd.is_some(),
            "holder {pid} left its mount namespace"
        );
        let sb = Sandbox {
            holder,
            mnt_ns,
            mnt_ns_fd,
            dir,
        };
        // The copies of /run/netns's mounts pin other tests' namespaces: detach them first.
        // Then empty /run, /var/lib, /opt and /etc/cni, and lay out the CNI dirs.
        let script = r#"set -e
umount -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755 netd-test /run
mkdir -p /run/netns
mount -t tmpfs -o mode=755 netd-test /var/lib
mkdir -p /var/lib/cni
mount -t tmpfs -o mode=755 netd-test /opt
mkdir -p /opt/cni/bin
for p in /usr/lib/cni/*; do [ -e "$p" ] && ln -s "$p" /opt/cni/bin/; done
ln -sf "$1" /opt/cni/bin/netd-cni
mount -t tmpfs -o mode=755 netd-test /etc/cni
mkdir -p /etc/cni/net.d /etc/cni/netd.d
mount --bind "$2" /etc/cni/net.d
mount --bind "$2" /etc/cni/netd.d
"#;
        let out = sb.run(&[
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            "sh".as_ref(),
            world.bin("netd-cni").as_os_str(),
            world.cni_conf_dir().as_os_str(),
        ]);
        assert!(out.success(), "setting up the private mounts: {out}");
        world.set_netd_launcher(sb.enter_argv());
        world.start_netd();
        sb
    }

    /// The holder's pid (in the machine's pid namespace).
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// A temp dir for the runtime's private state (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `nsenter -t HOLDER -m -n`: what runs a command inside the sandbox.
    pub fn enter_argv(&self) -> Vec<OsString> {
        vec![
            "nsenter".into(),
            "-t".into(),
            self.pid().to_string().into(),
            "-m".into(),
            "-n".into(),
        ]
    }

    /// A command that runs `argv` inside the sandbox.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Command {
        let pre = self.enter_argv();
        let mut c = Command::new(&pre[0]);
        c.args(&pre[1..]).args(argv);
        c
    }

    /// Runs `argv` inside the sandbox with the default timeout.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> CmdOutput {
        run_cmd(self.command(argv), None, CMD_TIMEOUT)
    }

    /// A path as seen inside the sandbox's mount namespace, reachable from outside it.
    pub fn outside_path(&self, inner: &Path) -> PathBuf {
        // An absolute symlink under /proc/PID/root resolves against the caller's root, not
        // the sandbox's: /var/run -> /run would lead out of it. containerd names netns paths
        // /var/run/netns/..., so that link is followed here.
        let inner = match inner.strip_prefix("/var/run") {
            Ok(rest) => Path::new("/run").join(rest),
            Err(_) => inner.to_path_buf(),
        };
        let rel = inner.strip_prefix("/").unwrap_or(&inner);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }

    /// A runtime's netns (a bind mount at `inner`, e.g. `/run/netns/cni-…`, inside the
    /// sandbox) as a [`Netns`] the probes can use.
    pub fn adopt_netns(&self, inner: &Path, label: &str) -> Netns {
        Netns::adopt(&self.outside_path(inner), label)
    }

    /// Pids of every process in the sandbox's mount namespace and of their descendants
    /// (containers have mount namespaces of their own, but their parents are conmon or a
    /// shim in ours).
    pub fn processes(&self) -> Vec<u32> {
        let mut members = HashSet::new();
        let mut parent: HashMap<u32, u32> = HashMap::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if mnt_ns_of(&pid.to_string()).as_deref() == Some(self.mnt_ns.as_str()) {
                members.insert(pid);
            }
            if let Some(pp) = ppid_of(pid) {
                parent.insert(pid, pp);
            }
        }
        let mut all: Vec<u32> = parent
            .keys()
            .copied()
            .filter(|p| {
                // Walk up; bounded by the number of processes.
                let mut cur = *p;
                for _ in 0..parent.len() {
                    if members.contains(&cur) {
                        return true;
                    }
                    match parent.get(&cur) {
                        Some(&pp) if pp > 1 => cur = pp,
                        _ => return false,
                    }
                }
                false
            })
            .collect();
        all.sort_unstable();
        all
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Every process ever found is killed until it is gone (a zombie counts as gone):
        // a container whose shim died first is reparented away from the sandbox and would
        // not be found again, so it must stay on the list.
        let mut victims: HashMap<u32, u64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for p in self.processes() {
                if let Some(start) = proc_stat(p).map(|s| s.start) {
                    victims.entry(p).or_insert(start);
                }
            }
            // Alive: same start time (not a reused pid) and not a zombie.
            victims.retain(|p, start| {
                proc_stat(*p).is_some_and(|s| s.start == *start && s.state != 'Z')
            });
            if victims.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("warning: runtime sandbox processes survive SIGKILL: {victims:?}");
                break;
            }
            for p in victims.keys() {
                // SAFETY: kill(2) on a pid whose start time we just checked.
                unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Last: with no process left in it, closing this frees the namespace and its mounts.
        self.mnt_ns_fd.take();
    }
}

fn mnt_ns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The fields of /proc/PID/stat the sweep needs.
struct ProcStat {
    state: char,
    ppid: u32,
    /// Start time in clock ticks after boot: tells a reused pid from the process we saw.
    start: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // proc(5): state is field 3, ppid 4, starttime 22; `rest` starts at field 3.
    Some(ProcStat {
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
    })
}

fn ppid_of(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|s| s.ppid)
}

/// Connects from `ns` to `dst` and reads what the server says before closing (the
/// containers' `nc -ll -e echo BANNER` servers). Errors on refusal, timeout or silence.
pub fn tcp_banner(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Result<String, String> {
    ns.run_in(|| {
        let mut s =
            TcpStream::connect_timeout(&dst, timeout).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        // Send nothing: `nc -e echo` never reads, and closing a socket with unread input
        // makes the kernel answer with a reset that can discard the banner.
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf).trim().to_string();
        if text.is_empty() {
            return Err("connected, but the server said nothing".into());
        }
        Ok(text)
    })
}

/// [`tcp_banner`] that must answer `banner`, retried for up to `within` (a container's
/// server may take a moment to listen after `run` returns).
pub fn assert_banner(ns: &Netns, dst: SocketAddr, banner: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match tcp_banner(ns, dst, crate::probe::PROBE_TIMEOUT) {
            Ok(t) if t == banner => return,
            r if Instant::now() >= deadline => panic!(
                "TCP from netns {} ({}) to {dst} should be answered with {banner:?}, got {r:?}",
                ns.name(),
                ns.label()
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// [`tcp_banner`] that must fail (refused or timed out) within the probe timeout.
pub fn assert_banner_blocked(ns: &Netns, dst: SocketAddr) {
    let t = Instant::now();
    let r = tcp_banner(ns, dst, crate::probe::PROBE_TIMEOUT);
    assert!(
        r.is_err(),
        "TCP from netns {} ({}) to {dst} should fail, but got {r:?}",
        ns.name(),
        ns.label()
    );
    assert!(
        t.elapsed() < crate::probe::PROBE_TIMEOUT + crate::probe::SCHEDULING_SLACK,
        "refusal took {:?}",
        t.elapsed()
    );
}
