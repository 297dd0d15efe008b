//! Compose discovery: through the engine's Docker API (read-only calls only), which
//! containers mount the volume that holds each link, under which service name and as
//! which user, and whether that user can use each channel as the link declares.
//!
//! A sidecar mounts each link's volume at the link's own path
//! (`ROOT/<namespace>/<name>`) and looks at the containers of its own Compose project;
//! the volume plugin knows its volumes by name and looks at every container of the
//! engine. Either way a container that mounts a link's volume is a member, and its
//! Compose service name (its container name outside Compose) is the member name the
//! link's `members`, `readers` and `writers` use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use ipclink_core::model::access::denials;
use ipclink_core::probe::holders::ContainerNames;
pub use ipclink_core::report::MemberReport;
use ipclink_core::report::printable;
use ipclink_core::{IpcLink, LinkPlan};
use ipclink_runtime::Shutdown;
use ipclink_runtime::links::SharedLinks;

/// Compose's label with the project name.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's label with the service name.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";

/// A link discovery looks for: the volume that holds it, the link as declared, its plan.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The engine's name of the volume.
    pub volume: String,
    /// The link as declared (its members, readers and writers).
    pub link: IpcLink,
    /// The link as resolved.
    pub plan: LinkPlan,
}

/// Who looks, and at which containers.
pub enum Scope {
    /// A sidecar, its container's id or name: the volumes it mounts at a link's path
    /// hold those links; the containers of its Compose project are looked at.
    Sidecar {
        /// This sidecar's container id or name.
        container: String,
        /// Each link, with the path the sidecar serves it at.
        links: Vec<(IpcLink, LinkPlan, PathBuf)>,
    },
    /// The volume plugin: its volumes as they are at each round (read on the blocking
    /// pool: it takes the plugin's lock); every container of the engine is looked at.
    Plugin(std::sync::Arc<dyn Fn() -> Vec<Watched> + Send + Sync>),
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Sidecar { container, links } => f
                .debug_struct("Sidecar")
                .field("container", container)
                .field("links", &links.len())
                .finish(),
            Scope::Plugin(_) => f.debug_struct("Plugin").finish_non_exhaustive(),
        }
    }
}

/// Containers inspected at most in one round (the first by id): past it, the others'
/// holds are named by container id and not held to a role, and that is logged.
pub const MAX_CONTAINERS: usize = 1024;
/// Longest service, container or user name kept (labels are anyone's to set).
const MAX_NAME: usize = 253;

/// `s` cut to [`MAX_NAME`] bytes (at a character boundary).
fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Connects and settles the API version (podman serves 1.41).
pub async fn connect(socket: &str) -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_unix(socket, 10, bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
}
/// Parses `Config.User`: "" is root; "UID" or "UID:GID" numeric; names cannot be checked.
pub fn parse_user(user: &str) -> Option<(u32, Option<u32>)> {
    if user.is_empty() {
        return Some((0, Some(0)));
    }
    match user.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, Some(g.parse().ok()?))),
        None => Some((user.parse().ok()?, None)),
    }
}

fn label<'a>(c: &'a ContainerInspectResponse, key: &str) -> Option<&'a str> {
    c.config
        .as_ref()?
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Why a round found nothing.
enum Failure {
    /// What the engine answered says the setup is wrong: the fix.
    Misconfigured(String),
    /// The engine failed (or went away): reconnect.
    Engine(bollard::errors::Error),
    /// This process failed: the round is skipped.
    Internal(String),
}

/// One sidecar round: the members of the links this sidecar's container mounts, among
/// the containers of its Compose project.
async fn sidecar_round(
    docker: &Docker,
    socket: &str,
    container: &str,
    links: &[(IpcLink, LinkPlan, PathBuf)],
) -> Result<Vec<MemberReport>, Failure> {
    let me = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => Failure::Misconfigured(format!(
                "the engine at {socket} does not know container {container:?}: either it is not the engine that runs this sidecar (mount that engine's API socket; Compose: ENGINE_SOCKET=/var/run/docker.sock on Docker, /run/podman/podman.sock on podman), or that is not this container's id or name (--container; its default, the hostname, is not the container's id with Compose's `hostname:` or `network_mode: host`)"
            )),
            e => Failure::Engine(e),
        })?;
    let my_id = me.id.clone().unwrap_or_default();
    // Volume name -> the link whose path this sidecar mounts it at.
    let mut watched: HashMap<String, Watched> = HashMap::new();
    for m in me.mounts.iter().flatten() {
        let (Some(name), Some(dest)) = (&m.name, &m.destination) else {
            continue;
        };
        if let Some((link, plan, _)) = links
            .iter()
            .find(|(_, _, path)| path == std::path::Path::new(dest))
        {
            let w = Watched {
                volume: name.clone(),
                link: link.clone(),
                plan: plan.clone(),
            };
            watched.insert(name.clone(), w);
        }
    }
    let mut filters = HashMap::new();
    if let Some(project) = label(&me, PROJECT_LABEL) {
        filters.insert(
            "label".to_owned(),
            vec![format!("{PROJECT_LABEL}={project}")],
        );
    }
    // Stopped containers too: a member that exited on EACCES is the one to report.
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let ids = docker
        .list_containers(Some(options))
        .await
        .map_err(Failure::Engine)?
        .into_iter()
        .filter_map(|s| s.id)
        .filter(|id| *id != my_id)
        .collect();
    Ok(reports_of(docker, ids, &watched).await)
}

