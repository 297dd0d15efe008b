//! The repository's scripts and the docs' shell blocks, run as written.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first ```sh block between `<!-- NAME:` and `<!-- /NAME -->` in `page` (the
/// README or a page of `docs/`, from the repository root), which the docs tests run as
/// written.
pub fn doc_block(page: &str, name: &str) -> String {
    let path = repo_root().join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = text
        .find(&format!("<!-- {name}:"))
        .unwrap_or_else(|| panic!("{page}: no <!-- {name}: marker"));
    let end = text
        .find(&format!("<!-- /{name} -->"))
        .unwrap_or_else(|| panic!("{page}: no <!-- /{name} --> marker"));
    text[start..end]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("{page} {name}: no closed sh block"))
        .to_owned()
}

/// [`doc_block`] made runnable here: without the lines that start with one of `skip`
/// (builds a test has already done), and with each `(from, to)` replaced (paths, ports).
pub fn doc_script(page: &str, name: &str, skip: &[&str], replace: &[(&str, &str)]) -> String {
    let mut script = doc_block(page, name)
        .lines()
        .filter(|l| !skip.iter().any(|s| l.starts_with(s)))
        .collect::<Vec<_>>()
        .join("\n");
    for (from, to) in replace {
        script = script.replace(from, to);
    }
    script
}

/// Runs `script` under `bash -euo pipefail` in the repository root with `env` added;
/// (stdout, stderr) when it succeeds, a panic showing the script and both outputs when
/// it fails. The script runs in a process group of its own, killed once bash exits: a
/// job it left in the background (a step failed before its `kill %1`) neither keeps the
/// outputs open nor outlives the test.
pub fn run_script(what: &str, script: &str, env: &[(&str, &std::ffi::OsStr)]) -> (String, String) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root())
        .envs(env.iter().copied())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: bash: {e}"));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = child.wait().unwrap_or_else(|e| panic!("{what}: wait: {e}"));
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// `PATH` with `dirs` in front.
pub fn path_with(dirs: &[&Path]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let all = dirs
        .iter()
        .map(|d| d.to_path_buf())
        .chain(std::env::split_paths(&current));
    std::env::join_paths(all).expect("PATH entries without ':'")
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/NAME` (an installer or builder that prints one path) and returns that
/// path; panics with the script's stderr when it fails.
pub fn script_path(name: &str) -> PathBuf {
    script_path_with(name, &[])
}

/// [`script_path`] with arguments.
pub fn script_path_with(name: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[cfg(test)]
mod tests {
    use super::run_script;

    /// A step that fails while a background job holds the outputs: the failure is
    /// reported at once (the job is killed with the script's process group), not when
    /// the job ends ten minutes later.
    #[test]
    #[should_panic(expected = "background job failed")]
    fn a_failed_script_does_not_wait_for_its_background_jobs() {
        run_script("background job", "sleep 600 &\nfalse", &[]);
    }
}
