//! User-facing text speaks to users: no internal wording (the project's working names such
//! as "seed" or "session", or "issue 6" for a piece of history) in the READMEs, the crate
//! manifests' descriptions, the examples, or the doc comments of the crates' sources.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this package lives in `examples/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files below `dir` whose name ends with one of `exts`, skipping build output.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// What is wrong with `line`, if anything.
fn internal_wording(line: &str) -> Option<&'static str> {
    let lower = line.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '#')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        match *w {
            "seed" | "seeds" => return Some("\"seed\""),
            "session" | "sessions" => return Some("\"session\""),
            "issue" | "issues" => {
                let next = words.get(i + 1).map_or("", |n| n.trim_start_matches('#'));
                if next.starts_with(|c: char| c.is_ascii_digit()) {
                    return Some("a reference to an issue number");
                }
            }
            _ => {}
        }
    }
    None
}

#[test]
fn no_internal_wording_in_user_facing_text() {
    let root = root();
    let mut whole = vec![
        root.join("README.md"),
        root.join("CONTRIBUTING.md"),
        root.join("core/README.md"),
    ];
    let mut sources = Vec::new();
    for dir in ["core/src", "adapters"] {
        files(&root.join(dir), &["README.md"], &mut whole);
        files(&root.join(dir), &[".rs"], &mut sources);
    }
    files(&root.join("examples"), &[".rs", ".md"], &mut whole);
    // Not this checker itself, which spells out what it looks for.
    whole.retain(|p| !p.ends_with("tests/user_facing_text.rs"));
    let mut manifests = Vec::new();
    for dir in ["core", "adapters", "examples"] {
        files(&root.join(dir), &["Cargo.toml"], &mut manifests);
    }

    let mut found = Vec::new();
    let mut check = |path: &Path, only: fn(&str) -> bool| {
        let text = fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if only(line) {
                if let Some(what) = internal_wording(line) {
                    found.push(format!(
                        "{}:{}: {what}: {}",
                        path.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    };
    for path in &whole {
        check(path, |_| true);
    }
    for path in &sources {
        // Doc comments (what rustdoc shows) and examples in them; examples/ is whole above.
        let is_examples = path.components().any(|c| c.as_os_str() == "examples");
        if is_examples {
            check(path, |_| true);
        } else {
            check(path, |l| {
                let l = l.trim_start();
                l.starts_with("///") || l.starts_with("//!")
            });
        }
    }
    for path in &manifests {
        check(path, |l| l.trim_start().starts_with("description"));
    }
    assert!(
        found.is_empty(),
        "internal wording in user-facing text:\n{}",
        found.join("\n")
    );
    assert!(
        whole.len() > 5 && sources.len() > 10,
        "the files were found"
    );
}

#[test]
fn the_check_catches_what_it_is_for() {
    assert!(internal_wording("The seed's scenario in Rust").is_some());
    assert!(internal_wording("Issue 6's firmware-style scenario").is_some());
    assert!(internal_wording("(seed detail 12)").is_some());
    assert!(internal_wording("see issue #15").is_some());
    assert!(internal_wording("notes from session 4").is_some());
    assert!(internal_wording("a known issue with the clock").is_none());
    assert!(internal_wording("the random seeding").is_none());
}
