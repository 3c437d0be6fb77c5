//! The import graph of src/ points down: no cycle between top-level modules, and the sans-IO
//! layers (frame, proto, codec, media) import neither a driver (server, client), the upper layers
//! (hub, gb, sim, probe), nor tokio or std::net sockets. Read from the source text, so a new
//! import that breaks the layering fails here, not in review.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without line comments and without its `#[cfg(test)]` tail (unit tests may
/// use anything: they are not part of the layer).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Top-level module of each file under src/ -> the top-level modules its code names.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, Vec<String>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut externs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if ["main", "lib"].contains(&top.as_str()) || rel.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let entry = deps.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != top {
                entry.insert(name);
            }
        }
        for marker in ["tokio", "std::net"] {
            if code.contains(&format!("{marker}::")) || code.contains(&format!("use {marker}")) {
                externs.entry(top.clone()).or_default().push(format!("{} uses {marker}", rel.display()));
            }
        }
    }
    (deps, externs)
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (deps, _) = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(cycle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            panic!("import cycle: {} (graph: {deps:?})", cycle.join(" -> "));
        }
    }
}

#[test]
fn sans_io_layers_import_no_driver_upper_layer_or_socket() {
    let (deps, externs) = graph();
    let upper = ["server", "client", "hub", "gb", "sim", "probe"];
    for layer in ["frame", "proto", "codec", "media"] {
        let bad: Vec<_> = deps.get(layer).into_iter().flatten().filter(|d| upper.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "{layer} imports {bad:?}: imports point down");
        assert!(!externs.contains_key(layer), "{layer} must stay sans-IO: {:?}", externs[layer]);
    }
}

#[test]
fn the_gb_core_is_sans_io() {
    // gb/core/ is the signalling state machine: messages, commands and `now` in, outputs out.
    // Its driver (gb/driver.rs, gb/transport.rs) owns the sockets and the clock.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gb/core");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(!files.is_empty(), "src/gb/core/ is where the GB core lives");
    for file in files {
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for forbidden in [
            "tokio::",
            "use tokio",
            "std::net::UdpSocket",
            "std::net::TcpStream",
            "Instant::now",
            "crate::server",
            "crate::client",
            "tokio::spawn",
        ] {
            assert!(!code.contains(forbidden), "{} names {forbidden}: the GB core stays sans-IO", file.display());
        }
    }
}
