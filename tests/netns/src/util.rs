//! Small helpers: unique names, running commands with bounded waits, and
//! locating the product binaries.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across parallel tests and processes: `nd<pid>x<counter><suffix>`.
///
/// Kept short (pid ≤ 7 digits) so that it can also be used inside interface
/// names, which are limited to 15 bytes.
pub fn unique_name(suffix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("nd{}x{:x}{}", std::process::id(), n, suffix)
}

/// Output of a finished (or timed out) command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code; `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit={:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            if self.timed_out { " (TIMED OUT)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Default bound on any helper command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` with optional stdin, waiting at most `timeout`; kills it after.
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> CmdOutput {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin piped");
        let input = input.to_vec();
        // Write from a thread so a child that does not read cannot block us.
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    CmdOutput {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout,
        stderr,
        timed_out,
    }
}

/// Runs `argv` (no stdin) with the default timeout.
pub fn run(argv: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    run_cmd(cmd, None, CMD_TIMEOUT)
}

/// Runs `argv` and panics unless it exits 0; returns stdout.
pub fn run_ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(out.success(), "command {argv:?} failed: {out}");
    out.stdout
}

/// Directory holding `netd`, `netctl` and `netd-cni`: `$NETD_BIN_DIR` if set,
/// else the cargo profile dir derived from the test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NETD_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Absolute path of a product binary; panics with a hint when missing.
pub fn bin(name: &str) -> PathBuf {
    bin_in(&bin_dir(), name)
}

/// Absolute path of binary `name` in `dir`; panics with a hint when missing.
pub fn bin_in(dir: &std::path::Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("netd-test-{}", unique_name(tag)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NETD_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// For a test that cannot run here (a tool or kernel feature missing): panics with `why`,
/// so the test fails loudly, unless `NETD_TESTS_ALLOW_SKIP=1` asks for skipping (never set
/// in CI); then prints a SKIPPED line and returns, and the caller returns too.
pub fn cannot_run(test: &str, why: &str) {
    if std::env::var_os("NETD_TESTS_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED {test} (NETD_TESTS_ALLOW_SKIP=1): {why}");
        return;
    }
    panic!("{test} cannot run: {why}; install what it needs, or set NETD_TESTS_ALLOW_SKIP=1 to skip it");
}
