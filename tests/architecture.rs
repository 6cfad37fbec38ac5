//! The layering of `src/` that ARCHITECTURE.md draws, checked from the code's own paths.
//!
//! Every `crate::` path outside test modules is resolved to the module that defines what it
//! names, through the crate root's re-exports too (`use crate::{Aid, AsyncStore}` names
//! `aid.rs` and `store/`), and held against the table below: a module may use only the
//! layers listed for it. The synchronous layers must not mention the async runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each layer, and the layers its code may use besides itself (ARCHITECTURE.md, "The layers").
const MAY_USE: &[(&str, &[&str])] = &[
    ("lib", &["*"]),
    // The test kit (`test-util`) is built on the public API, like a user's tests.
    ("testing", &["*"]),
    (
        "store",
        &[
            "cursor", "watch", "shell", "lock", "exec", "disk", "process", "types",
        ],
    ),
    (
        "cursor",
        &["shell", "lock", "exec", "disk", "process", "types"],
    ),
    // The public `Change` and `Watch`: a stream over the shell's inotify bookkeeping.
    (
        "watch",
        &["shell", "lock", "exec", "disk", "process", "types"],
    ),
    // Exception: an exit wait on the test kit's fake `/proc` (`test-util` only) wakes on the
    // kit's changes instead of polling.
    (
        "shell",
        &["lock", "exec", "disk", "process", "types", "testing"],
    ),
    ("lock", &["exec", "disk", "process", "types"]),
    // A step's name buffer is the core's directory read size (`disk/scan.rs`).
    ("exec", &["disk", "process", "types"]),
    ("disk", &["process", "types"]),
    ("process", &["types"]),
    // The value types: `State` holds a `ProcessIdentity`.
    ("types", &["process"]),
];

/// The layer of a top-level module, by its name under `src/`.
fn layer_of_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "lib" => "lib",
        "store" => "store",
        "cursor" => "cursor",
        "shell" => "shell",
        "lock" => "lock",
        "exec" => "exec",
        "disk" => "disk",
        "process" => "process",
        "watch" => "watch",
        "testing" => "testing",
        "aid" | "instance_id" | "state" | "error" | "options" | "change" => "types",
        _ => return None,
    })
}

/// Layers whose code is synchronous: no runtime, no futures, no `.await`.
const SYNCHRONOUS: &[&str] = &["disk", "process", "types"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("src/ lists").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `lock` for `src/lock/hold.rs`, `aid` for
/// `src/aid.rs`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("a file under src/");
    let first = rel.components().next().expect("a path").as_os_str();
    let first = first.to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comments, string and char literals, and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            i += j + 1;
        } else if rest.starts_with("'\\")
            || rest.chars().nth(2) == Some('\'') && rest.starts_with('\'')
        {
            // A char literal ('x', '\n', '\''); a lifetime ('a) has no closing quote.
            i += rest[1..].find('\'').map_or(1, |e| e + 2);
            if rest.starts_with("'\\'") {
                i += 1;
            }
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    strip_test_items(&out)
}

/// Removes each item under `#[cfg(test)]` (a test module, a test-only function).
fn strip_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` before any brace, or at its matching brace.
        let (mut depth, mut end) = (0usize, item.len());
        for (k, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every path that `code` names after `crate::`, expanded from `use` groups.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `$crate::` and `some_crate::` are not this crate's paths.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let (found, used) = parse_tree(rest, Vec::new());
        paths.extend(found);
        rest = &rest[used..];
    }
    paths
}

/// Parses `a::b::{c, d::e}` at the start of `text`, after `prefix`; returns the paths and
/// how many bytes it read.
fn parse_tree(text: &str, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    let mut i = skip_space(text, 0);
    loop {
        if text[i..].starts_with('{') {
            let mut all = Vec::new();
            i += 1;
            loop {
                i = skip_space(text, i);
                if text[i..].starts_with('}') {
                    return (all, i + 1);
                }
                let (found, used) = parse_tree(&text[i..], path.clone());
                all.extend(found);
                i = skip_space(text, i + used);
                if text[i..].starts_with(',') {
                    i += 1;
                }
                if i >= text.len() {
                    return (all, i);
                }
            }
        }
        let ident: String = text[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            return (vec![path], i);
        }
        i += ident.len();
        if ident != "self" {
            path.push(ident);
        }
        let j = skip_space(text, i);
        if text[j..].starts_with("::") {
            i = skip_space(text, j + 2);
        } else {
            return (vec![path], i);
        }
    }
}

fn skip_space(text: &str, mut i: usize) -> usize {
    while text[i..].starts_with(char::is_whitespace) {
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    i
}

/// The crate root's re-exports: the name a user sees, and the top-level module behind it.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(at) = stmt.find("pub use ") else {
            continue;
        };
        let tree = &stmt[at + "pub use ".len()..];
        for path in parse_tree(tree, Vec::new()).0 {
            let (Some(first), Some(last)) = (path.first(), path.last()) else {
                continue;
            };
            if path.len() > 1 && layer_of_module(first).is_some() {
                names.insert(last.clone(), first.clone());
            }
        }
    }
    names
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let lib = code_of(&fs::read_to_string(src().join("lib.rs")).expect("lib.rs reads"));
    let reexported = reexports(&lib);
    let may_use: BTreeMap<&str, BTreeSet<&str>> = MAY_USE
        .iter()
        .map(|(layer, uses)| (*layer, uses.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(file);
        let shown = file
            .strip_prefix(src())
            .expect("under src/")
            .display()
            .to_string();
        let Some(layer) = layer_of_module(&module) else {
            wrong.push(format!(
                "src/{shown}: module `{module}` has no layer in MAY_USE"
            ));
            continue;
        };
        let code = code_of(&fs::read_to_string(file).expect("source reads"));
        for path in crate_paths(&code) {
            let Some(first) = path.first() else { continue };
            let target = match layer_of_module(first) {
                Some(_) => first.clone(),
                None => match reexported.get(first) {
                    Some(module) => module.clone(),
                    // Macros and other root items (`crate::Result`) belong to the root.
                    None => continue,
                },
            };
            let Some(used) = layer_of_module(&target) else {
                continue;
            };
            let allowed =
                used == layer || may_use[layer].contains("*") || may_use[layer].contains(used);
            if !allowed {
                wrong.push(format!(
                    "src/{shown}: layer `{layer}` uses `crate::{}` (layer `{used}`)",
                    path.join("::")
                ));
            }
        }
        if SYNCHRONOUS.contains(&layer) {
            for word in ["tokio", "futures::", ".await", "async fn"] {
                if code.contains(word) {
                    wrong.push(format!(
                        "src/{shown}: synchronous layer `{layer}` mentions `{word}`"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_through_groups_and_reexports() {
    let code = code_of(
        "use crate::{Aid, lock::{hold::Hold, self}}; // crate::shell::x\n\
         let s = \"crate::store\"; let t = crate::exec::run(x);\n\
         #[cfg(test)]\nmod tests { use crate::store::AsyncStore; }",
    );
    let paths = crate_paths(&code);
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(joined, ["Aid", "lock::hold::Hold", "lock", "exec::run"]);
    let lib = "pub use store::AsyncStore; pub use process::{Liveness, ProcessIdentity};";
    let names = reexports(lib);
    assert_eq!(names.get("AsyncStore").map(String::as_str), Some("store"));
    assert_eq!(names.get("Liveness").map(String::as_str), Some("process"));
}
