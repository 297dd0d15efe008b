//! The rule for editing a live link, without a system call: given a record's plan, a
//! new plan and what is at each object's name ([`Entry`]), the steps to take now, the
//! changes that wait for the members to leave, and the objects the link then serves.
//! `core/tests/live_rule.rs` checks it from a table.

use crate::model::quantity::format_bytes;
use crate::model::validate::{LinkPlan, ObjectKind, ObjectPlan, Problem, SEM_BYTES};

/// What one object of a plan (or of the record, for a removed one) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'p> {
    /// It does not exist: make it.
    Create(&'p ObjectPlan),
    /// Only its mode or owner differ.
    Attrs(&'p ObjectPlan),
    /// A region to grow to the plan's size (then given mode and owner).
    Grow(&'p ObjectPlan),
    /// A pending change made now that no member holds the link: whatever is at the
    /// object's name (and at `old`, the record's file name of it) goes, then it is made.
    Replace {
        /// The object as planned.
        obj: &'p ObjectPlan,
        /// The file name the record had for it, when it differs (another ABI).
        old: Option<String>,
    },
    /// An entry a member made at the name of a new object (in a root members may write
    /// to): the object is made aside and exchanged with it; the member's holders keep
    /// theirs, which is then removed. A declared object never adopts a member's.
    Supplant(&'p ObjectPlan),
    /// An object the record has and the plan no longer has.
    Remove(ObjectPlan),
}

impl Step<'_> {
    /// The file name the step is about.
    pub fn file_name(&self) -> String {
        match self {
            Step::Create(o)
            | Step::Attrs(o)
            | Step::Grow(o)
            | Step::Supplant(o)
            | Step::Replace { obj: o, .. } => o.file_name(),
            Step::Remove(o) => o.file_name(),
        }
    }
}

/// What an existing link needs to serve a plan.
#[derive(Debug, Default)]
pub struct Diff<'p> {
    /// What to do: removals first, then the plan's objects in plan order.
    pub steps: Vec<Step<'p>>,
    /// Objects that match already.
    pub kept: Vec<String>,
    /// Changes that wait for the link to have no member, each naming its field.
    pub pending: Vec<Problem>,
    /// The objects as the link serves them once the steps are done: the plan's, with
    /// every pending one in its live form (or left out when it has none).
    pub objects: Vec<ObjectPlan>,
}

/// A channel and a semaphore may share a name; their files never do.
pub(super) fn same_object(a: &ObjectPlan, b: &ObjectPlan) -> bool {
    a.name == b.name
        && matches!(a.kind, ObjectKind::Semaphore { .. })
            == matches!(b.kind, ObjectKind::Semaphore { .. })
}

fn kind_name(kind: &ObjectKind) -> String {
    match kind {
        ObjectKind::Shm { size } => format!("shm of {}", format_bytes(*size)),
        ObjectKind::Semaphore { initial, abi } => {
            format!("semaphore (abi {}, initial {initial})", abi.as_str())
        }
        ObjectKind::Queue {
            capacity,
            message_size,
        } => format!(
            "queue of {capacity} messages of {}",
            format_bytes(u64::from(*message_size))
        ),
        other => other.as_str().to_owned(),
    }
}

/// Why the record's object cannot become the planned one under holders, if it cannot.
pub(super) fn identity_change(old: &ObjectPlan, new: &ObjectPlan) -> Option<(String, String)> {
    let field = match (&old.kind, &new.kind) {
        (ObjectKind::Shm { .. }, ObjectKind::Shm { .. })
        | (ObjectKind::Fifo, ObjectKind::Fifo)
        | (ObjectKind::Socket, ObjectKind::Socket) => return None,
        (
            ObjectKind::Semaphore { initial: a, abi: x },
            ObjectKind::Semaphore { initial: b, abi: y },
        ) => {
            if x != y {
                format!("{}.abi", new.field)
            } else if a != b {
                format!("{}.initial", new.field)
            } else {
                return None;
            }
        }
        (
            ObjectKind::Queue {
                capacity: a,
                message_size: x,
            },
            ObjectKind::Queue {
                capacity: b,
                message_size: y,
            },
        ) => {
            // A queue's layout is fixed when it is made: another one replaces it.
            if a != b {
                format!("{}.capacity", new.field)
            } else if x != y {
                format!("{}.messageSize", new.field)
            } else {
                return None;
            }
        }
        _ => format!("{}.kind", new.field),
    };
    Some((
        field,
        format!(
            "{} is a live {}; the spec wants a {}",
            new.name,
            kind_name(&old.kind),
            kind_name(&new.kind)
        ),
    ))
}

const WAITS: &str =
    "it cannot change under running members and applies when the last member has left the link";

/// What is at an object's name in the link, as `found` reads it: all the rule needs
/// to know of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What the entry is.
    pub kind: EntryKind,
    /// Marked as made by ipclink at this name (read only for an object the record does
    /// not know, in a root members may write to; else `true`).
    pub made_here: bool,
    /// Its mode, owner or ACL differ from the object's (read only when its kind
    /// matches; else `false`).
    pub attrs_differ: bool,
}

/// The type of an entry, with a regular file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of this many bytes.
    File(u64),
    /// A FIFO.
    Fifo,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device or a socket.
    Special,
}

