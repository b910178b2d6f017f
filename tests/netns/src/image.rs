//! Container images built locally from busybox-static (no registry is reachable from the
//! tests): `tests/netns/image/mkimage.sh` writes a rootfs tarball and a docker-archive of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{run_cmd, CMD_TIMEOUT};

/// The image every runtime test runs: busybox with its applets; default command `sh`.
pub const BUSYBOX_REF: &str = "localhost/netd-busybox:test";

/// The CRI sandbox ("pause") image. Its process is a TCP server on [`PAUSE_PORT`] that
/// answers [`PAUSE_BANNER`], so that a pod's published port has something to reach without
/// starting an application container in it.
pub const PAUSE_REF: &str = "localhost/netd-pause:test";
pub const PAUSE_PORT: u16 = 8080;
pub const PAUSE_BANNER: &str = "netd-pod";

/// A built image: the rootfs tarball and the docker-archive holding it.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    /// Plain rootfs tarball, for `podman import`.
    pub rootfs_tar: PathBuf,
    /// docker-archive (manifest.json, config.json, layer.tar), for `ctr image import`.
    pub archive_tar: PathBuf,
}

impl Image {
    /// Builds `reference` in `dir` (created if missing) with default command `cmd`.
    pub fn build(dir: &Path, reference: &str, cmd: &[&str]) -> Image {
        std::fs::create_dir_all(dir).expect("mkdir image dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/mkimage.sh");
        let mut c = Command::new("sh");
        c.arg(&script).arg(dir).arg(reference).args(cmd);
        let out = run_cmd(c, None, CMD_TIMEOUT);
        assert!(out.success(), "{} failed: {out}", script.display());
        Image {
            reference: reference.to_string(),
            rootfs_tar: dir.join("rootfs.tar"),
            archive_tar: dir.join("image.tar"),
        }
    }

    /// The busybox image ([`BUSYBOX_REF`]).
    pub fn busybox(dir: &Path) -> Image {
        Self::build(dir, BUSYBOX_REF, &["sh"])
    }

    /// The pause image ([`PAUSE_REF`]): `nc -ll` keeps listening after each connection.
    pub fn pause(dir: &Path) -> Image {
        let port = PAUSE_PORT.to_string();
        Self::build(
            dir,
            PAUSE_REF,
            &["nc", "-ll", "-p", &port, "-e", "echo", PAUSE_BANNER],
        )
    }
}
