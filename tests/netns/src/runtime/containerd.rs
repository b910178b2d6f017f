//! containerd (1.6) with its CRI plugin, from a private `config.toml`, inside a [`Sandbox`].
//!
//! Root, state, the gRPC/ttrpc sockets and the images are in the sandbox's temp dir; the CRI
//! plugin's CNI table is [`CRI_CNI_CONF`], the snippet of docs/guide.md. `ctr run --cni`
//! (go-cni) has no flags for CNI dirs and reads its defaults, `/etc/cni/net.d` and
//! `/opt/cni/bin` (the sandbox makes them netd's conflist dir and the built plugin).
//!
//! Quirks (containerd 1.6.20, Debian 12): AppArmor off and `restrict_oom_score_adj` because
//! the test machine may have neither an AppArmor profile nor room to raise OOM scores; the
//! plugins needing absent kernel or tools (aufs, btrfs, zfs, devmapper) are disabled so
//! their errors do not drown the log; the sandbox image must be in the `k8s.io` namespace.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::image::Image;
use crate::runtime::Sandbox;
use crate::util::{run_cmd, CmdOutput, CMD_TIMEOUT};
use crate::world::World;

/// The containerd namespace the CRI plugin uses (kubelet's images live there).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The namespace `ctr` tests use.
pub const CTR_NAMESPACE: &str = "netd";

/// The CRI plugin's CNI table, exactly as docs/guide.md shows it for containerd 1.x: a conflist
/// dir that only netd writes (in the sandbox, netd's conflist dir is mounted there).
pub const CRI_CNI_CONF: &str = r#"[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/netd.d"
  max_conf_num = 1
"#;

/// A private containerd inside a [`Sandbox`] (which also runs netd).
pub struct Containerd {
    daemon: Option<Child>,
    sb: Sandbox,
    socket: PathBuf,
    log: PathBuf,
    pub busybox: Image,
    pub pause: Image,
}

impl Containerd {
    /// Sandbox + netd, containerd started (socket answering), both images imported into the
    /// CRI namespace and the busybox image into [`CTR_NAMESPACE`].
    pub fn new(world: &mut World) -> Containerd {
        Self::with_conf_template(world, None)
    }

    /// [`Containerd::new`] with the CRI plugin's `conf_template` set to a file holding
    /// `template`: containerd renders it into `conf_dir` when kubelet (here the test) sends
    /// the node's pod CIDR with UpdateRuntimeConfig.
    pub fn with_conf_template(world: &mut World, template: Option<&str>) -> Containerd {
        let sb = Sandbox::new(world);
        let d = sb.dir().to_path_buf();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        let busybox = Image::busybox(&d.join("busybox"));
        let pause = Image::pause(&d.join("pause"));
        let tmpl_path = template.map(|t| {
            let p = d.join("netd.conflist.tmpl");
            std::fs::write(&p, t).expect("write conf_template");
            p
        });
        std::fs::write(
            &config,
            config_toml(&d, &pause.reference, tmpl_path.as_deref()),
        )
        .expect("write config.toml");
        let log = d.join("containerd.log");
        let logf = File::create(&log).expect("containerd log");
        let mut cmd = sb.command(&[
            "containerd".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ]);
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf);
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut daemon = cmd.spawn().expect("spawn containerd");
        let mut c = Containerd {
            daemon: None,
            sb,
            socket,
            log,
            busybox,
            pause,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = daemon.try_wait() {
                panic!("containerd exited at start with {st}:\n{}", c.log());
            }
            if c.ctr(CRI_NAMESPACE, &["version"]).success() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!("containerd did not answer within 30 s:\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c.daemon = Some(daemon);
        for (ns, img) in [
            (CRI_NAMESPACE, &c.busybox),
            (CRI_NAMESPACE, &c.pause),
            (CTR_NAMESPACE, &c.busybox),
        ] {
            let tar = img.archive_tar.display().to_string();
            c.ctr_ok(ns, &["image", "import", &tar]);
        }
        c
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sb
    }

    /// containerd's gRPC socket (the CRI endpoint, `unix://` + this path for crictl).
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address SOCKET -n NAMESPACE ARGS…` inside the sandbox.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> CmdOutput {
        let sock = self.socket.display().to_string();
        let mut argv = vec!["ctr", "--address", &sock, "-n", namespace];
        argv.extend_from_slice(args);
        run_cmd(self.sb.command(&argv), None, CMD_TIMEOUT)
    }

    /// [`Containerd::ctr`] that must succeed; returns stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr(namespace, args);
        assert!(
            out.success(),
            "ctr {args:?} failed: {out}\n--- containerd log ---\n{}",
            self.log()
        );
        out.stdout
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // The sandbox's drop kills it with the shims and containers; reap our child.
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}\n--- end ---", self.log());
        }
    }
}

/// The private configuration. The `[plugins."io.containerd.grpc.v1.cri".cni]` table is the
/// one docs/kubernetes.md shows.
fn config_toml(
    d: &std::path::Path,
    sandbox_image: &str,
    conf_template: Option<&std::path::Path>,
) -> String {
    let template = conf_template
        .map(|p| format!("    conf_template = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd-ttrpc.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{CRI_CNI_CONF}{template}"#,
        d = d.display()
    )
}
