//! The configuration table of `docs/operating.md`, rendered from the shipped `config/default.toml`
//! (keys, defaults, the comment above each key) and the variable names: a test fails when the
//! committed table differs; `NEO_UPDATE_DOCS=1 cargo test --lib config::docs` rewrites it.

use std::path::Path;

use super::env::{self, EMBEDDED_DEFAULTS};

const BEGIN: &str = "<!-- config table: generated from config/default.toml (NEO_UPDATE_DOCS=1 cargo test --lib config::docs) -->\n";
const END: &str = "<!-- config table: end -->\n";

/// One row per key of `file`: its variables, the key, its default and the comment above it.
fn render(file: &str) -> String {
    let lines: Vec<&str> = file.lines().collect();
    let keys: Vec<(usize, String)> = env::keys(file).collect();
    let variables = env::variables();
    let mut table =
        String::from("| variable | config key | default | meaning |\n|---|---|---|---|\n");
    for (index, key) in &keys {
        let names: Vec<String> = variables
            .iter()
            .filter(|(_, k)| k == key)
            .map(|(name, _)| format!("`{name}`"))
            .rev()
            .collect();
        let line = lines[*index].trim();
        let default = match line.split_once(" = ") {
            Some((_, value)) if !line.starts_with('#') => {
                let value = value.trim().trim_matches('"');
                if value.is_empty() {
                    "—".to_owned()
                } else {
                    format!("`{value}`")
                }
            }
            _ => "—".to_owned(),
        };
        // The comment lines directly above the key line (up to a blank line, a section or a key).
        let mut about: Vec<&str> = lines[..*index]
            .iter()
            .enumerate()
            .rev()
            .take_while(|(i, l)| l.starts_with('#') && !keys.iter().any(|(k, _)| k == i))
            .map(|(_, l)| l.trim_start_matches('#').trim())
            .collect();
        about.reverse();
        assert!(
            !about.is_empty(),
            "{key} has no comment in config/default.toml"
        );
        table.push_str(&format!(
            "| {} | `{key}` | {default} | {} |\n",
            names.join(" or "),
            about.join(" ")
        ));
    }
    table
}

#[test]
fn the_operating_guide_lists_every_key_as_the_shipped_file_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operating.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, rest) = text.split_once(BEGIN).expect("the begin marker");
    let (table, after) = rest.split_once(END).expect("the end marker");
    let rendered = render(EMBEDDED_DEFAULTS);
    if std::env::var_os("NEO_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{before}{BEGIN}{rendered}{END}{after}")).unwrap();
        return;
    }
    assert!(
        table == rendered,
        "the configuration table in docs/operating.md is stale: run `NEO_UPDATE_DOCS=1 cargo test --lib config::docs` and commit it"
    );
    // Every key and every variable name is in it.
    for (name, key) in env::variables() {
        assert!(table.contains(&format!("`{name}`")) && table.contains(&format!("`{key}`")));
    }
}