/// One plugin round: the members of the plugin's volumes among every container of the
/// engine (those whose listing shows none of the volumes are not inspected).
async fn plugin_round(
    docker: &Docker,
    volumes: Vec<Watched>,
) -> Result<Vec<MemberReport>, Failure> {
    let watched: HashMap<String, Watched> =
        volumes.into_iter().map(|w| (w.volume.clone(), w)).collect();
    if watched.is_empty() {
        return Ok(Vec::new());
    }
    let options = ListContainersOptionsBuilder::default().all(true).build();
    let ids = docker
        .list_containers(Some(options))
        .await
        .map_err(Failure::Engine)?
        .into_iter()
        .filter(|s| {
            // A listing whose volumes have no names (an engine that leaves them out) is
            // inspected; one that names only other volumes, or has none, is not.
            s.mounts.as_ref().is_none_or(|mounts| {
                let mut volumes = mounts
                    .iter()
                    .filter(|m| m.typ.as_deref().is_none_or(|t| t == "volume"));
                volumes.any(|m| {
                    m.name
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .is_none_or(|n| watched.contains_key(n))
                })
            })
        })
        .filter_map(|s| s.id)
        .collect();
    Ok(reports_of(docker, ids, &watched).await)
}

/// The member reports of containers `ids` (one inspection each; a container that
/// vanished meanwhile is skipped), sorted.
async fn reports_of(
    docker: &Docker,
    ids: Vec<String>,
    watched: &HashMap<String, Watched>,
) -> Vec<MemberReport> {
    let mut ids = ids;
    if ids.len() > MAX_CONTAINERS {
        tracing::warn!(
            containers = ids.len(),
            "more containers than one discovery round inspects ({MAX_CONTAINERS}); the others' holds are named by container id"
        );
        ids.sort_unstable();
        ids.truncate(MAX_CONTAINERS);
    }
    let mut reports = Vec::new();
    for id in ids {
        match docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => reports.extend(member_reports(&c, &id, watched)),
            Err(e) => {
                tracing::debug!(container = id, error = %e, "container vanished during discovery");
            }
        }
    }
    reports.sort_by(|a, b| {
        (&a.namespace, &a.link, &a.service, &a.container).cmp(&(
            &b.namespace,
            &b.link,
            &b.service,
            &b.container,
        ))
    });
    reports
}

