//! The real `neo-sessions` binary as a child process: a database of its own, an empty data
//! directory and working directory, nothing of the developer's environment.

use std::{
    fmt,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;
use tempfile::TempDir;

use super::TestDatabase;

pub const BIN: &str = env!("CARGO_BIN_EXE_neo-sessions");

/// How the binary is run: a database of its own, an empty data directory and an empty working
/// directory (so no `config/default.toml` is picked up), JSON logs.
pub struct Cli {
    pub database_url: String,
    pub data_dir: TempDir,
    pub work_dir: TempDir,
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success:\n{self}");
        self
    }

    pub fn assert_failure(&self) -> &Self {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "expected a non-zero exit:\n{self}"
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure must say why on stderr:\n{self}"
        );
        self
    }

    /// The lines of stdout that hold an API key.
    pub fn key_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|line| line.contains("neo_sk_"))
            .collect()
    }
}

impl Cli {
    pub fn new(db: &TestDatabase) -> Self {
        Self {
            database_url: db.url.clone(),
            data_dir: tempfile::tempdir().expect("data dir"),
            work_dir: tempfile::tempdir().expect("work dir"),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[]).await
    }

    pub async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(BIN);
        // Nothing of the developer's environment may leak into the child's configuration.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("NEO_") || name == "DATABASE_URL" {
                command.env_remove(&*name);
            }
        }
        command
            .args(args)
            .current_dir(self.work_dir.path())
            .env("NEO_DATABASE_URL", &self.database_url)
            .env("NEO_DATA_DIR", self.data_dir.path())
            .env("NEO_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run neo-sessions");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Writes a fixture into the working directory and returns its path.
    pub fn write_fixture(&self, name: &str, fixture: &Value) -> PathBuf {
        let path = self.work_dir.path().join(name);
        std::fs::write(&path, fixture.to_string()).expect("write fixture");
        path
    }

    pub async fn seed_example(&self) -> Run {
        let run = self.run(&["seed", &example_fixture_path()]).await;
        run.assert_success();
        run
    }
}

pub fn example_fixture_path() -> String {
    format!("{}/config/seed.example.json", env!("CARGO_MANIFEST_DIR"))
}
