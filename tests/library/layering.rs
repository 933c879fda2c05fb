//! The architecture, checked: no import circle between units of the crate
//! and no import from a lower layer up to a higher one. A unit is a
//! ground-floor file (`src/chunk.rs`), a wing (`src/store/mod.rs`) or a
//! module inside a wing (`src/ops/restore/`, `src/store/s3.rs`). The files
//! that only add `impl Store` blocks count as the wing itself.
//! Layers, low to high: ground floor < store < sources < ops < serve, cli.
//! Also: at most ten `.rs` files at the root of `src/`, no file over 900 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const WINGS: &[(&str, u8)] = &[
    ("store", 1),
    ("sources", 2),
    ("ops", 3),
    ("serve", 4),
    ("cli", 4),
];
/// Files that are parts of their wing's root module, not units of their
/// own: the `impl Store` blocks, and the server's route handlers (which
/// share its private state).
const WING_PARTS: &[&str] = &[
    "store::open",
    "store::snapshots",
    "store::packs",
    "store::file_lists",
    "store::quarantine",
    "store::tmp",
    "serve::handlers",
];
/// Binary-side top-level modules (declared in main.rs).
const BIN_ROOTS: &[&str] = &["main", "cli"];

type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rank(unit: &str) -> u8 {
    let top = unit.split("::").next().unwrap_or(unit);
    WINGS
        .iter()
        .find(|(w, _)| *w == top)
        .map(|(_, r)| *r)
        .unwrap_or(if BIN_ROOTS.contains(&top) { 4 } else { 0 })
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out)
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p)
        }
    }
}

/// Module path of a file relative to `src` (`store/mod.rs` -> [store]).
fn mod_path(rel: &Path) -> Vec<String> {
    let mut v: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if v.last().is_some_and(|l| l == "mod") {
        v.pop();
    }
    if v == ["lib"] || v == ["main"] {
        v.clear();
    }
    v
}