/// What container `c` (id `id`) is to each watched link whose volume it mounts: its
/// service, user and state, the roles it is declared for, and its problems (not a
/// member; a channel its user cannot use as declared).
pub fn member_reports(
    c: &ContainerInspectResponse,
    id: &str,
    watched: &HashMap<String, Watched>,
) -> Vec<MemberReport> {
    let container = bounded(c.name.as_deref().unwrap_or(id).trim_start_matches('/'));
    let service = label(c, SERVICE_LABEL)
        .map(bounded)
        .unwrap_or_else(|| container.clone());
    let user = bounded(
        c.config
            .as_ref()
            .and_then(|cfg| cfg.user.as_deref())
            .unwrap_or_default(),
    );
    let state = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let groups_added: Vec<u32> = c
        .host_config
        .as_ref()
        .and_then(|h| h.group_add.clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|g| g.parse().ok())
        .collect();
    let mut reports = Vec::new();
    for m in c.mounts.iter().flatten() {
        let Some(Watched { link, plan, .. }) = m.name.as_ref().and_then(|n| watched.get(n)) else {
            continue;
        };
        // One report per link, however many times the container mounts its volume.
        if reports
            .iter()
            .any(|r: &MemberReport| r.namespace == plan.namespace && r.link == plan.name)
        {
            continue;
        }
        let mut report = MemberReport {
            namespace: plan.namespace.clone(),
            link: plan.name.clone(),
            service: service.clone(),
            container: container.clone(),
            id: id.to_owned(),
            user: user.clone(),
            state: state.clone(),
            checked: false,
            problems: Vec::new(),
            denied: Vec::new(),
            roles: Default::default(),
            undeclared: Vec::new(),
        };
        let declared =
            link.spec.members.is_empty() || link.spec.members.iter().any(|m| m.name == service);
        for c in &link.spec.channels {
            if declared && c.readers.is_empty() && c.writers.is_empty() {
                continue; // open to every member
            }
            let roles = [("reader", &c.readers), ("writer", &c.writers)]
                .into_iter()
                .filter(|(_, names)| declared && names.contains(&service))
                .map(|(role, _)| role.to_owned())
                .collect();
            report.roles.insert(c.name.clone(), roles);
        }
        if !declared {
            report.problems.push(format!(
                "service {service} (container {container}) mounts link {}/{} but is not one of its members",
                plan.namespace, plan.name
            ));
        }
        if let Some((uid, gid)) = parse_user(&user) {
            report.checked = true;
            let mut groups: Vec<u32> = gid.into_iter().chain(groups_added.clone()).collect();
            groups.sort_unstable();
            groups.dedup();
            for d in denials(link, plan, &service, uid, &groups) {
                report.problems.push(format!(
                    "service {service} (container {container}, user {}) {d}",
                    if user.is_empty() { "0" } else { &user }
                ));
                report
                    .denied
                    .push((d.object.clone(), d.missing.replace(" and ", "+")));
            }
        }
        reports.push(report);
    }
    reports
}

/// Where each round's members go (`None`: no longer known, the engine is gone): their
/// running (or paused) containers' names to the holder scan, the reports to the served
/// links. Stopped members hold nothing: only running or paused ones are looked at, so a
/// FIFO both ends of which have exited reads empty.
pub fn publish_to(
    names: ContainerNames,
    links: SharedLinks,
) -> impl Fn(Option<Vec<MemberReport>>) + Send + 'static {
    move |members| {
        *names.lock().unwrap_or_else(|p| p.into_inner()) = members.as_ref().map(|members| {
            members
                .iter()
                .filter(|m| matches!(m.state.as_str(), "running" | "paused"))
                .map(|m| (m.id.clone(), m.container.clone()))
                .collect()
        });
        links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_members(members.unwrap_or_default())
    }
}

/// Where a round's fault goes: the served links' `engine` fault (`/readyz` says it).
pub fn fault_to(links: SharedLinks) -> impl Fn(Option<String>) + Send + 'static {
    move |fault| {
        links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_fault("engine", fault)
    }
}

