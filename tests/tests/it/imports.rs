//! Imports inside `vega-repository` point one way. ARCHITECTURE.md states the rooms' order
//! in a block this test reads; every `crate::` and `super::` path in `repository/src` must
//! name its defining module (never the crate root, which only re-exports the public API), a
//! room may use only its own room and those before it, and no modules form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use syn::visit::Visit;

/// The rooms' order, from the fenced block after the marker in ARCHITECTURE.md.
fn stated_order(architecture: &str) -> Vec<String> {
    let marker = "<!-- import order -->";
    let after = &architecture[architecture
        .find(marker)
        .expect("ARCHITECTURE.md has the import-order block")
        + marker.len()..];
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced block follows the marker");
    block
        .lines()
        .skip(1)
        .flat_map(|line| line.split_whitespace())
        .map(str::to_owned)
        .collect()
}

/// Module path (`db::connection`) of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The `crate::`/`super::` paths of one file, as absolute module paths plus the rest.
struct Paths {
    module: Vec<String>,
    /// Inline `mod` blocks entered (a `mod tests`): `super` there is the file's module.
    inline: usize,
    found: Vec<Vec<String>>,
}

impl Paths {
    fn absolute(&self, segments: Vec<String>) -> Option<Vec<String>> {
        match segments.first().map(String::as_str) {
            Some("crate") => Some(segments[1..].to_vec()),
            Some("super") => {
                let mut base = self.module.clone();
                let mut rest = &segments[..];
                while rest.first().is_some_and(|s| s == "super") {
                    if self.inline == 0 {
                        base.pop();
                    }
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                Some(base)
            }
            _ => None,
        }
    }

    fn tree(&mut self, prefix: Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                let mut next = prefix;
                next.push(p.ident.to_string());
                self.tree(next, &p.tree);
            }
            syn::UseTree::Name(n) => {
                let mut next = prefix;
                if n.ident != "self" {
                    next.push(n.ident.to_string());
                }
                self.push(next);
            }
            syn::UseTree::Rename(r) => {
                let mut next = prefix;
                if r.ident != "self" {
                    next.push(r.ident.to_string());
                }
                self.push(next);
            }
            syn::UseTree::Glob(_) => self.push(prefix),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.tree(prefix.clone(), item);
                }
            }
        }
    }

    fn push(&mut self, segments: Vec<String>) {
        if let Some(path) = self.absolute(segments) {
            self.found.push(path);
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.tree(Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.push(segments);
        syn::visit::visit_path(self, path);
    }

    // `pub(crate)` and `pub(super)` name no item.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.inline += 1;
        syn::visit::visit_item_mod(self, item);
        self.inline -= 1;
    }
}

/// Every module's imports: module → the modules its paths name.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = vega_tests::rust_sources(src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        if module.is_empty() {
            continue; // lib.rs: declarations and the public re-exports
        }
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut paths = Paths {
            module: module.split("::").map(str::to_owned).collect(),
            inline: 0,
            found: Vec::new(),
        };
        paths.visit_file(&parsed);
        let targets: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
        for path in paths.found {
            // The longest prefix that is a module defines the item; none is the crate root.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|prefix| modules.contains(prefix))
                .unwrap_or_default();
            if target != module {
                targets.insert(target);
            }
        }
    }
    graph
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// What is wrong with `graph` under `order`: root imports, back imports, cycles.
fn problems(graph: &BTreeMap<String, BTreeSet<String>>, order: &[String]) -> Vec<String> {
    let position = |module: &str| order.iter().position(|r| r == room(module));
    let mut problems = Vec::new();
    for (module, targets) in graph {
        let Some(from) = position(module) else {
            problems.push(format!(
                "{module}: its room is not in ARCHITECTURE.md's order"
            ));
            continue;
        };
        for target in targets {
            match position(target) {
                _ if target.is_empty() => problems.push(format!(
                    "{module} imports from the crate root: import from the defining module"
                )),
                Some(to) if to > from => problems.push(format!(
                    "{module} imports {target}, which comes after it in the stated order"
                )),
                None => problems.push(format!("{module} imports {target}, in no stated room")),
                _ => {}
            }
        }
    }
    problems.extend(
        cycles(graph)
            .into_iter()
            .map(|cycle| format!("cycle: {}", cycle.join(" → "))),
    );
    problems
}

/// Each cycle found by a depth-first walk, as the modules on it.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn walk<'g>(
        node: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(node.to_owned());
            found.push(cycle);
            return;
        }
        if !done.insert(node) {
            return;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn repository_imports_follow_the_stated_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let order = stated_order(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let graph = graph(&root.join("repository/src"));
    let rooms: BTreeSet<&str> = graph.keys().map(|m| room(m)).collect();
    assert!(
        rooms.len() >= 10 && graph.values().map(BTreeSet::len).sum::<usize>() > 100,
        "the walk found {} rooms: is it looking in the right place?",
        rooms.len()
    );
    let problems = problems(&graph, &order);
    assert!(problems.is_empty(), "imports: {problems:#?}");
}

#[test]
fn the_check_catches_root_back_and_cyclic_imports() {
    let order: Vec<String> = ["db", "queue", "reports"].map(str::to_owned).to_vec();
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("db::connection", vec!["queue::scans"]),
        ("queue::scans", vec!["queue::view", ""]),
        ("queue::view", vec!["queue::scans", "db::connection"]),
        ("reports::import", vec!["queue::scans"]),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_owned(), t.into_iter().map(str::to_owned).collect()))
    .collect();
    let problems = problems(&graph, &order);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("db::connection imports queue::scans"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("queue::scans imports from the crate root"))
    );
    assert!(
        problems.iter().any(|p| p.starts_with("cycle: ")),
        "{problems:#?}"
    );
    assert!(!problems.iter().any(|p| p.starts_with("reports::import")));
}
