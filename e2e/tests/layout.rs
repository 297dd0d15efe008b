//! The shape of the tree, checked: modules of a crate depend one way, and source files
//! stay small enough to read.
//!
//! A module graph is built from the source text of every crate in the workspace: each
//! `mod name;` makes a module of a file, and each `crate::`, `super::` or `self::` path
//! is an edge from the module that writes it to the module it names (through `pub use`
//! re-exports). An edge between a module and its own ancestor is how a child uses its
//! parent's types and is allowed; any other edge is lifted to the two sibling modules
//! under the deepest common parent, and a cycle among siblings fails the test, naming
//! one import of each step. Files over the size mark are printed as warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Source files longer than this are named in a warning.
const WARN_LINES: usize = 600;

type ModPath = Vec<String>;

#[derive(Default)]
struct Crate {
    /// Every module backed by a file, with the file.
    files: BTreeMap<ModPath, PathBuf>,
    /// `pub use` re-exports: (module, name) → the path it names.
    exports: BTreeMap<(ModPath, String), ModPath>,
    /// (from, to, where): every path that names another module.
    uses: Vec<(ModPath, ModPath, String)>,
    /// Paths that may start at a child of the module that writes them (`use live::x`),
    /// kept when that child exists: (from, the path from there, where).
    relative: Vec<(ModPath, ModPath, String)>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e is in the workspace")
        .to_path_buf()
}

/// Crate roots: every `src/lib.rs`, `src/main.rs` and `src/bin/*.rs` of the workspace.
fn crate_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || name.starts_with('.') || name == "target" {
                continue;
            }
            if name == "src" && dir.join("Cargo.toml").is_file() {
                for file in ["lib.rs", "main.rs"] {
                    if path.join(file).is_file() {
                        roots.push(path.join(file));
                    }
                }
                // A binary is src/bin/NAME.rs, or src/bin/NAME/main.rs with its modules.
                if let Ok(bins) = fs::read_dir(path.join("bin")) {
                    roots.extend(bins.flatten().map(|b| b.path()).filter_map(|p| {
                        if p.extension().is_some_and(|e| e == "rs") {
                            Some(p)
                        } else {
                            Some(p.join("main.rs")).filter(|m| m.is_file())
                        }
                    }));
                }
            } else {
                dirs.push(path);
            }
        }
    }
    roots.sort();
    roots
}

/// The text with comments, strings and character literals blanked out.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Tok> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(Tok::Colons);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Reads a use tree from `toks[*i]`: the leaves as (full path, the name they bind).
fn use_tree(toks: &[Tok], i: &mut usize, prefix: &ModPath, out: &mut Vec<(ModPath, String)>) {
    let mut path = prefix.clone();
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
                if toks.get(*i) == Some(&Tok::Colons) {
                    *i += 1;
                    continue;
                }
                let mut bound = name.clone();
                if let (Some(Tok::Ident(kw)), Some(Tok::Ident(alias))) =
                    (toks.get(*i), toks.get(*i + 1))
                    && kw == "as"
                {
                    bound = alias.clone();
                    *i += 2;
                }
                if bound == "self" {
                    path.pop();
                    bound = path.last().cloned().unwrap_or_default();
                }
                out.push((path, bound));
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                while let Some(tok) = toks.get(*i) {
                    match tok {
                        Tok::Punct('}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => use_tree(toks, i, &path, out),
                    }
                }
                return;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push((path, "*".into()));
                return;
            }
            _ => {
                *i += 1;
                return;
            }
        }
    }
}

