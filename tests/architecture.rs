//! The layering of `src/`, checked: no source file imports one that imports it back, directly or through others
//! (issue 10).
//!
//! **What a file imports.** Its code is read without comments (`//`, `/* */`), string and char literals
//! (raw strings included) and `#[cfg(test)]` items (each one, found by bracket matching; a file declared by
//! `#[cfg(test)] mod x;` is test code as a whole). Its imports are the leaves of its `use` trees (nested braces
//! expanded) and the `a::b` paths of the rest of its code that start with `crate`, `self`, `super`, one of its own
//! child modules (2018 relative paths) or a name one of its `use`s binds (`as` renames included). Each path leads to
//! the file that defines what it names: module files are walked segment by segment, and a name a module binds by a
//! `use` (a `pub use` re-export, or a private `use` a child reaches by `super::`) is followed to where it leads. A
//! name a module neither defines as a file nor binds is its own item, or comes from one of its glob imports: all of
//! those. `foo.rs` beside `foo/` is a module root exactly like `foo/mod.rs`.
//!
//! **Structure is not an import.** A module's edges to its own descendants (`mod x;`, `pub use x::Y`, `use x::Y`,
//! `x::f()` in a folder's root) are how Rust spells a folder whose root holds the shared type its children name by
//! `super::Registry`; they are left out. Every other edge counts: between siblings and cousins, to other folders,
//! and from a file to its parent or grandparent, so a circle that leaves a folder and comes back into it is found.
//!
//! Not modelled, so refused: a non-test inline `mod x { … }` (its paths would be read in the file's scope). A
//! function's own `use`s bind their names for the whole file (more edges, never fewer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;

/// A module path: `crate::registry::names` is `["crate", "registry", "names"]`.
type Module = Vec<String>;
/// Each file's imports, by module.
type Graph = BTreeMap<Module, Files>;
type Files = BTreeSet<Module>;

fn child(module: &[String], name: &str) -> Module {
    [module, &[name.to_owned()]].concat()
}

/// `registry/names.rs` is `crate::registry::names`; `foo/mod.rs` and `foo.rs` are both `crate::foo`.
fn module_of(rel: &str) -> Module {
    let mut module = vec!["crate".to_owned()];
    module.extend(rel.trim_end_matches(".rs").split('/').map(str::to_owned));
    if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
        module.pop();
    }
    module
}

/// The library's source files (all of `src/` but `main.rs`), by path below `src/`, with their text.
fn read_src(src: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            let rel = path
                .strip_prefix(src)
                .expect("below src/")
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                dirs.push(path);
            } else if rel.ends_with(".rs") && rel != "main.rs" {
                let text = std::fs::read_to_string(&path).expect("source is readable");
                files.insert(rel, text);
            }
        }
    }
    files
}

/// The code without comments (`//`, `/* */`) and with each string literal (raw ones too) as `""` and each char
/// literal as `' '`, so that no `//`, quote or brace inside one is read as code. Lifetimes (`'a`) stay.
fn strip_literals(text: &str) -> String {
    let literal = Regex::new(concat!(
        r"(?s)//[^\n]*|/\*.*?\*/", // comments (a nested one's rest is code: more edges, never fewer)
        r###"|\bb?r"[^"]*"|\bb?r#".*?"#|\bb?r##".*?"##"###, // raw strings
        r#"|b?"(\\.|[^"\\])*"|b?'(\\.[^']*|[^\\'\n])'"#, // strings, chars
    ))
    .expect("valid");
    let blank = |found: &regex::Captures| match found[0].trim_start_matches('b').chars().next() {
        Some('/') => " ",
        Some('\'') => "' '",
        _ => "\"\"",
    };
    literal.replace_all(text, blank).into_owned()
}