fn strip_comments(src: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in src.lines() {
        let mut l = line;
        if in_block {
            match l.find("*/") {
                Some(i) => {
                    l = &l[i + 2..];
                    in_block = false
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l = &l[..i];
        }
        let l = match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Expands a use tree (after `prefix::`) into full paths.
fn expand(prefix: &[String], s: &str) -> Vec<Vec<String>> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let (mut depth, mut start, mut out) = (0, 0, Vec::new());
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(expand(prefix, &inner[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.extend(expand(prefix, &inner[start..]));
        return out;
    }
    if s.is_empty() {
        return Vec::new();
    }
    match s.find("::") {
        Some(i) if !s[..i].contains('{') => {
            let mut p = prefix.to_vec();
            p.push(s[..i].trim().to_string());
            expand(&p, &s[i + 2..])
        }
        _ => {
            let name = s.split(" as ").next().unwrap_or(s).trim();
            let mut p = prefix.to_vec();
            if name != "self" && name != "*" {
                p.push(name.to_string());
            }
            vec![p]
        }
    }
}

/// Every crate-internal path a file names, as seen from the crate root.
/// Unit tests (`#[cfg(test)] mod tests`, at the end of a file) are left
/// out: a test may drive a lower module through a higher one.
fn paths_in(src: &str, me: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let mut code = strip_comments(src);
    if let Some(i) = code.find("#[cfg(test)]\nmod tests") {
        code.truncate(i);
    }
    let kids: BTreeSet<String> = code
        .lines()
        .filter_map(|l| {
            let t = l
                .trim()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            t.strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'))
                .map(|n| n.trim().to_string())
        })
        .collect();
    let here: Vec<String> = if is_mod_rs || me.is_empty() {
        me.to_vec()
    } else {
        me[..me.len() - 1].to_vec()
    };
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let t = stmt.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let Some(tree) = t.strip_prefix("use ") else {
            continue;
        };
        let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
        let (base, rest): (Vec<String>, &str) = if let Some(r) = tree
            .strip_prefix("crate::")
            .or_else(|| tree.strip_prefix("atosnap::"))
        {
            (Vec::new(), r)
        } else if let Some(r) = tree.strip_prefix("super::") {
            (
                here[..here.len().saturating_sub(if is_mod_rs { 1 } else { 0 })].to_vec(),
                r,
            )
        } else if let Some(r) = tree.strip_prefix("self::") {
            (me.to_vec(), r)
        } else if kids.iter().any(|k| tree.starts_with(&format!("{k}::"))) {
            (me.to_vec(), tree.as_str())
        } else {
            continue;
        };
        out.extend(expand(&base, rest));
    }
    for pre in ["crate::", "atosnap::"] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(pre) {
            let before = rest[..i].chars().last();
            rest = &rest[i + pre.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"') {
                continue;
            }
            let p: Vec<String> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if !p.is_empty() {
                out.push(p)
            }
        }
    }
    out
}

fn unit_of(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<String> {
    let top = path.first()?;
    if !modules.contains(&vec![top.clone()]) {
        return None;
    }
    let unit = if WINGS.iter().any(|(w, _)| w == top)
        && path.len() > 1
        && modules.contains(&path[..2].to_vec())
    {
        format!("{top}::{}", path[1])
    } else {
        top.clone()
    };
    Some(if WING_PARTS.contains(&unit.as_str()) {
        top.clone()
    } else {
        unit
    })
}

/// unit -> unit -> evidence ("file: path") for the crate under `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let rels: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(src).unwrap().to_path_buf())
        .collect();
    let modules: BTreeSet<Vec<String>> = rels.iter().map(|r| mod_path(r)).collect();
    let mut g = Graph::new();
    for (f, rel) in files.iter().zip(&rels) {
        let me = mod_path(rel);
        let Some(from) = unit_of(&me, &modules) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for p in paths_in(&text, &me, rel.ends_with("mod.rs")) {
            let Some(to) = unit_of(&p, &modules) else {
                continue;
            };
            if to != from {
                g.entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .push(format!("{}: {}", rel.display(), p.join("::")));
            }
        }
    }
    g
}

/// Strongly connected components of more than one unit (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        idx: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        st: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.idx.len();
        t.idx.insert(v, n);
        t.low.insert(v, n);
        t.st.push(v);
        t.on.insert(v);
        if let Some(es) = t.g.get(v) {
            for w in es.keys() {
                if !t.idx.contains_key(w.as_str()) {
                    visit(t, w);
                    let m = t.low[v].min(t.low[w.as_str()]);
                    t.low.insert(v, m);
                } else if t.on.contains(w.as_str()) {
                    let m = t.low[v].min(t.idx[w.as_str()]);
                    t.low.insert(v, m);
                }
            }
        }
        if t.low[v] == t.idx[v] {
            let mut c = Vec::new();
            while let Some(w) = t.st.pop() {
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.out.push(c)
            }
        }
    }
    let mut t = T {
        g,
        idx: BTreeMap::new(),
        low: BTreeMap::new(),
        st: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.idx.contains_key(v.as_str()) {
            visit(&mut t, v)
        }
    }
    t.out
}

/// Imports from a lower layer to a higher one.
fn upward(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, es) in g {
        for (to, ev) in es {
            if rank(from) < rank(to) {
                out.push(format!("{from} -> {to}: {}", ev.join(", ")))
            }
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_circle_and_no_upward_import() {
    let g = graph(&src());
    let c = cycles(&g);
    assert!(c.is_empty(), "import circles: {c:?}\n{g:#?}");
    let u = upward(&g);
    assert!(
        u.is_empty(),
        "imports from a lower layer to a higher one:\n{}",
        u.join("\n")
    );
}

/// The checker itself can fail: a planted circle and a planted upward import are found.
#[test]
fn the_checker_finds_a_planted_circle_and_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    std::fs::create_dir_all(s.join("store")).unwrap();
    std::fs::write(s.join("lib.rs"), "pub mod chunk; pub mod store;").unwrap();
    std::fs::write(s.join("chunk.rs"), "use crate::store::{Store, x::Y};").unwrap();
    std::fs::write(
        s.join("store/mod.rs"),
        "pub mod x;\nuse x::Y;\npub fn f() {}",
    )
    .unwrap();
    std::fs::write(s.join("store/x.rs"), "use super::Store;").unwrap();
    let g = graph(s);
    assert_eq!(
        cycles(&g),
        vec![vec!["store".to_string(), "store::x".to_string()]]
    );
    assert_eq!(upward(&g).len(), 2, "{:?}", upward(&g)); // chunk -> store, chunk -> store::x
}

#[test]
fn src_root_holds_at_most_ten_rs_files() {
    let n = std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .count();
    assert!(n <= 10, "{n} .rs files at the root of src/");
}

#[test]
fn no_source_file_over_900_lines() {
    let mut files = Vec::new();
    rs_files(&src(), &mut files);
    rs_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
        &mut files,
    );
    let long: Vec<_> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > 900)
        .collect();
    assert!(long.is_empty(), "{long:?}");
}