/// Makes a path written in module `at` absolute, or None when it is not a crate path.
fn absolute(at: &ModPath, path: &ModPath) -> Option<ModPath> {
    let mut base: ModPath;
    let mut rest = path.as_slice();
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &rest[1..];
        }
        Some("super") | Some("self") => {
            base = at.clone();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Reads one file of module `at` into the crate: its `mod` children (parsed in turn),
/// its re-exports and its crate paths.
fn read_module(krate: &mut Crate, at: ModPath, file: &Path, root: &Path) {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    krate.files.insert(at.clone(), file.to_path_buf());
    let toks = tokens(&code_only(&text));
    // Where the children of this module live: beside a crate root or a mod.rs, else in
    // the directory named as the file.
    let child_dir = if at.is_empty() || file.file_name().is_some_and(|n| n == "mod.rs") {
        file.parent().expect("a file in src").to_path_buf()
    } else {
        file.with_extension("")
    };
    let shown = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    // Inline modules (`mod tests { … }`): (name, brace depth at which they close).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here: ModPath = at
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let Some(Tok::Ident(name)) = toks.get(i + 1) {
                    match toks.get(i + 2) {
                        Some(Tok::Punct(';')) if inline.is_empty() => {
                            let candidates = [
                                child_dir.join(format!("{name}.rs")),
                                child_dir.join(name).join("mod.rs"),
                            ];
                            let child = candidates
                                .iter()
                                .find(|p| p.is_file())
                                .unwrap_or_else(|| panic!("{shown}: mod {name}: no file"));
                            let mut path = at.clone();
                            path.push(name.clone());
                            read_module(krate, path, child, root);
                        }
                        Some(Tok::Punct('{')) => {
                            inline.push((name.clone(), depth));
                            depth += 1;
                            i += 3;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            Tok::Ident(kw) if kw == "use" => {
                let public = i > 0
                    && (toks[i - 1] == Tok::Ident("pub".into()) || toks[i - 1] == Tok::Punct(')'));
                let mut j = i + 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut j, &Vec::new(), &mut leaves);
                for (path, bound) in leaves {
                    let Some(target) = absolute(&here, &path) else {
                        let mut target = here.clone();
                        target.extend(path.iter().cloned());
                        if public && inline.is_empty() && bound != "*" {
                            krate.exports.insert((at.clone(), bound), target.clone());
                        }
                        krate.relative.push((
                            at.clone(),
                            target,
                            format!("{shown}: use {}", path.join("::")),
                        ));
                        continue;
                    };
                    if public && inline.is_empty() && bound != "*" {
                        krate.exports.insert((at.clone(), bound), target.clone());
                    }
                    krate.uses.push((
                        at.clone(),
                        target,
                        format!("{shown}: use {}", path.join("::")),
                    ));
                }
                i = j;
                continue;
            }
            Tok::Ident(kw)
                if (kw == "crate" || kw == "super" || kw == "self")
                    && toks.get(i + 1) == Some(&Tok::Colons) =>
            {
                let before = i.checked_sub(1).map(|k| &toks[k]);
                if before != Some(&Tok::Colons) {
                    let mut path = vec![kw.clone()];
                    let mut j = i + 1;
                    while toks.get(j) == Some(&Tok::Colons) {
                        match toks.get(j + 1) {
                            Some(Tok::Ident(seg)) => {
                                path.push(seg.clone());
                                j += 2;
                            }
                            _ => break,
                        }
                    }
                    if let Some(target) = absolute(&here, &path) {
                        krate.uses.push((
                            at.clone(),
                            target,
                            format!("{shown}: {}", path.join("::")),
                        ));
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

impl Crate {
    /// The file module a path names: the longest prefix that is a module, following
    /// re-exports of the item it names next.
    fn resolve(&self, path: &ModPath, hops: usize) -> ModPath {
        let mut len = path.len();
        while len > 0 && !self.files.contains_key(&path[..len]) {
            len -= 1;
        }
        let module = path[..len].to_vec();
        if hops < 8
            && let Some(item) = path.get(len)
            && let Some(target) = self.exports.get(&(module.clone(), item.clone()))
        {
            let mut next = target.clone();
            next.extend(path[len + 1..].iter().cloned());
            if next != *path {
                return self.resolve(&next, hops + 1);
            }
        }
        module
    }

    /// Cycles among sibling modules, each as its steps with one witness per step.
    fn cycles(&self) -> Vec<Vec<String>> {
        // parent → (from sibling → to sibling → a witness)
        let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> =
            BTreeMap::new();
        let relative = self
            .relative
            .iter()
            .filter(|(from, path, _)| self.files.contains_key(&path[..from.len() + 1]));
        for (from, path, witness) in self.uses.iter().chain(relative) {
            let to = self.resolve(path, 0);
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // the module itself, an ancestor or a descendant
            }
            graphs
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_insert_with(|| witness.clone());
        }
        let mut found = Vec::new();
        for (parent, graph) in &graphs {
            for component in strongly_connected(graph) {
                if component.len() < 2 {
                    continue;
                }
                // Walk one cycle through the component for the report.
                let inside: BTreeSet<&String> = component.iter().collect();
                let start = component[0].clone();
                let mut walk = vec![start];
                loop {
                    let at = walk.last().expect("the walk starts somewhere");
                    let next = graph[at]
                        .keys()
                        .find(|n| inside.contains(n))
                        .expect("each node of a component has an edge inside it")
                        .clone();
                    if let Some(from) = walk.iter().position(|n| *n == next) {
                        walk.drain(..from);
                        walk.push(next);
                        break;
                    }
                    walk.push(next);
                }
                let steps = walk
                    .windows(2)
                    .map(|w| {
                        format!(
                            "{} -> {}   ({})",
                            show(parent, &w[0]),
                            show(parent, &w[1]),
                            graph[&w[0]][&w[1]]
                        )
                    })
                    .collect();
                found.push(steps);
            }
        }
        found
    }
}

fn show(parent: &ModPath, name: &str) -> String {
    parent
        .iter()
        .map(String::as_str)
        .chain([name])
        .collect::<Vec<_>>()
        .join("::")
}

/// Tarjan's strongly connected components, iteratively.
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .keys()
        .chain(graph.values().flat_map(|m| m.keys()))
        .collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let index_of: BTreeMap<&String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            graph
                .get(*n)
                .map(|m| m.keys().map(|k| index_of[k]).collect())
                .unwrap_or_default()
        })
        .collect();
    let n = nodes.len();
    let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some((v, child)) = work.pop() {
            if child == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(child) {
                work.push((v, child + 1));
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    out
}

fn read_crate(file: &Path, root: &Path) -> Crate {
    let mut krate = Crate::default();
    read_module(&mut krate, Vec::new(), file, root);
    krate
}

#[test]
fn modules_of_every_crate_depend_one_way() {
    let root = workspace();
    let roots = crate_roots(&root);
    assert!(
        roots.len() >= 8,
        "found only {} crate roots under {}",
        roots.len(),
        root.display()
    );
    let mut report = Vec::new();
    let mut modules = 0;
    for file in &roots {
        let krate = read_crate(file, &root);
        modules += krate.files.len();
        for cycle in krate.cycles() {
            report.push(format!(
                "{}:\n  {}",
                file.strip_prefix(&root).unwrap().display(),
                cycle.join("\n  ")
            ));
        }
    }
    assert!(
        modules > 60,
        "read only {modules} modules: the parser lost the tree"
    );
    assert!(
        report.is_empty(),
        "module cycles (a parent's children must depend one way):\n{}",
        report.join("\n")
    );
}

#[test]
fn a_cycle_between_siblings_is_found_and_a_child_using_its_parent_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir_all(src.join("store")).unwrap();
    fs::write(
        src.join("lib.rs"),
        "mod store;\nmod probe;\npub use store::Store;\n",
    )
    .unwrap();
    // The child uses its parent and the parent its child: allowed.
    fs::write(
        src.join("store/mod.rs"),
        "mod live;\npub struct Store;\nuse self::live::diff;\n",
    )
    .unwrap();
    fs::write(src.join("store/live.rs"), "use super::Store;\n// crate::probe::x in a comment is not a use\nlet s = \"crate::probe\";\n").unwrap();
    // probe names Store through the root's re-export.
    fs::write(
        src.join("probe.rs"),
        "use crate::{Store, fs::x};\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .unwrap();
    let krate = read_crate(&src.join("lib.rs"), src);
    assert_eq!(krate.files.len(), 4);
    assert!(krate.cycles().is_empty(), "{:?}", krate.cycles());

    // Now store's child uses probe: store ↔ probe is a cycle, found through live.
    fs::write(
        src.join("store/live.rs"),
        "use super::Store;\nfn f() { crate::probe::look(); }\n",
    )
    .unwrap();
    let cycles = read_crate(&src.join("lib.rs"), src).cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let text = cycles[0].join("\n");
    assert!(
        text.contains("store -> probe") && text.contains("store/live.rs: crate::probe::look"),
        "{text}"
    );
    assert!(
        text.contains("probe -> store") && text.contains("probe.rs: use crate::Store"),
        "{text}"
    );
}

#[test]
fn source_files_over_the_mark_are_named() {
    let root = workspace();
    let mut long = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                let lines = fs::read_to_string(&path).unwrap().lines().count();
                if lines > WARN_LINES {
                    long.push(format!(
                        "{lines:>5}  {}",
                        path.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
    }
    long.sort();
    // A warning, not a failure: printed by scripts/test, which runs this test with
    // --nocapture.
    for line in &long {
        eprintln!("warning: over {WARN_LINES} lines: {line}");
    }
    assert!(
        long.len() < 100,
        "the walk went astray: {} long files",
        long.len()
    );
}

/// The last commit before commit messages followed the rule below.
const MESSAGES_SINCE: &str = "1615c2c";
/// Longest commit subject.
const SUBJECT_CHARS: usize = 72;

#[test]
fn commit_subjects_are_short_and_the_why_is_in_the_body() {
    let out = std::process::Command::new("git")
        .args(["log", "--format=%h%x1f%s%x1f%b%x1e"])
        .arg(format!("{MESSAGES_SINCE}..HEAD"))
        .current_dir(workspace())
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git log {MESSAGES_SINCE}..HEAD (a clone with the history is needed): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut problems = Vec::new();
    let mut commits = 0;
    for record in text.split('\x1e').map(str::trim).filter(|r| !r.is_empty()) {
        commits += 1;
        let mut fields = record.splitn(3, '\x1f');
        let (hash, subject, body) = (
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        let chars = subject.chars().count();
        if chars > SUBJECT_CHARS {
            problems.push(format!(
                "{hash}: a subject of {chars} characters: {subject}"
            ));
        }
        if body.trim().is_empty() {
            problems.push(format!("{hash}: no body saying why: {subject}"));
        }
    }
    assert!(
        commits > 0,
        "no commit since {MESSAGES_SINCE}: the history is not what it was"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