/// The code without its `#[cfg(test)]` items, and the names of the test-only files it declares (`mod x;`).
fn strip_tests(code: &str) -> (String, Vec<String>) {
    let attribute = Regex::new(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]").expect("valid");
    let test_file = Regex::new(r"^\s*(#\s*\[[^\]]*\]\s*)*(pub(\s*\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
        .expect("valid");
    let (mut kept, mut test_files, mut rest) = (String::new(), Vec::new(), code);
    while let Some(found) = attribute.find(rest) {
        kept.push_str(&rest[..found.start()]);
        let item = &rest[found.end()..];
        if let Some(file) = test_file.captures(item) {
            test_files.push(file[4].to_owned());
        }
        rest = &item[item_end(item)..];
    }
    kept.push_str(rest);
    (kept, test_files)
}

/// Where the item (or field, statement, match arm) at the start of `code` ends: after its `;`, its `,` or the `}`
/// that closes its body, or before the bracket that closes what contains it. Further attributes belong to it.
fn item_end(code: &str) -> usize {
    let (mut depth, mut angles, mut previous) = (0, 0, ' ');
    for (at, ch) in code.char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return at,
            '}' if depth == 1 => return at + 1,
            ')' | ']' | '}' => depth -= 1,
            '<' if depth == 0 => angles += 1,
            '>' if depth == 0 && angles > 0 && previous != '-' && previous != '=' => angles -= 1,
            ';' if depth == 0 => return at + 1,
            ',' if depth == 0 && angles == 0 => return at + 1,
            _ => {}
        }
        previous = ch;
    }
    code.len()
}

/// What a file's code says about names and paths.
#[derive(Default)]
struct Scope {
    /// The names its `use`s bind, each to the paths (as written in the file) it stands for.
    bindings: BTreeMap<String, Vec<Vec<String>>>,
    /// The prefixes of its top-level glob imports (`use x::*`).
    globs: Vec<Vec<String>>,
    /// The paths it names: its `use` leaves, then the `a::b` paths of the rest of its code.
    paths: Vec<Vec<String>>,
}

fn scope(code: &str) -> Scope {
    let statement = Regex::new(r"\buse\s+([^;]+);").expect("valid");
    let token = Regex::new(r"[A-Za-z_][A-Za-z0-9_]*|::|[{},*]").expect("valid");
    let path =
        Regex::new(r"[A-Za-z_][A-Za-z0-9_]*(\s*::\s*[A-Za-z_][A-Za-z0-9_]*)+").expect("valid");
    let mut scope = Scope::default();
    let (mut depth, mut seen, mut rest) = (0, 0, String::new());
    for found in statement.captures_iter(code) {
        let whole = found.get(0).expect("a match");
        let gap = &code[seen..whole.start()];
        depth += gap.matches('{').count() as i64 - gap.matches('}').count() as i64;
        rest.push_str(gap);
        rest.push(' ');
        seen = whole.end();
        let tokens: Vec<&str> = token.find_iter(&found[1]).map(|t| t.as_str()).collect();
        let mut leaves = Vec::new();
        use_tree(&tokens, &mut 0, Vec::new(), &mut leaves);
        for (path, binds) in leaves {
            if path.last().is_some_and(|last| last == "*") && depth == 0 {
                scope.globs.push(path[..path.len() - 1].to_vec());
            }
            if let Some(name) = binds {
                scope.bindings.entry(name).or_default().push(path.clone());
            }
            scope.paths.push(path);
        }
    }
    rest.push_str(&code[seen..]);
    for found in path.find_iter(&rest) {
        let before = rest[..found.start()].chars().next_back();
        if !before.is_some_and(|c| c == ':' || c == '$' || c == '_' || c.is_alphanumeric()) {
            let segments = found.as_str().split("::").map(|s| s.trim().to_owned());
            scope.paths.push(segments.collect());
        }
    }
    scope
}

/// A `use` leaf: the path it names and the name it binds.
type Leaf = (Vec<String>, Option<String>);

