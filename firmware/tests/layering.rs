//! Who may import whom (DESIGN.md, "the layering"), checked on the source:
//! a new upward import — the store importing a stage, a stage importing the
//! configuration or another stage, a leaf importing anything above it —
//! fails this test with the file and line.
//!
//! ```text
//! cli, main ─▶ pipeline (the topology) ─▶ stages
//! stages: collector, capture, decode, detect, forward, query, accounts ─▶ store ─▶ leaves
//! control (the channel to a running appliance) ─▶ accounts
//! web (the page) ─▶ what the stages keep (decode, detect, forward, query, store), accounts, control
//! config ─▶ each stage's settings;  leaves: alert flow units timefmt net metrics fasthash table pki geo management fsutil version progress
//! init (PID 1) ─▶ update (bundles, slots, boot flags)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LEAVES: &[&str] = &[
    "alert",
    "flow",
    "units",
    "timefmt",
    "net",
    "metrics",
    "fasthash",
    "table",
    "evidence",
    "pki",
    "geo",
    "management",
    "fsutil",
    "version",
    "progress",
];

/// What each top-level module may import besides the leaves (None: anything).
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "cli" | "main" | "lib" | "pipeline" => return None,
        m if LEAVES.contains(&m) => &[],
        "store" | "capture" | "collector" | "demo" | "update" => &[],
        // First-boot provisioning writes configuration, accounts and files.
        "provision" => &["config", "accounts", "store", "update"],
        // PID 1 installs updates and settles the boot flags.
        "init" => &["update"],
        "decode" | "detect" | "forward" | "query" | "accounts" => &["store"],
        // Backup copies the state tables and files, decoding none of them.
        "backup" => &["store"],
        // The control channel carries the stages' changes to a running appliance.
        "control" => &["accounts"],
        "config" => &["decode", "detect", "forward", "store", "web"],
        // The page reads what the stages keep and changes accounts through the control channel.
        "web" => &[
            "store", "accounts", "control", "decode", "detect", "forward", "query", "update", "backup",
        ],
        other => panic!("module {other} is not in the layering table: add it to DESIGN.md and here"),
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_upward_imports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let module = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let allow = allowed(&module);
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            // Unit tests (at the end of a file) may use anything to build their inputs.
            if code == "#[cfg(test)]" {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for (i, _) in code.match_indices("crate::") {
                let target: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if target.is_empty() || target == module {
                    continue;
                }
                graph.entry(module.clone()).or_default().insert(target.clone());
                let ok = LEAVES.contains(&target.as_str()) || allow.is_none_or(|a| a.contains(&target.as_str()));
                if !ok {
                    bad.push(format!("{}:{}: {module} imports {target}: {}", rel.display(), n + 1, code.trim()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
    // And no cycle between top-level modules.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = Default::default();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}
