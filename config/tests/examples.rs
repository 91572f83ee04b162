//! Golden configs (STYLE.md point 10): every file in `config/examples/` must
//! parse, and every file in `config/examples/invalid/` must fail at the
//! expected path.

use std::fs;
use std::path::{Path, PathBuf};

use cutover_config::{parse_document, Document};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Files (not folders) directly in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn parse(path: &Path) -> Result<Document, cutover_config::ConfigErrors> {
    let text = fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
    parse_document(&name, &text)
}

#[test]
fn every_golden_example_parses() {
    let files = files_in(&examples_dir());
    assert!(
        files.len() >= 6,
        "expected the golden examples, found {files:?}"
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let document = parse(&path).unwrap_or_else(|errors| panic!("{name}:\n{errors}"));
        match (name.as_str(), document) {
            ("route-spec.json", Document::RouteSpec(_))
            | ("weights.json", Document::Weights(_)) => {}
            (name, Document::Config(_)) if name.ends_with(".toml") => {}
            (name, other) => panic!("{name} parsed as an unexpected document: {other:?}"),
        }
    }
}

#[test]
fn golden_toml_files_say_what_they_show() {
    for path in files_in(&examples_dir()) {
        if path.extension().is_some_and(|ext| ext == "toml") {
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# "),
                "{} lacks a leading comment",
                path.display()
            );
        }
    }
}

/// Each invalid example and the path of the (first) error it must produce.
const INVALID: &[(&str, &str)] = &[
    ("admin-public-without-token.toml", "admin.listen"),
    ("bad-duration.toml", "routes[0].shadow.timeout"),
    ("duplicate-route.toml", "routes"),
    ("empty-endpoints.json", "legacy.endpoints"),
    ("empty-endpoints.toml", "routes[0].legacy.endpoints"),
    ("etcd-tls-half.toml", "etcd.key_file"),
    ("grpc-methods-star.toml", "routes[0].shadow.grpc_methods[0]"),
    ("h2-without-tls.json", "legacy.protocol"),
    ("unknown-field.json", "legacy"),
    ("unknown-key.toml", "routes[0].legacy"),
    ("weights-negative.json", "legacy"),
    ("weights-sum-zero.toml", "routes[0].weights"),
];

#[test]
fn every_invalid_example_fails_at_the_expected_path() {
    let files = files_in(&examples_dir().join("invalid"));
    let names: Vec<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<&str> = INVALID.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names, listed,
        "list every file of examples/invalid/ in INVALID"
    );
    for (path, (name, expected)) in files.iter().zip(INVALID) {
        let errors = match parse(path) {
            Ok(document) => panic!("{name} should be invalid, parsed {document:?}"),
            Err(errors) => errors,
        };
        assert_eq!(errors.0[0].path, *expected, "{name}:\n{errors}");
    }
}
