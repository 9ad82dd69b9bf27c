//! The command line as documented: user management, the global --data-dir, and clear
//! one-line startup errors.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHBOARD_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn user_management_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, _) = run(&[
        "--data-dir",
        d,
        "user",
        "add",
        "sip:Alice@Example.com",
        "--password",
        "pw1",
        "--display-name",
        "Alice A.",
    ]);
    assert!(ok);
    assert!(out.contains("sip:alice@example.com"));
    // --data-dir after the subcommand works too; the password from stdin.
    let mut child = Command::new(BIN)
        .args([
            "user",
            "add",
            "bob@example.com",
            "--password-stdin",
            "--data-dir",
            d,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"pw-bob\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (ok, out, _) = run(&["user", "list", "--json", "--data-dir", d]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["address"], "alice@example.com");
    assert_eq!(list[0]["display_name"], "Alice A.");
    assert!(
        !out.contains("ha1") && !out.contains("pw1"),
        "no secrets in listings"
    );
    assert!(run(&["--data-dir", d, "user", "disable", "alice@example.com"]).0);
    let (_, out, _) = run(&["--data-dir", d, "user", "list"]);
    assert!(out
        .lines()
        .any(|l| l.contains("alice@example.com") && l.contains("disabled")));
    assert!(run(&["--data-dir", d, "user", "enable", "alice@example.com"]).0);
    assert!(
        run(&[
            "--data-dir",
            d,
            "user",
            "passwd",
            "alice@example.com",
            "--password",
            "pw2"
        ])
        .0
    );
    assert!(run(&["--data-dir", d, "user", "remove", "bob@example.com"]).0);
    let (ok, _, err) = run(&["--data-dir", d, "user", "remove", "bob@example.com"]);
    assert!(!ok);
    assert!(err.contains("no such user"), "{err}");
    let (ok, _, err) = run(&[
        "--data-dir",
        d,
        "user",
        "add",
        "alice@example.com",
        "--password",
        "x",
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = run(&[
        "--data-dir",
        d,
        "user",
        "add",
        "not an address",
        "--password",
        "x",
    ]);
    assert!(!ok && err.contains("not a user address"), "{err}");
    let (ok, _, err) = run(&["--data-dir", d, "user", "add", "carol@example.com"]);
    assert!(!ok && err.contains("--password"), "{err}");
    // Bulk import.
    let csv = dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "# address,password,display name\ncarol@example.com,pw-c,Carol\ndave@example.com,pw-d\n",
    )
    .unwrap();
    let (ok, out, _) = run(&["--data-dir", d, "user", "import", csv.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2"), "{out}");
    // The database holds hashes only.
    let db = std::fs::read(dir.path().join("switchboard.db")).unwrap();
    let wal = std::fs::read(dir.path().join("switchboard.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(4).any(|w| w == b"pw-c"));
    }
}

fn serve(d: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--data-dir", d, "serve", "--http", "off"];
    args.extend_from_slice(extra);
    let out = Command::new(BIN).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        assert!(err.starts_with("switchboard: error: "), "{err}");
    }
    (out.status.success(), err)
}

#[test]
fn startup_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (ok, err) = serve(
        d,
        &["--sip-udp", "off", "--sip-tls", "off", "--sip-tcp", &addr],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot listen for SIP over TCP") && err.contains("--sip-tcp"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Bad certificate file.
    let cfg = dir.path().join("bad-cert.toml");
    std::fs::write(
        &cfg,
        "[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    let (ok, err) = serve(
        d,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--sip-udp",
            "off",
            "--sip-tcp",
            "off",
            "--sip-tls",
            "127.0.0.1:0",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("cannot read TLS certificate /nonexistent/cert.pem"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Unusable data directory (a file where the directory should be).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (ok, err) = serve(
        file.to_str().unwrap(),
        &[
            "--sip-udp",
            "127.0.0.1:0",
            "--sip-tcp",
            "off",
            "--sip-tls",
            "off",
        ],
    );
    assert!(!ok);
    assert!(err.contains("cannot open the data directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Config errors quote the offending line of the file.
    // Unknown config keys are refused, not ignored.
    std::fs::write(&cfg, "[sip]\nudpp = \"127.0.0.1:5060\"\n").unwrap();
    let (ok, err) = serve(d, &["--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field"), "{err}");
    // Every transport off.
    let (ok, err) = serve(
        d,
        &["--sip-udp", "off", "--sip-tcp", "off", "--sip-tls", "off"],
    );
    assert!(!ok && err.contains("every SIP transport is off"), "{err}");
}

#[test]
fn serve_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--data-dir",
            d,
            "--log-format",
            "json",
            "serve",
            "--sip-udp",
            "127.0.0.1:0",
            "--sip-tcp",
            "127.0.0.1:0",
            "--sip-tls",
            "127.0.0.1:0",
            "--http",
            "off",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        use std::io::Read;
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.path().join("tls/ca.pem").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {log}");
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON logs: {log}"
    );
    assert!(log.contains("shutting down"));
    // The generated certificate exists and its key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tls/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key readable by owner only");
}
