//! The files the documentation says live in the data directory are the files the service keeps
//! there: a start on the embedded database with nothing configured writes them, and any other
//! file name the docs give under the data directory is one the service reads (imports), said so
//! on the same line. Guards against documentation that sends an operator after a file the code
//! never writes (e.g. a signing key, which is sealed in the database).

use std::collections::BTreeSet;
use std::path::Path;

use neo_sessions::config::SigningAlgorithm;
use neo_sessions::tokens::SigningKey;

use crate::support::{Backend, TestApp};

/// Where the project tells people about files: the README, `docs/`, the shipped configuration,
/// the container files and the configuration's own doc comments.
fn documents() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("docker-compose.yml"),
        root.join("Dockerfile"),
    ];
    for dir in ["docs", "config", "src/config"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("read a documentation directory")
            .map(|entry| entry.expect("entry").path())
            .collect();
        entries.sort();
        files.extend(entries);
    }
    files
        .into_iter()
        .filter(|path| path.is_file())
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a documentation file");
            (path.display().to_string(), text)
        })
        .collect()
}

/// Every `(file, line, name)` where a document names a file inside the data directory, written
/// as `data/<name>`, `<NEO_DATA_DIR>/<name>`, `<data.dir>/<name>` or `/app/data/<name>`.
fn documented_names(documents: &[(String, String)]) -> Vec<(String, String, String)> {
    const PREFIXES: [&str; 4] = ["<NEO_DATA_DIR>/", "<data.dir>/", "/app/data/", "data/"];
    let mut found = Vec::new();
    for (file, text) in documents {
        for line in text.lines() {
            for prefix in PREFIXES {
                for (at, _) in line.match_indices(prefix) {
                    // `data/` inside a longer word (`pgdata/`, `/var/lib/postgresql/data/`) or the
                    // tail of a prefix already counted is no data-directory path.
                    let before = line[..at].chars().next_back();
                    if prefix == "data/"
                        && before.is_some_and(|c| c.is_alphanumeric() || c == '/' || c == '_')
                    {
                        continue;
                    }
                    let name: String = line[at + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || "._<>-".contains(*c))
                        .collect();
                    if !name.is_empty() && name.contains(|c: char| c.is_alphanumeric()) {
                        found.push((file.clone(), line.to_owned(), name));
                    }
                }
            }
        }
    }
    found
}

/// The file names a first start on the embedded database, with nothing configured, leaves in the
/// data directory (without SQLite's `-wal`/`-shm` companions).
async fn written_on_first_start() -> BTreeSet<String> {
    let app = TestApp::builder(Backend::Sqlite)
        .config(|c| {
            c.database.url = None;
            c.signing.key_encryption_key = None;
            c.signing.key_encryption_key_file = None;
        })
        .spawn()
        .await;
    // A signed token proves the key was made (and sealed) before the directory is read.
    let jwks = app.get_json("/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    std::fs::read_dir(&app.config.data.dir)
        .expect("the data directory exists after a start")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .map(|name| {
            name.trim_end_matches("-wal")
                .trim_end_matches("-shm")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_data_directory_holds_what_the_docs_say() {
    let written = written_on_first_start().await;
    assert!(
        written.contains("neo-sessions.db") && written.contains("key-encryption-key"),
        "a first start keeps the embedded database and the generated KEK in the data directory: {written:?}"
    );
    assert!(
        !written.iter().any(|name| name.contains("signing-key")),
        "no signing key is written to the data directory (they are sealed in the database): {written:?}"
    );

    // Read, never written: the key an earlier version generated there (imported on first start).
    let imported: BTreeSet<String> = [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ]
    .into_iter()
    .map(|algorithm| {
        SigningKey::legacy_generated_path(Path::new(""), algorithm)
            .display()
            .to_string()
    })
    .collect();

    let documents = documents();
    let named = documented_names(&documents);
    assert!(
        named.iter().any(|(_, _, name)| name == "key-encryption-key"),
        "the docs name the generated KEK's file: {named:?}"
    );
    for (file, line, name) in named {
        if written.contains(&name) {
            continue;
        }
        let read_only = imported.contains(&name)
            || (name.contains("<alg>")
                && imported
                    .iter()
                    .any(|path| path.starts_with(name.split("<alg>").next().unwrap_or(&name))));
        assert!(
            read_only && line.contains("import"),
            "{file} names `{name}` in the data directory, which the service never writes \
             (it writes {written:?}; it only imports {imported:?}, said so on the line):\n{line}"
        );
    }
}
