//! The docs hold to what they promise: every `sh` block of the README and of `docs/` is
//! either run by the test its marker names (`<!-- NAME: run by FILE … -->`, and FILE
//! asks for `"NAME"`), or its marker says why not and names what runs instead; the
//! README stays a front page (at most 200 lines) whose index names every page.

use std::fs;
use std::path::{Path, PathBuf};

const README_LINES: usize = 200;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e is in the workspace")
        .to_path_buf()
}

fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.insert(0, root.join("README.md"));
    pages
}

/// The marker a block sits in: `<!-- NAME: TEXT -->` on a line of its own, before it
/// and not closed by `<!-- /NAME -->` yet.
fn marker_of(text: &str, at: usize) -> Option<(String, String)> {
    let mut open: Option<(String, String)> = None;
    for line in text[..at].lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("<!-- /") {
            if open
                .as_ref()
                .is_some_and(|(n, _)| rest == format!("{n} -->"))
            {
                open = None;
            }
        } else if let Some(rest) = line.strip_prefix("<!-- ")
            && let Some((name, said)) = rest.strip_suffix(" -->").and_then(|r| r.split_once(": "))
        {
            open = Some((name.to_owned(), said.to_owned()));
        }
    }
    open
}

/// The files of the repository a marker names.
fn files_named(said: &str) -> Vec<PathBuf> {
    let root = root();
    said.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')'))
        .filter(|w| w.contains('/'))
        .map(|w| root.join(w.trim_end_matches('.')))
        .filter(|p| p.is_file())
        .collect()
}

#[test]
fn every_shell_block_is_run_by_the_test_its_marker_names_or_says_why_not() {
    let mut problems = Vec::new();
    let mut run = 0;
    for page in pages() {
        let text = fs::read_to_string(&page).expect("page");
        let shown = page
            .strip_prefix(root())
            .expect("in the tree")
            .display()
            .to_string();
        for (at, _) in text.match_indices("```sh\n") {
            let line = text[..at].lines().count() + 1;
            let Some((name, said)) = marker_of(&text, at) else {
                problems.push(format!("{shown}:{line}: a sh block with no marker"));
                continue;
            };
            let files = files_named(&said);
            if files.is_empty() {
                problems.push(format!(
                    "{shown}:{line}: <!-- {name}: {said} --> names no file of the tree"
                ));
            } else if said.starts_with("run by ") {
                let asks = format!("\"{name}\"");
                if !fs::read_to_string(&files[0])
                    .expect("test file")
                    .contains(&asks)
                {
                    problems.push(format!(
                        "{shown}:{line}: {} never asks for {asks}",
                        files[0].display()
                    ));
                }
                run += 1;
            } else if !said.starts_with("not run") {
                problems.push(format!(
                    "{shown}:{line}: <!-- {name}: {said} --> says neither `run by` nor `not run`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        run >= 9,
        "only {run} blocks are run: the scan lost the markers"
    );
}

#[test]
fn the_readme_is_a_front_page_that_names_every_page() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_LINES,
        "README.md is {lines} lines; the reference goes to docs/"
    );
    for page in pages().iter().skip(1) {
        let name = page.file_name().expect("a file").to_string_lossy();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "README.md does not link docs/{name}"
        );
    }
}

#[test]
fn a_block_outside_a_marker_or_a_marker_naming_nothing_is_found() {
    let text = "<!-- a: run by e2e/tests/docs.rs -->\n```sh\nx\n```\n<!-- /a -->\n```sh\ny\n```\n";
    let first = text.find("```sh").expect("block");
    assert_eq!(marker_of(text, first).map(|m| m.0).as_deref(), Some("a"));
    let second = text.rfind("```sh").expect("block");
    assert_eq!(marker_of(text, second), None);
    assert_eq!(files_named("run by e2e/tests/docs.rs (all of it)").len(), 1);
    assert!(files_named("not run: nothing/here.rs").is_empty());
}