/// The leaves of a `use` tree (from `at` in its tokens, below `path`): each leaf's path (a `self` leaf names its
/// prefix) and the name it binds (its last segment or its `as` rename; `_` and globs bind none).
fn use_tree(tokens: &[&str], at: &mut usize, mut path: Vec<String>, leaves: &mut Vec<Leaf>) {
    while let Some(&token) = tokens.get(*at) {
        *at += 1;
        match token {
            "::" => {}
            "{" => {
                while tokens.get(*at).is_some_and(|t| *t != "}") {
                    use_tree(tokens, at, path.clone(), leaves);
                    if tokens.get(*at) == Some(&",") {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            "," | "}" => {
                *at -= 1;
                break;
            }
            name => {
                path.push(name.to_owned());
                if tokens.get(*at) != Some(&"::") {
                    break;
                }
            }
        }
    }
    if path.last().is_some_and(|last| last == "self") {
        path.pop();
    }
    let mut binds = path.last().filter(|last| *last != "*").cloned();
    if tokens.get(*at) == Some(&"as") {
        binds = tokens
            .get(*at + 1)
            .filter(|name| **name != "_")
            .map(|name| name.to_string());
        *at += 2;
    }
    leaves.push((path, binds));
}

/// The crate's files, each with its scope, to resolve paths in.
struct Crate {
    scopes: BTreeMap<Module, Scope>,
}

impl Crate {
    fn is_file(&self, module: &Module) -> bool {
        self.scopes.contains_key(module)
    }

    /// The files a path written in `module` leads to (none for other crates' and local names).
    fn resolve(&self, module: &Module, path: &[String], depth: usize) -> Files {
        match path.first().map(String::as_str) {
            _ if depth > 32 => BTreeSet::new(),
            Some("crate") => self.walk(vec!["crate".to_owned()], &path[1..], depth),
            Some("self" | "super") => self.walk(module.clone(), path, depth),
            Some(first) if self.is_file(&child(module, first)) => {
                self.walk(module.clone(), path, depth)
            }
            Some(first) => self
                .bound(module, first, &path[1..], depth)
                .unwrap_or_default(),
            None => BTreeSet::new(),
        }
    }

    /// Where `name::rest` leads if `module` binds `name` by a `use`.
    fn bound(&self, module: &Module, name: &str, rest: &[String], depth: usize) -> Option<Files> {
        let targets = self.scopes.get(module)?.bindings.get(name)?;
        let path = |target: &Vec<String>| [target.as_slice(), rest].concat();
        Some(
            targets
                .iter()
                .flat_map(|target| self.resolve(module, &path(target), depth + 1))
                .collect(),
        )
    }

    /// The files `module::rest` leads to: down module files, and on through the names a module binds.
    fn walk(&self, module: Module, rest: &[String], depth: usize) -> Files {
        let Some((name, tail)) = rest.split_first() else {
            return BTreeSet::from([module]);
        };
        let up = module[..module.len().saturating_sub(1)].to_vec();
        match name.as_str() {
            "self" => self.walk(module, tail, depth),
            "super" => self.walk(up, tail, depth),
            "*" => BTreeSet::from([module]),
            _ if self.is_file(&child(&module, name)) => {
                self.walk(child(&module, name), tail, depth)
            }
            _ => self.bound(&module, name, tail, depth).unwrap_or_else(|| {
                let globs = self
                    .scopes
                    .get(&module)
                    .map_or(&[][..], |scope| &scope.globs);
                let through = |glob: &Vec<String>| [glob.as_slice(), rest].concat();
                let from_globs = globs
                    .iter()
                    .flat_map(|glob| self.resolve(&module, &through(glob), depth + 1));
                from_globs.chain([module.clone()]).collect()
            }),
        }
    }
}

/// The import graph of a crate given as its files (path below `src/` → text), structure left out.
fn import_graph(files: &BTreeMap<String, String>) -> Graph {
    let inline_module = Regex::new(r"\bmod\s+\w+\s*\{").expect("valid");
    let (mut scopes, mut test_only) = (BTreeMap::new(), Vec::new());
    for (rel, text) in files {
        let module = module_of(rel);
        let (code, test_files) = strip_tests(&strip_literals(text));
        assert!(
            !inline_module.is_match(&code),
            "{rel}: an inline module; teach this check its scope"
        );
        test_only.extend(test_files.iter().map(|name| child(&module, name)));
        scopes.insert(module, scope(&code));
    }
    let (krate, mut graph) = (Crate { scopes }, Graph::new());
    for (module, scope) in &krate.scopes {
        let test = test_only.iter().any(|test| module.starts_with(test));
        let targets = scope
            .paths
            .iter()
            .filter(|_| !test)
            .flat_map(|p| krate.resolve(module, p, 0));
        let imports = targets.filter(|target| krate.is_file(target) && !target.starts_with(module));
        graph.insert(module.clone(), imports.collect());
    }
    graph
}

/// The graph's circles (strongly connected components of more than one file).
fn circles(edges: &Graph) -> Vec<Files> {
    let reaches = |from: &Module| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![from.clone()]);
        while let Some(next) = todo.pop() {
            for target in edges.get(&next).into_iter().flatten() {
                if seen.insert(target.clone()) {
                    todo.push(target.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&Module, Files> = edges.keys().map(|n| (n, reaches(n))).collect();
    let back = |node: &Module, other: &Module| reach.get(other).is_some_and(|r| r.contains(node));
    let circle = |(node, reached): (&&Module, &Files)| -> Files {
        reached
            .iter()
            .filter(|other| back(node, other))
            .cloned()
            .collect()
    };
    let found: BTreeSet<Files> = reach.iter().map(circle).filter(|c| c.len() > 1).collect();
    found.into_iter().collect()
}

/// The circles as sorted lists of files.
fn circle_files(files: &BTreeMap<String, String>, graph: &Graph) -> Vec<Vec<String>> {
    let names: BTreeMap<Module, &String> = files.keys().map(|rel| (module_of(rel), rel)).collect();
    let mut found: Vec<Vec<String>> = circles(graph)
        .iter()
        .map(|circle| circle.iter().map(|m| names[m].clone()).collect())
        .collect();
    found.iter_mut().for_each(|circle| circle.sort());
    found.sort();
    found
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_src(&src);
    assert!(
        files.len() > 10,
        "found the source files: {:?}",
        files.keys()
    );
    let graph = import_graph(&files);
    let (server, routes) = (module_of("server.rs"), module_of("admission/routes.rs"));
    assert!(
        graph[&server].contains(&routes),
        "admission::AdmissionSettings is followed: {graph:?}"
    );
    let report: Vec<String> = circles(&graph)
        .iter()
        .map(|circle| {
            let inside = circle.iter().flat_map(|from| {
                let to = graph[from].iter().filter(|to| circle.contains(*to));
                to.map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
            });
            inside.collect::<Vec<_>>().join("; ")
        })
        .collect();
    assert!(
        report.is_empty(),
        "import circles among src/ files:\n{}",
        report.join("\n")
    );
}

/// One case per rule: `## rule => the circles it must find` (files, `|` between circles, or `none`), then a small
/// crate: `-- file: code`, the code going on over the lines up to the next `-- `. Each case comes out differently
/// without its rule.
const CASES: &str = r##"
## a brace group, a `super::` path => a/b.rs c.rs
-- a/mod.rs: pub mod b;
-- a/b.rs: use std::fmt; use crate::{c::Thing, a::b as _};
-- c.rs: fn f() { super::a::b::run() }
## a module root's `pub use child::Item` leads to the file that defines it => proxy/target.rs server.rs
-- proxy/mod.rs: mod target; pub use target::Proxy;
-- proxy/target.rs: use crate::server::State;
-- server.rs: use crate::proxy::Proxy;
## so do `pub use self::…`, `pub(crate) use crate::…` and a renamed re-export => a/x.rs a/z.rs c.rs
-- a/mod.rs: mod x; mod z; pub use self::x::{X as Y}; pub(crate) use crate::a::z::Z;
-- a/x.rs: use crate::c::C;
-- a/z.rs: use crate::c::C;
-- c.rs: use crate::a::{Y, Z};
## a name under glob re-exports may come from any of them => a/y.rs c.rs
-- a/mod.rs: mod x; mod y; pub use x::*; pub use y::*;
-- a/x.rs: pub struct X;
-- a/y.rs: use crate::c::C;
-- c.rs: use crate::a::Y;
## `foo.rs` beside `foo/` is a module root => config/error.rs server.rs
-- config.rs: mod error; pub use error::ConfigError;
-- config/error.rs: use crate::server::State;
-- server.rs: use crate::config::ConfigError;
## nested brace groups => b.rs registry/error.rs
-- b.rs: use crate::{registry::{error::RegistryError}};
-- registry/mod.rs: pub mod error;
-- registry/error.rs: use crate::b::f;
## a module imported by name, then a path through it => b.rs registry/error.rs
-- b.rs: use crate::registry; pub fn f() { registry::error::g() }
-- registry/mod.rs: pub mod error;
-- registry/error.rs: use crate::b::f;
## … renamed by `as` => b.rs registry/error.rs
-- b.rs: use crate::{registry as reg}; pub fn f() -> reg::error::E { todo!() }
-- registry/mod.rs: pub mod error;
-- registry/error.rs: use crate::b::f;
## `use child::X` in a root, reached by a child's `super::X` => a/b.rs a/c.rs
-- a/mod.rs: mod b; mod c; use b::Shared;
-- a/b.rs: use super::c::helper;
-- a/c.rs: use super::Shared;
## an inline `child::Item` path => a/mod.rs d.rs
-- a/mod.rs: mod b; pub fn run() { b::Thing::go() }
-- a/b.rs: pub use crate::d::Thing;
-- d.rs: use crate::a::run;
## a `//` in a string, a quote in a char or a raw string hides no code => a.rs b.rs c.rs d.rs e.rs
-- a.rs:
pub const URL: &str = "https://x"; pub fn f() { crate::b::g() }
pub const QUOTE: char = '"'; pub fn g<'a>(x: &'a str) -> &'a str { crate::c::h(); x }
pub const RAW: &str = r"C:\"; pub fn h() { crate::d::i() }
pub const HASHED: &[u8] = br#"\"#; pub fn i() { crate::e::j() }
pub const END: &str = "";
-- b.rs: use crate::a::f;
-- c.rs: use crate::a::f;
-- d.rs: use crate::a::f;
-- e.rs: use crate::a::f;
## comments are not code => none
-- a.rs:
/* use crate::b::B;
   crate::b::g(); */
// crate::b::g();
/// [`crate::b::B`]
fn f() {}
-- b.rs: use crate::a::f;
## every `#[cfg(test)]` item is test code: a module, a `use`, a fn, a file => none
-- a.rs:
#[cfg(test)]
mod tests { use crate::b::B; }
#[cfg(test)] use crate::b::C;
#[cfg(test)]
#[allow(dead_code)]
fn helper() { crate::b::g() }
#[cfg(test)]
mod fake;
pub fn f() {}
-- a/fake.rs: use crate::b::B;
-- b.rs: use crate::a::{f, fake::Fake};
## … and nothing else is => a.rs b.rs c.rs
-- a.rs:
#[cfg(test)]
mod tests { fn t() {} }
#[cfg(test)] fn helper() {}
pub fn f() { crate::b::g() }
pub struct S {
    #[cfg(test)]
    probe: u8,
    clock: crate::c::C,
}
-- b.rs: use crate::a::f;
-- c.rs: use crate::a::S;
## a module's edges to its own descendants are structure => none
-- registry/mod.rs: mod error; mod service; pub use service::Registry; use error::RegistryError;
pub fn f() { service::g(); service::cache::h() }
pub struct Shared;
-- registry/service.rs: pub mod cache; use super::{RegistryError, Shared};
-- registry/service/cache.rs: use crate::registry::Shared;
-- registry/error.rs: use super::Shared;
## … but a circle out of a folder and back counts (child to grandparent) => a/b/c.rs a/mod.rs x.rs
-- a/mod.rs: mod b; use crate::x::X; pub struct A;
-- a/b.rs: pub mod c;
-- a/b/c.rs: use super::super::A;
-- x.rs: use crate::a::b::c::C;
"##;

#[test]
fn each_rule_of_the_architecture_check_changes_what_it_finds() {
    let mut wrong = Vec::new();
    for case in CASES.split("\n## ").skip(1) {
        let (head, body) = case.split_once('\n').expect("a case has files");
        let (rule, expected) = head.split_once(" => ").expect("a case says what it finds");
        let expected: Vec<Vec<String>> = expected
            .split(" | ")
            .filter(|circle| *circle != "none")
            .map(|circle| circle.split(' ').map(str::to_owned).collect())
            .collect();
        let files: BTreeMap<String, String> = format!("\n{body}")
            .split("\n-- ")
            .skip(1)
            .map(|file| file.split_once(':').expect("-- file: code"))
            .map(|(name, code)| (name.to_owned(), code.to_owned()))
            .collect();
        let found = circle_files(&files, &import_graph(&files));
        if found != expected {
            wrong.push(format!("{rule}: found {found:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
