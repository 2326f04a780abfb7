//! The layering of `src/`, checked: no two source files import each other, directly or through others (issue 10).
//!
//! A file's imports are the `crate::`, `super::` and `self::` paths in its non-test code, each resolved to the
//! deepest module that is a file. A module root's `pub use` re-exports and `mod` declarations are not imports: a
//! folder's `mod.rs` naming its children is how Rust spells a folder, not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

type Module = Vec<String>;

/// Every source file of the library, by module path (`crate::registry::names` → `src/registry/names.rs`).
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src/");
            if path.extension().is_none_or(|ext| ext != "rs") || rel == Path::new("main.rs") {
                continue;
            }
            let mut module: Module = vec!["crate".into()];
            module.extend(
                rel.with_extension("")
                    .iter()
                    .map(|s| s.to_string_lossy().into_owned()),
            );
            if module
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The file's code without its test module and comments.
fn non_test_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source is readable");
    let tests =
        Regex::new(r"(?m)^#\[cfg\(test\)\]\s*(pub(\([a-z]+\))? )?mod \w+ \{").expect("valid");
    let code = match tests.find(&text) {
        Some(found) => &text[..found.start()],
        None => &text,
    };
    Regex::new(r"//[^\n]*")
        .expect("valid")
        .replace_all(code, "")
        .into_owned()
}

/// The paths a file names: `use` trees (one level of braces expanded) and inline `crate::…`/`super::…` paths.
fn named_paths(code: &str, module_root: bool) -> Vec<String> {
    let pattern = Regex::new(
        r"\b(?P<public>pub(\([a-z]+\))?\s+)?use\s+(?P<tree>[^;]+);|\b(?P<inline>(crate|super|self)(::[A-Za-z_][A-Za-z0-9_]*)+)",
    )
    .expect("valid");
    let tight = Regex::new(r"\s*([{},:])\s*").expect("valid");
    let braces = Regex::new(r"^(?P<prefix>[^{]*?)(::)?\{(?P<items>.*)\}$").expect("valid");
    let mut paths = Vec::new();
    for found in pattern.captures_iter(code) {
        if let Some(inline) = found.name("inline") {
            paths.push(inline.as_str().to_owned());
            continue;
        }
        if found.name("public").is_some() && module_root {
            continue;
        }
        let tree = tight.replace_all(found["tree"].trim(), "$1");
        match braces.captures(&tree) {
            Some(group) => {
                let mut depth = 0;
                let mut item = String::new();
                let mut items = Vec::new();
                for c in group["items"].chars() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ if depth == 0 => item.push(c),
                        _ => {}
                    }
                }
                items.push(item);
                for item in items {
                    let item = item
                        .split(" as ")
                        .next()
                        .unwrap_or("")
                        .trim_end_matches(':');
                    paths.push(format!("{}::{item}", &group["prefix"]));
                }
            }
            None => paths.push(tree.split(" as ").next().unwrap_or("").to_owned()),
        }
    }
    paths
}

/// The file a path leads to, if it is another file of the crate.
fn resolve(path: &str, from: &Module, modules: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let segments: Vec<&str> = path
        .split("::")
        .filter(|s| !s.is_empty() && *s != "*")
        .collect();
    let mut full: Module = match segments.first() {
        Some(&"crate") => Vec::new(),
        Some(&"super") | Some(&"self") => from.clone(),
        _ => return None,
    };
    for segment in &segments {
        match *segment {
            "super" => {
                full.pop();
            }
            "self" => {}
            other => full.push(other.to_owned()),
        }
    }
    (1..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|prefix| modules.contains_key(prefix))
        .filter(|target| target != from)
}

/// The import graph's circles (strongly connected components of more than one file), each with its edges.
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<BTreeSet<Module>> {
    let nodes: Vec<&Module> = edges.keys().collect();
    let reaches = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(next) = todo.pop() {
            for target in edges.get(&next).into_iter().flatten() {
                if seen.insert(target.clone()) {
                    todo.push(target.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&Module, BTreeSet<Module>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut found: Vec<BTreeSet<Module>> = Vec::new();
    for node in &nodes {
        let circle: BTreeSet<Module> = reach[node]
            .iter()
            .filter(|other| reach.get(other).is_some_and(|back| back.contains(*node)))
            .cloned()
            .collect();
        if circle.len() > 1 && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.len() > 10, "found the source files: {modules:?}");
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &modules {
        let module_root = path.ends_with("mod.rs") || path.ends_with("lib.rs");
        let targets = named_paths(&non_test_code(path), module_root)
            .iter()
            .filter_map(|p| resolve(p, module, &modules))
            .collect();
        edges.insert(module.clone(), targets);
    }
    let report: Vec<String> = circles(&edges)
        .iter()
        .map(|circle| {
            let files: Vec<String> = circle
                .iter()
                .map(|m| {
                    modules[m]
                        .strip_prefix(&src)
                        .unwrap_or(&modules[m])
                        .display()
                        .to_string()
                })
                .collect();
            let inside: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|to| circle.contains(*to))
                        .map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
                })
                .collect();
            format!("{} ({})", files.join(", "), inside.join("; "))
        })
        .collect();
    assert!(
        report.is_empty(),
        "import circles among src/ files:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_through_a_brace_group_and_super() {
    let modules: BTreeMap<Module, PathBuf> = [
        (vec!["crate".to_owned()], PathBuf::from("lib.rs")),
        (vec!["crate".into(), "a".into()], PathBuf::from("a/mod.rs")),
        (
            vec!["crate".into(), "a".into(), "b".into()],
            PathBuf::from("a/b.rs"),
        ),
        (vec!["crate".into(), "c".into()], PathBuf::from("c.rs")),
    ]
    .into_iter()
    .collect();
    let b: Module = vec!["crate".into(), "a".into(), "b".into()];
    let c: Module = vec!["crate".into(), "c".into()];
    let from_b = named_paths("use std::fmt;\nuse crate::{c::Thing, a::b as _};\n", false);
    let from_c = named_paths("fn f() { super::a::b::run() }\n", false);
    let edges: BTreeMap<Module, BTreeSet<Module>> = [
        (
            b.clone(),
            from_b
                .iter()
                .filter_map(|p| resolve(p, &b, &modules))
                .collect(),
        ),
        (
            c.clone(),
            from_c
                .iter()
                .filter_map(|p| resolve(p, &c, &modules))
                .collect(),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(edges[&b], BTreeSet::from([c.clone()]));
    assert_eq!(edges[&c], BTreeSet::from([b.clone()]));
    assert_eq!(circles(&edges), vec![BTreeSet::from([b, c])]);
    // A module root's re-exports are not imports.
    assert!(named_paths("pub use service::Registry;\n", true).is_empty());
}
