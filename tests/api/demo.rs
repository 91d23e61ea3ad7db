//! `serve --demo` on the embedded database, as a new user runs it: the printed curl commands
//! work as printed, and a second start is as good as the first.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// Starts `serve --demo` in `dir`, returns the child and the banner's command lines.
fn start_demo(dir: &std::path::Path) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neo-sessions"))
        .args(["serve", "--demo"])
        .current_dir(dir)
        .env_remove("NEO_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("NEO_DATA_DIR")
        .env_remove("NEO_API_KEY_ENV")
        .env("NEO_LISTEN", "127.0.0.1:0")
        .env("NEO_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve --demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut commands = Vec::new();
    while commands.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the demo banner");
        if line.trim_start().starts_with("curl ") {
            commands.push(line.trim().to_owned());
        }
    }
    (child, commands)
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn shell(command: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("sh");
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn the_printed_demo_commands_mint_and_decode_a_token_on_every_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for start in 0..2 {
        let (child, commands) = start_demo(dir.path());
        let minted: Value =
            serde_json::from_str(&shell(&commands[0])).expect("mint answer is JSON");
        assert!(
            minted["data"]["token"]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3),
            "start {start}: {minted}"
        );
        assert_eq!(minted["data"]["session_id"], "s-acme-1");
        // The discovery document points at the demo itself, not at the production issuer.
        let base = commands[0]
            .split_whitespace()
            .find_map(|word| word.strip_suffix("/public-api/sessions"))
            .expect("the demo's address in the mint command")
            .to_owned();
        let discovery: Value = serde_json::from_str(&shell(&format!(
            "curl -s {base}/.well-known/openid-configuration"
        )))
        .expect("discovery is JSON");
        assert_eq!(
            discovery["jwks_uri"],
            format!("{base}/.well-known/jwks.json"),
            "{discovery}"
        );
        assert_eq!(
            discovery["introspection_endpoint"],
            format!("{base}/oauth2/introspect")
        );

        let decoded = shell(&commands[1]);
        assert!(
            decoded.contains("\"typ\": \"neo-session+jwt\""),
            "{decoded}"
        );
        assert!(
            decoded.contains("\"session_id\": \"s-acme-1\""),
            "{decoded}"
        );
        stop(child);
    }
    // The embedded database and the key-encryption key (which seals the signing keys stored in
    // the database) live in ./data, the key private to its owner.
    let data = dir.path().join("data");
    assert!(data.join("neo-sessions.db").is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("key-encryption-key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn demo_refuses_to_run_outside_the_test_key_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_neo-sessions"))
        .args(["serve", "--demo"])
        .current_dir(dir.path())
        .env("NEO_API_KEY_ENV", "live")
        .env("NEO_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!output.status.success());
    // serve's fatal error is its last log line (stdout), said once.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("NEO_API_KEY_ENV=test"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).trim().is_empty());
}
