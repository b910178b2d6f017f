//! Podman (4.x, CNI backend) as a user runs it, with private state.
//!
//! Private `containers.conf` and `storage.conf` (through `CONTAINERS_CONF` and
//! `CONTAINERS_STORAGE_CONF`), `--root`/`--runroot` in the sandbox's temp dir, so the
//! machine's own Podman state is never read or written. The CNI settings are Podman's own
//! defaults written out (`/etc/cni/net.d`, `/opt/cni/bin`): inside the [`Sandbox`] they are
//! netd's conflist dir and the built plugin, so the test runs what docs/guide.md shows.
//!
//! Quirks (Podman 4.3.1, Debian 12): `ip netns exec` remounts /sys and hides the cgroup
//! mounts, so Podman runs under `nsenter`; `--runtime runc` because crun is not installed;
//! `--cgroup-manager cgroupfs` and `--events-backend file` because there is no systemd
//! session; explicit `--ulimit`s because the defaults copy the test process's limits; and
//! `rm -t 0` because a container's PID 1 ignores SIGTERM and `rm -f` would wait 10 s.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::image::Image;
use crate::netns::Netns;
use crate::runtime::Sandbox;
use crate::util::{run_cmd, CmdOutput};
use crate::world::World;

/// What `podman run` gets besides the test's own flags.
pub const RUN_FLAGS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// The `[network]` table of containers.conf, exactly as docs/guide.md shows it.
pub const NETWORK_CONF: &str = r#"[network]
network_backend = "cni"
network_config_dir = "/etc/cni/net.d"
cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
"#;

const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// A private Podman inside a [`Sandbox`] (which also runs netd).
pub struct Podman {
    // Dropped last: kills conmon and the containers.
    sb: Sandbox,
    conf: PathBuf,
    storage_conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    /// [`crate::image::BUSYBOX_REF`], imported.
    pub image: String,
}

impl Podman {
    /// Sandbox + netd in it, private configuration, the busybox image imported.
    pub fn new(world: &mut World) -> Podman {
        let sb = Sandbox::new(world);
        let d = sb.dir().to_path_buf();
        for sub in ["root", "runroot", "tmp", "static", "volumes"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let conf = d.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"{NETWORK_CONF}
# Test-only: private state, no systemd.
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
static_dir = "{d}/static"
volume_path = "{d}/volumes"
"#,
                d = d.display(),
            ),
        )
        .expect("write containers.conf");
        let storage_conf = d.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{r}/root\"\nrunroot = \"{r}/runroot\"\n",
                r = d.display()
            ),
        )
        .expect("write storage.conf");
        let mut p = Podman {
            conf,
            storage_conf,
            root: d.join("root"),
            runroot: d.join("runroot"),
            image: String::new(),
            sb,
        };
        let img = Image::busybox(&d.join("image"));
        p.ok(&[
            "import",
            &img.rootfs_tar.display().to_string(),
            &img.reference,
        ]);
        p.image = img.reference;
        p
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sb
    }

    /// Runs `podman ARGS` with the private configuration.
    pub fn podman(&self, args: &[&str]) -> CmdOutput {
        let mut argv: Vec<String> = vec![
            "podman".into(),
            "--root".into(),
            self.root.display().to_string(),
            "--runroot".into(),
            self.runroot.display().to_string(),
            "--runtime".into(),
            "runc".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = self.sb.command(&argv);
        cmd.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            // No registry exists here; images are local.
            .env("CONTAINERS_REGISTRIES_CONF", "/dev/null");
        run_cmd(cmd, None, PODMAN_TIMEOUT)
    }

    /// `podman ARGS` that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.success(), "podman {args:?} failed: {out}");
        out.stdout
    }

    /// `podman run -d --name NAME [RUN_FLAGS] ARGS…` (ARGS: flags, then image and command);
    /// returns the container ID.
    pub fn run(&self, name: &str, args: &[&str]) -> String {
        let mut a = vec!["run", "-d", "--name", name];
        a.extend_from_slice(RUN_FLAGS);
        a.extend_from_slice(args);
        self.ok(&a).trim().to_string()
    }

    /// `podman inspect NAME` (the container's object).
    pub fn inspect(&self, name: &str) -> Value {
        let s = self.ok(&["inspect", "--type", "container", name]);
        let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("inspect: {e}: {s}"));
        v[0].clone()
    }

    /// The container's address on `network`, as Podman reports it.
    pub fn ip(&self, name: &str, network: &str) -> IpAddr {
        let v = self.inspect(name);
        let s = v["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        s.parse()
            .unwrap_or_else(|e| panic!("{name} has no address on {network} ({e}): {v}"))
    }

    /// The container's netns, for probes run by the test.
    pub fn netns(&self, name: &str) -> Netns {
        let v = self.inspect(name);
        let key = v["NetworkSettings"]["SandboxKey"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{name} has no SandboxKey: {v}"))
            .to_string();
        self.sb.adopt_netns(std::path::Path::new(&key), name)
    }

    /// `podman exec NAME ARGV…`.
    pub fn exec(&self, name: &str, argv: &[&str]) -> CmdOutput {
        let mut a = vec!["exec", name];
        a.extend_from_slice(argv);
        self.podman(&a)
    }

    /// `podman rm -f -t 0 NAME`.
    pub fn rm(&self, name: &str) {
        self.ok(&["rm", "-f", "-t", "0", name]);
    }
}
