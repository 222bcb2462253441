//! Which reads may be stale is decided once per method: a repository method that takes
//! `cx.replica()` says *Replica read* in its docs, a method whose docs say so takes it, and
//! neither writes (no unit of work, no transaction).

use std::path::Path;

use syn::visit::Visit;

const MARKER: &str = "*Replica read*";

/// What one function body does.
#[derive(Default)]
struct Calls {
    replica: bool,
    writes: bool,
}

impl<'ast> Visit<'ast> for Calls {
    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        match call.method.to_string().as_str() {
            "replica" => self.replica = true,
            "unit" | "begin" | "execute_raw" | "execute_unprepared" => self.writes = true,
            _ => {}
        }
        syn::visit::visit_expr_method_call(self, call);
    }
}

fn docs(attrs: &[syn::Attribute]) -> String {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every function of `src` (outside the `db` and `context` rooms, which define the
/// routing), as (name, marked, calls).
fn functions(src: &Path) -> Vec<(String, bool, Calls)> {
    struct Fns<'f>(&'f str, Vec<(String, bool, Calls)>);
    impl<'ast> Visit<'ast> for Fns<'_> {
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            let mut calls = Calls::default();
            calls.visit_block(&f.block);
            let name = format!("{}::{}", self.0, f.sig.ident);
            self.1.push((name, docs(&f.attrs).contains(MARKER), calls));
        }
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            let mut calls = Calls::default();
            calls.visit_block(&f.block);
            let name = format!("{}::{}", self.0, f.sig.ident);
            self.1.push((name, docs(&f.attrs).contains(MARKER), calls));
        }
    }
    let mut found = Vec::new();
    for file in vega_tests::rust_sources(src) {
        let relative = file.strip_prefix(src).unwrap().display().to_string();
        if relative.starts_with("db/") || relative.starts_with("context/") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = syn::parse_file(&text).unwrap();
        let mut fns = Fns(&relative, Vec::new());
        fns.visit_file(&parsed);
        found.extend(fns.1);
    }
    found
}

#[test]
fn replica_reads_are_marked_in_their_docs_and_write_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fns = functions(&root.join("repository/src"));
    let marked = fns.iter().filter(|(_, m, _)| *m).count();
    assert!(
        marked >= 10,
        "only {marked} replica reads found: is the walk right?"
    );
    let mut wrong = Vec::new();
    for (name, marked, calls) in &fns {
        if *marked != calls.replica {
            wrong.push(format!(
                "{name}: {}",
                if *marked {
                    "says it is a replica read but does not take cx.replica()"
                } else {
                    "takes cx.replica() but its docs do not say *Replica read*"
                }
            ));
        }
        if *marked && calls.writes {
            wrong.push(format!("{name}: a replica read that writes"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
