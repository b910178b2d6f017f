//! The command-line surface of netd and netctl held to golden files: `--help` texts, error
//! messages and exit codes that need no running daemon. A change to the CLI shows up here as
//! a diff to review; regenerate the files with `NETD_UPDATE_GOLDEN=1 cargo test --test
//! cli_golden` and commit them with the change. (Table and JSON output against a running
//! netd: tests/netns/tests/service.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");
const NETD: &str = env!("CARGO_BIN_EXE_netd");

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Runs a binary with an environment that cannot change its output.
fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("NETD_SOCKET")
        .env_remove("NETD_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env("COLUMNS", "100")
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

/// Compares `actual` with `tests/golden/NAME`, or rewrites the file under NETD_UPDATE_GOLDEN.
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("NETD_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with NETD_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if want != actual {
        panic!(
            "{name} differs from {}\n--- want ---\n{want}\n--- have ---\n{actual}\n(if the change is intended: NETD_UPDATE_GOLDEN=1 cargo test --test cli_golden)",
            path.display()
        );
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_texts() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("netctl.help", NETCTL, &["--help"]),
        ("netctl-network.help", NETCTL, &["network", "--help"]),
        (
            "netctl-network-create.help",
            NETCTL,
            &["network", "create", "--help"],
        ),
        (
            "netctl-network-ls.help",
            NETCTL,
            &["network", "ls", "--help"],
        ),
        (
            "netctl-network-prune.help",
            NETCTL,
            &["network", "prune", "--help"],
        ),
        (
            "netctl-endpoint-ls.help",
            NETCTL,
            &["endpoint", "ls", "--help"],
        ),
        ("netctl-status.help", NETCTL, &["status", "--help"]),
        ("netctl-doctor.help", NETCTL, &["doctor", "--help"]),
        ("netd.help", NETD, &["--help"]),
    ];
    for (name, bin, args) in cases {
        let o = run(bin, args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        golden(name, &stdout(&o));
    }
}

#[test]
fn unreachable_netd_exits_3_and_says_what_to_do() {
    let o = run(
        NETCTL,
        &["--socket", "/nonexistent/netd.sock", "network", "ls"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    golden("netctl-unreachable.stderr", &stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["network", "create"][..],
        &["network", "frobnicate"],
        &["--format", "yaml", "network", "ls"],
        &["network", "create", "x", "--subnet", "10.0.0.0/33"],
        &["network", "create", "x", "--cni-version", "1.2.0"],
        &["completion", "tcsh"],
    ] {
        let o = run(NETCTL, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn cni_version_comes_from_the_file_unless_a_flag_says_otherwise() {
    let p = temp("cniver.toml", "cni_version = \"1.1.0\"\n");
    let o = run(NETD, &["--config", p.to_str().unwrap(), "--check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("cni_version: \"1.1.0\""),
        "{}",
        stdout(&o)
    );
    let o = run(
        NETD,
        &[
            "--config",
            p.to_str().unwrap(),
            "--check-config",
            "--cni-version",
            "0.4.0",
        ],
    );
    assert!(
        stdout(&o).contains("cni_version: \"0.4.0\""),
        "{}",
        stdout(&o)
    );
    let o = run(NETD, &["--check-config", "--cni-version", "2.0.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("\"2.0.0\" is not one netd-cni answers"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_and_man_pages_come_from_the_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _netctl"),
        ("zsh", "#compdef netctl"),
        ("fish", "complete -c netctl"),
    ] {
        let o = run(NETCTL, &["completion", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let s = stdout(&o);
        assert!(s.contains(marker), "{shell} completion lacks {marker:?}");
        assert!(s.contains("prune") && s.contains("doctor"), "{shell}");
    }
    let o = run(NETCTL, &["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH netctl 1"), "{page}");
    assert!(
        page.contains("Exit codes"),
        "the exit codes belong in the man page"
    );
    let o = run(NETD, &["--man"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains(".TH netd 8"));
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netd-cli-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn netd_config_errors_name_the_key_and_line() {
    let p = temp(
        "typo.toml",
        "log = \"info\"\n\n[pools]\nipv4 = \"10.1.0.0/16\"\nsize = 24\n",
    );
    let o = run(NETD, &["--config", p.to_str().unwrap(), "--check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{}, line 5: unknown key `size`", p.display())),
        "{e}"
    );

    let o = run(
        NETD,
        &["--config", "/nonexistent/netd.toml", "--check-config"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/netd.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn netd_flags_override_the_config_file() {
    let p = temp(
        "ok.toml",
        "table = \"fromfile\"\nsocket_group = \"0\"\n[pools]\nipv4 = \"10.50.0.0/16\"\nipv4_subnet_size = 26\n",
    );
    let o = run(
        NETD,
        &[
            "--config",
            p.to_str().unwrap(),
            "--check-config",
            "--table",
            "fromflag",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in [
        "table: \"fromflag\"",
        "pool4: 10.50.0.0/16",
        "pool4_prefix: 26",
        "socket_group: Some(\n        \"0\"",
        "socket: \"/run/netd/netd.sock\"",
    ] {
        assert!(s.contains(want), "{want:?} not in:\n{s}");
    }
}