impl EntryKind {
    fn describe(self) -> &'static str {
        match self {
            EntryKind::File(_) => "a file",
            EntryKind::Fifo => "a fifo",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symlink",
            EntryKind::Special => "a special file",
        }
    }

    /// Whether it is of the object's type.
    pub(super) fn matches(self, kind: &ObjectKind) -> bool {
        match (kind, self) {
            (ObjectKind::Shm { .. }, EntryKind::File(_)) => true,
            (ObjectKind::Semaphore { .. }, EntryKind::File(size)) => size == SEM_BYTES,
            (q @ ObjectKind::Queue { .. }, EntryKind::File(size)) => {
                q.queue_params().is_some_and(|p| p.file_size() == size)
            }
            (ObjectKind::Fifo, EntryKind::Fifo) | (ObjectKind::Socket, EntryKind::Dir) => true,
            _ => false,
        }
    }

    /// A region's live size, when it is larger than the object's.
    pub(super) fn larger_region(self, kind: &ObjectKind) -> Option<u64> {
        match (kind, self) {
            (ObjectKind::Shm { size }, EntryKind::File(live)) if live > *size => Some(live),
            _ => None,
        }
    }
}

/// The rule itself, without a system call: what the link needs to serve `plan`, given
/// its record's plan `old` and what `found` read at each object's name (`entries`, in
/// plan order). `apply_owner`: this process gives files their owners (root);
/// `exclusive`: no member holds the link, so pending changes become replacements.
pub fn steps<'p>(
    plan: &'p LinkPlan,
    old: Option<&LinkPlan>,
    entries: &[Option<Entry>],
    apply_owner: bool,
    exclusive: bool,
) -> Diff<'p> {
    // Members may have created names in the root (now or before this plan).
    let open_root = plan.root.allows_create() || old.is_some_and(|o| o.root.allows_create());
    let mut d = Diff::default();
    let was = |obj: &ObjectPlan| old.and_then(|o| o.objects.iter().find(|p| same_object(p, obj)));
    for (obj, entry) in plan.objects.iter().zip(entries.iter().copied()) {
        let file = obj.file_name();
        let before = was(obj);
        // An entry the record does not know, in a root members may write to, that
        // ipclink did not make there (it marks what it makes, so a run killed before
        // its record was written is recognised): a member made it, or linked a declared
        // object to the name. It is replaced, never adopted.
        if before.is_none() && open_root && apply_owner && entry.is_some_and(|e| !e.made_here) {
            d.steps.push(Step::Supplant(obj));
            d.objects.push(obj.clone());
            continue;
        }
        // Why this object must wait, if it must: (field, message, its live form).
        let mut wait: Option<(String, String, Option<ObjectPlan>)> = None;
        if let Some((field, message)) = before.and_then(|b| identity_change(b, obj)) {
            wait = Some((field, message, before.cloned()));
        } else if let Some(e) = entry {
            if !e.kind.matches(&obj.kind) {
                let message = format!(
                    "{file} exists as {} that {}; the spec wants a {}",
                    e.kind.describe(),
                    if before.is_some() {
                        "ipclink made"
                    } else {
                        "a member made"
                    },
                    kind_name(&obj.kind)
                );
                wait = Some((format!("{}.kind", obj.field), message, before.cloned()));
            } else if let (Some(live), ObjectKind::Shm { size }) =
                (e.kind.larger_region(&obj.kind), &obj.kind)
            {
                let message = format!(
                    "{} is a live region of {}; the spec wants {} and a region is never made smaller under its holders",
                    obj.name,
                    format_bytes(live),
                    format_bytes(*size)
                );
                let mut was_obj = before.cloned().unwrap_or_else(|| obj.clone());
                was_obj.kind = ObjectKind::Shm { size: live };
                wait = Some((format!("{}.size", obj.field), message, Some(was_obj)));
            }
        }
        match (wait, entry) {
            (Some(_), _) if exclusive => {
                let old_name = before.map(ObjectPlan::file_name).filter(|n| *n != file);
                d.steps.push(Step::Replace { obj, old: old_name });
                d.objects.push(obj.clone());
            }
            (Some((field, message, live)), _) => {
                d.pending
                    .push(Problem::new(field, format!("{message}: {WAITS}")));
                d.objects.extend(live);
            }
            (None, None) => {
                d.steps.push(Step::Create(obj));
                d.objects.push(obj.clone());
            }
            (None, Some(e)) => {
                let grow = matches!((obj.kind, e.kind), (ObjectKind::Shm { size }, EntryKind::File(live)) if live < size);
                if grow {
                    d.steps.push(Step::Grow(obj));
                } else if e.attrs_differ {
                    d.steps.push(Step::Attrs(obj));
                } else {
                    d.kept.push(file);
                }
                d.objects.push(obj.clone());
            }
        }
    }
    // Removals first: what they free (bytes, inodes of a full link) may be what a new
    // object needs.
    if let Some(old) = old {
        let removals: Vec<Step<'p>> = old
            .objects
            .iter()
            .filter(|o| !plan.objects.iter().any(|p| same_object(p, o)))
            .map(|gone| Step::Remove(gone.clone()))
            .collect();
        d.steps.splice(0..0, removals);
    }
    d
}
