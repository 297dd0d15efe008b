//! A link's scope and its members' roles: what they allow, and the specs in which they
//! make no sense (checked with the rest of the spec by `validate`).

use crate::model::members::Labels;
use crate::model::spec::{ChannelKind, IpcLink, IpcLinkSpec, Role, Scope};

/// Whether member `name` of `link` is a client (mounted read-only).
pub fn is_client(link: &IpcLink, name: &str) -> bool {
    link.spec
        .members
        .iter()
        .any(|m| m.name == name && m.role == Some(Role::Client))
}

/// Whether a server member of `link` selects a pod with `labels`.
pub fn serves(link: &IpcLink, labels: &(impl Labels + ?Sized)) -> bool {
    link.spec.members.iter().any(|m| {
        m.role == Some(Role::Server)
            && m.pod_selector
                .as_ref()
                .is_some_and(|s| crate::model::members::selects(s, labels))
    })
}

/// Whether a pod with `labels` gets a read-only mount: every member that selects it is a
/// client. A pod that a client and another member both select gets what the other
/// member allows (roles add rights, never take them away).
pub fn mounts_read_only(link: &IpcLink, labels: &(impl Labels + ?Sized)) -> bool {
    let mut selecting = link.spec.members.iter().filter(|m| {
        m.pod_selector
            .as_ref()
            .is_some_and(|s| crate::model::members::selects(s, labels))
    });
    let mut any = false;
    let all_clients = selecting.all(|m| {
        any = true;
        m.role == Some(Role::Client)
    });
    any && all_clients
}

/// The problems of `spec`'s scope and roles, as (field, what is wrong and allowed);
/// `validate` reports them with the rest.
pub(crate) fn problems(spec: &IpcLinkSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if spec.scope == Scope::Node && spec.claim.is_some() {
        problems.push((
            "spec.claim".to_owned(),
            "a node-scoped link (scope: Node) has an instance on every node where a member mounts it, and no claim: remove claim, or use scope: Link".to_owned(),
        ));
    }
    let is_client = |name: &str| {
        spec.members
            .iter()
            .any(|m| m.name == name && m.role == Some(Role::Client))
    };
    for (i, c) in spec.channels.iter().enumerate() {
        // A client's mount is read-only: it opens FIFOs either way and connects to
        // sockets, but cannot open a regular file for writing or bind (EROFS), and a
        // queue is written both ways.
        // A socket channel's readers are its servers: they bind in it.
        let lists: &[(&Vec<String>, &str)] = match c.kind {
            ChannelKind::Shm => &[(&c.writers, "writers")],
            ChannelKind::Queue => &[(&c.writers, "writers"), (&c.readers, "readers")],
            ChannelKind::Socket => &[(&c.readers, "readers")],
            ChannelKind::Fifo => &[],
        };
        let cannot = match c.kind {
            ChannelKind::Socket => "bind a socket in",
            _ => "open for writing",
        };
        for (list, what) in lists {
            for (j, who) in list.iter().enumerate() {
                if is_client(who) {
                    problems.push((
                        format!("spec.channels[{i}].{what}[{j}]"),
                        format!(
                            "member {who:?} is a client (role: client), mounted read-only, so it cannot {cannot} {} channel {:?}; give it no role (read-write) or take it off this list",
                            c.kind.as_str(),
                            c.name
                        ),
                    ));
                }
            }
        }
    }
    let selecting = || spec.members.iter().filter(|m| m.pod_selector.is_some());
    if spec.allow_create
        && selecting().next().is_some()
        && selecting().all(|m| m.role == Some(Role::Client))
    {
        problems.push((
            "spec.allowCreate".to_owned(),
            "every member that selects pods is a client (role: client), mounted read-only, so no pod could create an object: give the member that creates them role: server, or set allowCreate: false".to_owned(),
        ));
    }
    problems
}
