//! Storage rows are not wire types: no public type that derives `Serialize`, in any crate of
//! the workspace, has a field whose name says it holds a secret.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Parts of field names that hold a secret or its hash.
const SECRET: &[&str] = &["password", "secret", "private_key", "hash"];
/// Field names that are a secret whole (`token_prefix` is a display aid, `token` is not).
const SECRET_NAMES: &[&str] = &["token", "api_key", "key_material"];

#[derive(Default)]
struct Finder {
    file: PathBuf,
    serializable: usize,
    offenders: Vec<String>,
}

fn derives_serialize(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("derive")
            && attr
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|paths| {
                    paths
                        .iter()
                        .any(|p| p.segments.last().is_some_and(|s| s.ident == "Serialize"))
                })
    })
}

impl Finder {
    fn check(&mut self, owner: &str, fields: &syn::Fields) {
        for field in fields {
            let Some(name) = &field.ident else { continue };
            let name = name.to_string();
            let skipped = field.attrs.iter().any(|a| {
                a.path().is_ident("serde")
                    && a.meta
                        .require_list()
                        .is_ok_and(|l| l.tokens.to_string().contains("skip"))
            });
            let secret =
                SECRET.iter().any(|s| name.contains(s)) || SECRET_NAMES.contains(&name.as_str());
            if !skipped && secret {
                self.offenders
                    .push(format!("{}: {owner}.{name}", self.file.display()));
            }
        }
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        if matches!(item.vis, syn::Visibility::Public(_)) && derives_serialize(&item.attrs) {
            self.serializable += 1;
            self.check(&item.ident.to_string(), &item.fields);
        }
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        if matches!(item.vis, syn::Visibility::Public(_)) && derives_serialize(&item.attrs) {
            self.serializable += 1;
            for variant in &item.variants {
                self.check(
                    &format!("{}::{}", item.ident, variant.ident),
                    &variant.fields,
                );
            }
        }
    }
}

#[test]
fn no_public_serialize_type_carries_a_secret() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in [
        "config",
        "entity",
        "migration",
        "repository",
        "blobstore",
        "admin",
        "examples/axum-api",
    ] {
        files.extend(vega_tests::rust_sources(&root.join(krate).join("src")));
    }
    let mut finder = Finder::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        finder.file = file;
        finder.visit_file(&parsed);
    }
    assert!(
        finder.serializable > 20,
        "the walk found only {} Serialize types: is it looking in the right place?",
        finder.serializable
    );
    assert!(
        finder.offenders.is_empty(),
        "secrets on the wire: {:#?}",
        finder.offenders
    );
}

#[test]
fn the_walk_catches_a_secret() {
    let parsed = syn::parse_file(
        "#[derive(Debug, serde::Serialize)] pub struct Row { pub id: u32, pub token_hash: Vec<u8> }",
    )
    .unwrap();
    let mut finder = Finder::default();
    finder.visit_file(&parsed);
    assert_eq!(finder.offenders.len(), 1);
}
