//! Link files named by `Opts.link`: read only from the plugin's link directory
//! (`--link-dir`), never from anywhere else on the host.
//!
//! The plugin runs as root and whoever can create a volume chooses the path, so a file
//! is opened beneath the directory with `openat2` (`RESOLVE_BENEATH`, no symlinks at
//! any step, `O_NOFOLLOW`, `O_NONBLOCK` so a FIFO or a device cannot stall the call),
//! checked with `fstat` (a regular file of at most [`MAX_LINK_FILE`] bytes) before a
//! byte is read, and read before the plugin's lock is taken. Refusals name the option
//! and what is wrong; they never quote the path given or anything the file holds.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use ipclink_core::IpcLinkSpec;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

use super::{Refusal, bad};

/// Largest link file read.
pub const MAX_LINK_FILE: u64 = 1024 * 1024;

/// The directory link files are read from.
#[derive(Debug, Clone)]
pub struct LinkDir {
    path: PathBuf,
}

impl LinkDir {
    /// Link files are read beneath `path`.
    pub fn new(path: PathBuf) -> LinkDir {
        LinkDir { path }
    }

    fn refuse(&self, what: impl std::fmt::Display) -> Refusal {
        bad(format!(
            "Opts.link: {what}; it names a link file in the plugin's link directory {} (--link-dir), as a name relative to it or an absolute path inside it",
            self.path.display()
        ))
    }

    /// The spec of the link file `value` names.
    pub fn read(&self, value: &str) -> Result<IpcLinkSpec, Refusal> {
        let relative = self.relative(value)?;
        let dir = nix::fcntl::open(
            &self.path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.refuse(format!("the link directory cannot be opened ({e})")))?;
        let how = OpenHow::new()
            .flags(
                OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
            )
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = nix::fcntl::openat2(dir.as_fd(), relative.as_path(), how).map_err(|e| {
            self.refuse(match e {
                Errno::ENOENT => "no such file".to_owned(),
                Errno::ELOOP => "a symlink on the way is not followed".to_owned(),
                Errno::EXDEV => "the file is outside the link directory".to_owned(),
                e => format!("the file cannot be opened ({e})"),
            })
        })?;
        let stat = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| self.refuse(format!("the file cannot be read ({e})")))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(self.refuse("not a regular file"));
        }
        if stat.st_size < 0 || stat.st_size as u64 > MAX_LINK_FILE {
            return Err(self.refuse(format!("larger than {MAX_LINK_FILE} bytes")));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_LINK_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.refuse(format!("the file cannot be read ({e})")))?;
        if bytes.len() as u64 > MAX_LINK_FILE {
            return Err(self.refuse(format!("larger than {MAX_LINK_FILE} bytes")));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| self.refuse("the file is not UTF-8 text"))?;
        parse(&text).map_err(|why| self.refuse(why))
    }

    /// `value` as a path relative to the directory: a plain relative path, or an
    /// absolute one inside the directory. `..` is refused here already (`openat2` would
    /// refuse an escape anyway).
    fn relative(&self, value: &str) -> Result<PathBuf, Refusal> {
        let path = Path::new(value);
        let relative = if path.is_absolute() {
            path.strip_prefix(&self.path)
                .map_err(|_| self.refuse("the file is outside the link directory"))?
        } else {
            path
        };
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if value.is_empty() || relative.as_os_str().is_empty() || !plain {
            return Err(self.refuse("not a file name beneath the link directory"));
        }
        Ok(relative.to_owned())
    }
}

/// The one IpcLink `text` declares; why not, naming fields only (a message of the parser
/// or the schema may quote what the file holds, so none is passed on).
fn parse(text: &str) -> Result<IpcLinkSpec, String> {
    let docs = ipclink_core::model::load::yaml_documents("", text)
        .map_err(|_| "the file is not valid YAML")?;
    if docs.len() != 1 {
        return Err(format!(
            "the file holds {} YAML documents; a volume takes exactly one IpcLink",
            docs.len()
        ));
    }
    let doc = docs.into_iter().next().unwrap_or_default();
    ipclink_core::model::load::parse_link_value("", doc)
        .map(|link| link.spec)
        .map_err(|problems| {
            let mut fields: Vec<String> = problems
                .0
                .iter()
                .map(|p| shown_field(p.field.trim_start_matches(": ").trim()))
                .collect();
            fields.dedup();
            format!("the file is not a valid IpcLink; fix {}", fields.join(", "))
        })
}

/// Every field name of the IpcLink schema (from the CRD), and the object's own.
fn schema_fields() -> &'static std::collections::HashSet<String> {
    static FIELDS: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        use ipclink_core::CustomResourceExt;
        fn walk(v: &serde_json::Value, out: &mut std::collections::HashSet<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out: std::collections::HashSet<String> = [
            "apiVersion",
            "kind",
            "metadata",
            "name",
            "namespace",
            "spec",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        if let Ok(crd) = serde_json::to_value(ipclink_core::IpcLink::crd()) {
            walk(&crd, &mut out);
        }
        out
    })
}

/// The part of a problem's field path made of schema field names and indexes: a path
/// also holds the file's own map keys (a line `secret: x`, or a whole line that YAML
/// reads as a key), which are not shown.
fn shown_field(path: &str) -> String {
    let known = schema_fields();
    let mut shown = Vec::new();
    for segment in path.split('.') {
        let name = segment.split('[').next().unwrap_or_default();
        let indexes = &segment[name.len()..];
        let indexes_ok = indexes
            .chars()
            .all(|c| c.is_ascii_digit() || c == '[' || c == ']');
        if !known.contains(name) || !indexes_ok {
            break;
        }
        shown.push(segment);
    }
    if shown.is_empty() {
        "(the document)".into()
    } else {
        shown.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_fields_and_quote_nothing() {
        let secret = "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n";
        let why = parse(secret).expect_err("not a link");
        assert!(!why.contains("saltsalt") && !why.contains("root"), "{why}");
        let why = parse("password: hunter2\nkind: IpcLink\n").expect_err("not a link");
        assert!(
            !why.contains("hunter2") && !why.contains("password"),
            "{why}"
        );
        let why =
            parse("kind: IpcLink\nspec: { channels: [ { name: x, kind: pipe-of-secrets } ] }\n")
                .expect_err("bad kind");
        assert!(why.contains("spec.channels[0].kind"), "{why}");
        assert!(!why.contains("pipe-of-secrets"), "{why}");
        let why =
            parse("kind: IpcLink\nspec:\n  channels: [{ name: x, kind: fifo, s3cret-key: 1 }]\n")
                .expect_err("unknown field");
        assert!(!why.contains("s3cret"), "{why}");
        assert!(why.contains("spec.channels[0]"), "{why}");
        let why = parse("{ unclosed: [").expect_err("not YAML");
        assert_eq!(why, "the file is not valid YAML");
        let why = parse("kind: IpcLink\n---\nkind: IpcLink\n").expect_err("two documents");
        assert!(why.contains("2 YAML documents"), "{why}");
    }
}
