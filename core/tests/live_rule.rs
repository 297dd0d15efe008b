//! The rule for editing a live link (`store::live::steps`), from a table: a record's plan,
//! the new plan, what is at each name on disk, and whether members hold the link, in;
//! the steps, the changes that wait (by field) and the objects the link then serves,
//! out. No system call: the half that reads the disk (`found`) is exercised by the
//! sidecar's and the node plugin's live-edit tests.

use ipclink_core::store::live::{Entry, EntryKind, Step, steps};
use ipclink_core::{LinkPlan, parse_links, validate};

fn plan(spec: &str) -> LinkPlan {
    let yaml = format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: l, namespace: t }}\nspec:\n{spec}"
    );
    validate(&parse_links("t", &yaml).expect("parse")[0]).expect("valid")
}

/// An entry ipclink made, of `kind`, with attributes as planned unless `attrs_differ`.
fn ours(kind: EntryKind) -> Option<Entry> {
    Some(Entry {
        kind,
        made_here: true,
        attrs_differ: false,
    })
}

fn shown(step: &Step<'_>) -> String {
    let what = match step {
        Step::Create(_) => "create",
        Step::Attrs(_) => "attrs",
        Step::Grow(_) => "grow",
        Step::Replace { old: Some(_), .. } => "replace-renamed",
        Step::Replace { .. } => "replace",
        Step::Supplant(_) => "supplant",
        Step::Remove(_) => "remove",
    };
    format!("{what} {}", step.file_name())
}

struct Row {
    case: &'static str,
    old: Option<&'static str>,
    new: &'static str,
    found: Vec<Option<Entry>>,
    apply_owner: bool,
    exclusive: bool,
    steps: &'static [&'static str],
    pending: &'static [&'static str],
    /// The size the link then serves for its first object, when it is a region.
    serves: Option<u64>,
}

const SHM_1M: &str = "  channels: [{ name: frames, kind: shm, size: 1Mi }]\n";
const SHM_2M: &str = "  channels: [{ name: frames, kind: shm, size: 2Mi }]\n";
const MIB: u64 = 1 << 20;

fn table() -> Vec<Row> {
    let row = |case, old, new, found, steps, pending| Row {
        case,
        old,
        new,
        found,
        apply_owner: true,
        exclusive: false,
        steps,
        pending,
        serves: None,
    };
    vec![
        row(
            "a new object is made",
            None,
            SHM_1M,
            vec![None],
            &["create frames"],
            &[],
        ),
        row(
            "an object as planned is kept",
            Some(SHM_1M),
            SHM_1M,
            vec![ours(EntryKind::File(MIB))],
            &[],
            &[],
        ),
        Row {
            found: vec![Some(Entry {
                kind: EntryKind::File(MIB),
                made_here: true,
                attrs_differ: true,
            })],
            ..row(
                "only its mode or owner differ",
                Some(SHM_1M),
                SHM_1M,
                vec![],
                &["attrs frames"],
                &[],
            )
        },
        Row {
            serves: Some(2 * MIB),
            ..row(
                "a region grows under its holders",
                Some(SHM_1M),
                SHM_2M,
                vec![ours(EntryKind::File(MIB))],
                &["grow frames"],
                &[],
            )
        },
        Row {
            serves: Some(2 * MIB),
            ..row(
                "a region is never made smaller under its holders",
                Some(SHM_2M),
                SHM_1M,
                vec![ours(EntryKind::File(2 * MIB))],
                &[],
                &["spec.channels[0].size"],
            )
        },
        Row {
            exclusive: true,
            serves: Some(MIB),
            ..row(
                "with no member, a smaller region replaces it",
                Some(SHM_2M),
                SHM_1M,
                vec![ours(EntryKind::File(2 * MIB))],
                &["replace frames"],
                &[],
            )
        },
        row(
            "another kind waits",
            Some("  channels: [{ name: frames, kind: fifo }]\n"),
            SHM_1M,
            vec![ours(EntryKind::Fifo)],
            &[],
            &["spec.channels[0].kind"],
        ),
        row(
            "a semaphore's initial value waits",
            Some("  semaphores: [{ name: ready, initial: 0 }]\n"),
            "  semaphores: [{ name: ready, initial: 1 }]\n",
            vec![ours(EntryKind::File(32))],
            &[],
            &["spec.semaphores[0].initial"],
        ),
        row(
            "a removed object goes first, then new ones are made",
            Some("  channels: [{ name: old, kind: fifo }]\n"),
            SHM_1M,
            vec![None],
            &["remove old", "create frames"],
            &[],
        ),
        row(
            "a member's entry at a new name in an open root is supplanted",
            Some("  allowCreate: true\n"),
            "  allowCreate: true\n  channels: [{ name: events, kind: fifo }]\n",
            vec![Some(Entry {
                kind: EntryKind::Fifo,
                made_here: false,
                attrs_differ: false,
            })],
            &["supplant events"],
            &[],
        ),
        Row {
            apply_owner: false,
            ..row(
                "without owners to give, a member's entry of the right kind is kept",
                Some("  allowCreate: true\n"),
                "  allowCreate: true\n  channels: [{ name: events, kind: fifo }]\n",
                vec![Some(Entry {
                    kind: EntryKind::Fifo,
                    made_here: false,
                    attrs_differ: false,
                })],
                &[],
                &[],
            )
        },
        row(
            "a member's file where a fifo is planned waits, naming who made it",
            None,
            "  channels: [{ name: events, kind: fifo }]\n",
            vec![ours(EntryKind::File(0))],
            &[],
            &["spec.channels[0].kind"],
        ),
    ]
}

#[test]
fn the_live_rule_from_a_table() {
    let rows = table();
    assert!(rows.len() >= 12);
    for r in rows {
        let old = r.old.map(plan);
        let new = plan(r.new);
        assert_eq!(
            r.found.len(),
            new.objects.len(),
            "{}: one entry per object",
            r.case
        );
        let d = steps(&new, old.as_ref(), &r.found, r.apply_owner, r.exclusive);
        let got: Vec<String> = d.steps.iter().map(shown).collect();
        assert_eq!(got, r.steps, "{}: steps", r.case);
        let waits: Vec<&str> = d.pending.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(waits, r.pending, "{}: pending", r.case);
        for p in &d.pending {
            assert!(
                p.message.contains("applies when the last member has left"),
                "{}: {}",
                r.case,
                p.message
            );
        }
        if let Some(size) = r.serves {
            let served = d.objects.first().map(|o| o.kind);
            assert_eq!(
                served,
                Some(ipclink_core::ObjectKind::Shm { size }),
                "{}: the link serves",
                r.case
            );
        }
        let made = d.steps.len() + d.kept.len() + d.pending.len();
        assert!(
            made >= new.objects.len(),
            "{}: an object was left out",
            r.case
        );
    }
}
