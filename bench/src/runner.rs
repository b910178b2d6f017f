//! The "runtime" side of the bench: a child process living in a system's private host netns
//! (started through `ip netns exec`, so it also sees that netns's /sys) that execs CNI plugins
//! or netavark the way a container runtime does and times each call from the first process
//! start to the last exit. One JSON request per line on stdin, one JSON answer per line on
//! stdout.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One process of a call: `argv`, extra environment, and the JSON written to its stdin.
/// With `prev_from_last`, the previous step's stdout (a CNI result) is set as `prevResult`,
/// which is how libcni chains the plugins of a conflist on ADD.
pub fn step(argv: &[&str], env: &[(&str, &str)], stdin: Value, prev_from_last: bool) -> Value {
    json!({
        "argv": argv,
        "env": env.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "stdin": stdin,
        "prev_from_last": prev_from_last,
    })
}

/// Answer of one call.
#[derive(Debug, Clone)]
pub struct Timed {
    pub ok: bool,
    pub elapsed: Duration,
    /// stdout of the last step that ran.
    pub stdout: String,
    pub error: String,
}

impl Timed {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }
}

/// Handle on a runner process inside a netns.
pub struct Runner {
    child: Child,
    to: ChildStdin,
    from: std::io::BufReader<ChildStdout>,
}

impl Runner {
    /// Starts `bench runner` inside `netns` (by name).
    pub fn start(netns: &str) -> Runner {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(exe)
            .arg("runner")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn runner");
        let to = child.stdin.take().expect("stdin");
        let from = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Runner { child, to, from }
    }

    /// Runs `steps` in order (stopping at the first failure) and times the whole call.
    pub fn call(&mut self, steps: Vec<Value>, timeout: Duration) -> Timed {
        let req = json!({"steps": steps, "timeout_ms": timeout.as_millis() as u64});
        timed(&self.request(req))
    }
}

/// Answer of a burst: every call's own time, and the time from the common start until the
/// last call ended.
#[derive(Debug, Clone)]
pub struct Burst {
    pub calls: Vec<Timed>,
    pub wall: Duration,
}

fn timed(v: &Value) -> Timed {
    Timed {
        ok: v["ok"].as_bool().unwrap_or(false),
        elapsed: Duration::from_nanos(v["ns"].as_u64().unwrap_or(0)),
        stdout: v["stdout"].as_str().unwrap_or_default().to_string(),
        error: v["error"].as_str().unwrap_or_default().to_string(),
    }
}

impl Runner {
    /// Starts all `calls` at once (one thread each, released together) and waits for all.
    pub fn burst(&mut self, calls: Vec<Vec<Value>>, timeout: Duration) -> Burst {
        let req = json!({"burst": calls, "timeout_ms": timeout.as_millis() as u64});
        let v = self.request(req);
        Burst {
            calls: v["calls"]
                .as_array()
                .map(|a| a.iter().map(timed).collect())
                .unwrap_or_default(),
            wall: Duration::from_nanos(v["wall_ns"].as_u64().unwrap_or(0)),
        }
    }

    fn request(&mut self, req: Value) -> Value {
        let mut line = req.to_string();
        line.push('\n');
        self.to.write_all(line.as_bytes()).expect("write to runner");
        self.to.flush().expect("flush runner");
        let mut answer = String::new();
        self.from.read_line(&mut answer).expect("read runner");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("runner answered {answer:?}: {e}"))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Closing stdin ends the runner's loop; kill it if it lingers.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Execs one process, feeding `input`, bounded by `timeout`.
fn exec(argv: &[String], env: &[(String, String)], input: Vec<u8>, timeout: Duration) -> Out {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Out {
                code: None,
                stdout: String::new(),
                stderr: format!("spawn {}: {e}", argv[0]),
            }
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut w = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let errt = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel::<()>();
    // Watchdog: kills the process when the timeout passes.
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut out = Vec::new();
    let _ = so.read_to_end(&mut out);
    let st = child.wait();
    let _ = tx.send(());
    let _ = dog.join();
    let _ = writer.join();
    let err = errt.join().unwrap_or_default();
    Out {
        code: st.ok().and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

fn serve_one(req: &Value) -> Value {
    let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(60_000));
    if let Some(calls) = req["burst"].as_array() {
        return serve_burst(calls, timeout);
    }
    let steps = req["steps"].as_array().cloned().unwrap_or_default();
    run_steps(&steps, timeout, Instant::now())
}

/// One thread per call, all released by one barrier; each call is timed from the common
/// start, so its time includes waiting for whatever the others hold.
fn serve_burst(calls: &[Value], timeout: Duration) -> Value {
    let barrier = std::sync::Barrier::new(calls.len() + 1);
    let start = std::sync::OnceLock::new();
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = calls
            .iter()
            .map(|c| {
                let steps = c.as_array().cloned().unwrap_or_default();
                let barrier = &barrier;
                let start = &start;
                s.spawn(move || {
                    barrier.wait();
                    run_steps(&steps, timeout, *start.get_or_init(Instant::now))
                })
            })
            .collect();
        start.get_or_init(Instant::now);
        barrier.wait();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst call thread"))
            .collect()
    });
    let t0 = *start.get().expect("set before the barrier");
    json!({"calls": answers, "wall_ns": t0.elapsed().as_nanos() as u64})
}

fn run_steps(steps: &[Value], timeout: Duration, t0: Instant) -> Value {
    let mut prev: Option<Value> = None;
    let mut last = String::new();
    for (i, s) in steps.iter().enumerate() {
        let argv: Vec<String> = s["argv"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let env: Vec<(String, String)> = s["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv[0].as_str()?.into(), kv[1].as_str()?.into())))
            .collect();
        let mut input = s["stdin"].clone();
        if s["prev_from_last"].as_bool() == Some(true) {
            if let Some(p) = prev.take() {
                input["prevResult"] = p;
            }
        }
        let left = timeout.saturating_sub(t0.elapsed());
        let out = exec(&argv, &env, input.to_string().into_bytes(), left);
        if out.code != Some(0) {
            return json!({
                "ok": false,
                "ns": t0.elapsed().as_nanos() as u64,
                "stdout": out.stdout,
                "error": format!("step {i} ({}) exit {:?}: {} {}", argv[0], out.code, out.stdout.trim(), out.stderr.trim()),
            });
        }
        prev = serde_json::from_str(&out.stdout).ok();
        last = out.stdout;
    }
    json!({"ok": true, "ns": t0.elapsed().as_nanos() as u64, "stdout": last, "error": ""})
}

/// `bench runner`: serves requests until stdin closes.
pub fn serve() {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => serve_one(&req),
            Err(e) => {
                json!({"ok": false, "ns": 0, "stdout": "", "error": format!("bad request: {e}")})
            }
        };
        let mut s = answer.to_string();
        s.push('\n');
        if stdout.write_all(s.as_bytes()).is_err() || stdout.flush().is_err() {
            break;
        }
    }
}

/// Whether a path exists and is executable (for the peers' binaries).
pub fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
