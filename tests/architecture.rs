//! ARCHITECTURE.md's layer rules, checked on the source: which top-level module imports
//! which (`crate::<module>` outside test modules), no cycles among them, and no import from a
//! lower layer into a higher one. `scripts/import-graph` prints the same graph.

mod support;

use std::collections::{BTreeMap, BTreeSet};

/// Top-level module → the top-level modules it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = support::repo().join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Test modules may reach anything.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let is_module = src.join(&name).is_dir() || src.join(format!("{name}.rs")).exists();
                if !name.is_empty() && name != top && is_module {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

fn reaches(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == to {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let graph = import_graph();
    assert!(
        graph.contains_key("connectors") && graph.contains_key("plan"),
        "{graph:?}"
    );
    for module in graph.keys() {
        if let Some(cycle) = reaches(&graph, module, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = import_graph();
    // ARCHITECTURE.md, "Layers".
    // Each module and what it may never import (everything at or above its layer).
    const ABOVE_1: &[&str] = &[
        "sql",
        "fhir",
        "record",
        "metrics",
        "resilience",
        "net",
        "config",
        "operators",
        "connectors",
        "spec",
        "plan",
        "runtime",
        "serve",
        "cli",
    ];
    const ABOVE_2: &[&str] = &[
        "net",
        "config",
        "operators",
        "connectors",
        "spec",
        "plan",
        "runtime",
        "serve",
        "cli",
    ];
    const ABOVE_3: &[&str] = &[
        "operators",
        "connectors",
        "spec",
        "plan",
        "runtime",
        "serve",
        "cli",
    ];
    let higher: &[(&str, &[&str])] = &[
        ("formats", ABOVE_1),
        ("sql", ABOVE_2),
        ("fhir", ABOVE_2),
        ("record", ABOVE_2),
        ("metrics", ABOVE_2),
        ("resilience", ABOVE_2),
        ("net", ABOVE_3),
        ("config", ABOVE_3),
        (
            "operators",
            &["connectors", "spec", "plan", "runtime", "serve", "cli"],
        ),
        ("connectors", &["spec", "plan", "runtime", "serve", "cli"]),
        ("spec", &["plan", "runtime", "serve", "cli"]),
        ("plan", &["runtime", "serve", "cli"]),
        ("runtime", &["serve", "cli"]),
        ("serve", &["cli"]),
    ];
    let mut wrong = Vec::new();
    for (module, forbidden) in higher {
        for f in *forbidden {
            if graph.get(*module).is_some_and(|d| d.contains(*f)) {
                wrong.push(format!("{module} imports {f}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}\n{graph:#?}");
}

#[test]
fn every_connector_is_one_folder_with_its_config() {
    let dir = support::repo().join("src/connectors");
    for kind in ["file", "kafka", "http", "fhir"] {
        let folder = dir.join(kind);
        assert!(folder.join("config.rs").exists(), "{kind}: no config.rs");
        assert!(
            folder.join("sink.rs").exists() || folder.join("source.rs").exists(),
            "{kind}: no sink.rs or source.rs"
        );
    }
    let registry = std::fs::read_to_string(dir.join("registry.rs")).unwrap();
    for kind in ["file", "stdout", "kafka", "http", "fhir"] {
        assert!(
            registry.contains(&format!("kind: \"{kind}\"")),
            "{kind} not registered"
        );
    }
}
