//! A PostgreSQL cluster of a test's own, which the test may kill and restart.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use super::{Backend, TestDatabase};

/// A PostgreSQL cluster of the test's own, on a free port, that the test may kill and restart.
/// PostgreSQL refuses to run as root, so it runs as the `postgres` user.
pub struct OwnPostgres {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

pub fn postgres_bin(name: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(base)
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (the machine's packages)")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.last().expect("a PostgreSQL version");
    base.join(version.to_string()).join("bin").join(name)
}

pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists")
    };
    (id("-u"), id("-g"))
}

impl OwnPostgres {
    pub async fn start() -> Self {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        let data = dir.path().join("data");
        let status = Command::new(postgres_bin("initdb"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ])
            .arg("--no-sync")
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut own = Self {
            dir,
            port,
            child: None,
        };
        own.restart().await;
        own
    }

    pub async fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_ids();
        let data = self.dir.path().join("data");
        let child = Command::new(postgres_bin("postgres"))
            .args(["-D", &data.to_string_lossy()])
            .args(["-p", &self.port.to_string()])
            .args(["-k", &self.dir.path().to_string_lossy()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        for _ in 0..400 {
            if sqlx::PgPool::connect(&self.url("postgres")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the test's PostgreSQL did not start on port {}", self.port);
    }

    /// An immediate shutdown (SIGQUIT): every connection is cut, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// A new database `name` on this server, migrated and seeded with the example fixture.
    pub async fn seeded_database(&self, name: &str) -> TestDatabase {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(
                &sqlx::PgPool::connect(&self.url("postgres"))
                    .await
                    .expect("admin"),
            )
            .await
            .expect("create database");
        TestDatabase::seeded_at(Backend::Postgres, name, self.url(name)).await
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.kill();
    }
}