/// Runs a discovery round for `scope` every `interval` until shutdown, through the
/// engine API at `socket` (`unix:///path`), handing each changed result to `publish`
/// and logging each new problem once.
pub async fn run(
    socket: String,
    scope: Scope,
    interval: Duration,
    publish: impl Fn(Option<Vec<MemberReport>>) + Send + 'static,
    fault: impl Fn(Option<String>) + Send + 'static,
    shutdown: Shutdown,
) {
    let mut docker: Option<Docker> = None;
    let mut last: Option<Vec<MemberReport>> = None;
    loop {
        if docker.is_none() {
            match connect(&socket).await {
                Ok(d) => docker = Some(d),
                Err(e) => {
                    // What the engine said last is not known to hold any more.
                    if last.take().is_some() {
                        publish(None);
                    }
                    fault(Some(match scope {
                        Scope::Sidecar { .. } => format!(
                            "cannot reach the engine at {socket} ({e}): mount the API socket of the engine that runs this container there (Compose: ENGINE_SOCKET=/var/run/docker.sock on Docker, /run/podman/podman.sock on podman)"
                        ),
                        Scope::Plugin(_) => format!(
                            "cannot reach the engine at {socket} ({e}): give --engine (IPCLINK_ENGINE) the API socket of the engine that uses this plugin (unix:///var/run/docker.sock on Docker, unix:///run/podman/podman.sock on podman), or an empty value to name holders by container id"
                        ),
                    }));
                }
            }
        }
        if let Some(d) = &docker {
            let round = match &scope {
                Scope::Sidecar { container, links } => {
                    sidecar_round(d, &socket, container, links).await
                }
                Scope::Plugin(volumes) => {
                    let volumes = volumes.clone();
                    match tokio::task::spawn_blocking(move || volumes()).await {
                        Ok(watched) => plugin_round(d, watched).await,
                        Err(e) => Err(Failure::Internal(format!(
                            "cannot read the volumes to look for: {e}"
                        ))),
                    }
                }
            };
            match round {
                Ok(reports) if last.as_ref() != Some(&reports) => {
                    fault(None);
                    // Logged once per container, link and set of problems (not again
                    // when only its state changes).
                    let key = |r: &MemberReport| {
                        (
                            r.namespace.clone(),
                            r.link.clone(),
                            r.id.clone(),
                            r.problems.clone(),
                        )
                    };
                    let seen: std::collections::HashSet<_> =
                        last.iter().flatten().map(key).collect();
                    for r in &reports {
                        if seen.contains(&key(r)) {
                            continue;
                        }
                        // Names and labels are the engine users' to choose: printable only.
                        tracing::info!(
                            namespace = %r.namespace,
                            link = %r.link,
                            service = %printable(&r.service),
                            container = %printable(&r.container),
                            user = %printable(&r.user),
                            "member found"
                        );
                        for p in &r.problems {
                            tracing::warn!(namespace = %r.namespace, link = %r.link, "{}", printable(p));
                        }
                    }
                    publish(Some(reports.clone()));
                    last = Some(reports);
                }
                Ok(_) => fault(None),
                Err(Failure::Misconfigured(why)) => fault(Some(why)),
                Err(Failure::Internal(why)) => tracing::error!("discovery round skipped: {why}"),
                Err(Failure::Engine(e)) => {
                    tracing::warn!(error = %e, "discovery failed; reconnecting");
                    docker = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, MountPoint};

    #[test]
    fn users() {
        assert_eq!(parse_user(""), Some((0, Some(0))));
        assert_eq!(parse_user("1000"), Some((1000, None)));
        assert_eq!(parse_user("1000:2000"), Some((1000, Some(2000))));
        assert_eq!(parse_user("app"), None);
        assert_eq!(parse_user("1000:staff"), None);
    }

    fn watched() -> HashMap<String, Watched> {
        let link = ipclink_core::parse_links(
            "test",
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: frames, namespace: docker}\nspec:\n  owner: {uid: 1000, gid: 1000}\n  members: [{name: producer}, {name: consumer}]\n  channels:\n    - {name: events, kind: fifo, mode: \"0660\", readers: [consumer], writers: [producer]}\n",
        )
        .expect("link")
        .remove(0);
        let plan = ipclink_core::validate(&link).expect("plan");
        let w = Watched {
            volume: "p_frames".into(),
            link,
            plan,
        };
        HashMap::from([(w.volume.clone(), w)])
    }

    fn container(service: &str, user: &str, volumes: &[&str]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            name: Some(format!("/p-{service}-1")),
            config: Some(ContainerConfig {
                user: Some(user.into()),
                labels: Some(HashMap::from([(SERVICE_LABEL.into(), service.into())])),
                ..Default::default()
            }),
            mounts: Some(
                volumes
                    .iter()
                    .map(|v| MountPoint {
                        name: Some((*v).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_is_declared_for_its_roles_and_a_stranger_for_none() {
        let w = watched();
        let [r] = &member_reports(&container("consumer", "1000", &["p_frames"]), "c1", &w)[..]
        else {
            panic!("one report");
        };
        assert_eq!(
            (r.namespace.as_str(), r.link.as_str()),
            ("docker", "frames")
        );
        assert_eq!(
            (r.service.as_str(), r.container.as_str()),
            ("consumer", "p-consumer-1")
        );
        assert_eq!(r.roles["events"], vec!["reader".to_owned()]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let [r] = &member_reports(&container("intruder", "1000", &["p_frames"]), "c2", &w)[..]
        else {
            panic!("one report");
        };
        assert!(r.roles["events"].is_empty());
        assert!(
            r.problems[0].contains("service intruder (container p-intruder-1) mounts link docker/frames but is not one of its members"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn other_volumes_and_denied_users_are_told_apart() {
        let w = watched();
        assert!(member_reports(&container("consumer", "1000", &["other"]), "c1", &w).is_empty());
        let [r] = &member_reports(
            &container("consumer", "2000", &["other", "p_frames"]),
            "c1",
            &w,
        )[..] else {
            panic!("one report");
        };
        assert!(r.checked);
        assert_eq!(r.denied.len(), 1, "{:?}", r.problems);
    }
}
