//! Compose discovery: through the engine's Docker API (read-only calls only), which
//! containers of this sidecar's Compose project (running or not) mount the volume that
//! holds each link, under which service name and as which user, and whether that user
//! can use each channel as the link declares.
//!
//! The sidecar mounts each link's volume at the link's own path
//! (`ROOT/<namespace>/<name>`); a container that mounts the same volume is a member, and
//! its Compose service name is the member name the link's `readers`/`writers` use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use ipclink_core::model::access::denials;
pub use ipclink_core::report::MemberReport;
use ipclink_core::{IpcLink, LinkPlan};
use ipclink_runtime::Shutdown;

/// Compose's label with the project name.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's label with the service name.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";

/// Where the engine is and who this sidecar is.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `unix:///path` of the engine's Docker API socket.
    pub socket: String,
    /// This sidecar's container id or name.
    pub container: String,
}

/// Connects and settles the API version (podman serves 1.41).
pub async fn connect(engine: &Engine) -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_unix(&engine.socket, 10, bollard::API_DEFAULT_VERSION)?
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

/// One round: every member container of every link, with its problems.
pub async fn discover(
    docker: &Docker,
    engine: &Engine,
    links: &[(IpcLink, LinkPlan, PathBuf)],
) -> Result<Vec<MemberReport>, bollard::errors::Error> {
    let me = docker
        .inspect_container(&engine.container, None::<InspectContainerOptions>)
        .await?;
    let my_id = me.id.clone().unwrap_or_default();
    // Volume name -> the link whose path this sidecar mounts it at.
    let mut volume_link: HashMap<String, usize> = HashMap::new();
    for m in me.mounts.iter().flatten() {
        let (Some(name), Some(dest)) = (&m.name, &m.destination) else {
            continue;
        };
        if let Some(i) = links
            .iter()
            .position(|(_, _, path)| path == std::path::Path::new(dest))
        {
            volume_link.insert(name.clone(), i);
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
    let mut reports = Vec::new();
    for summary in docker.list_containers(Some(options)).await? {
        let Some(id) = summary.id.as_deref() else {
            continue;
        };
        if id == my_id {
            continue;
        }
        let c = match docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(container = id, error = %e, "container vanished during discovery");
                continue;
            }
        };
        let container = c
            .name
            .clone()
            .unwrap_or_else(|| id.to_owned())
            .trim_start_matches('/')
            .to_owned();
        let service = label(&c, SERVICE_LABEL)
            .map(str::to_owned)
            .unwrap_or_else(|| container.clone());
        let user = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.user.clone())
            .unwrap_or_default();
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
        for m in c.mounts.iter().flatten() {
            let Some(&i) = m.name.as_ref().and_then(|n| volume_link.get(n)) else {
                continue;
            };
            let (link, plan, _) = &links[i];
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
    }
    reports.sort_by(|a, b| {
        (&a.namespace, &a.link, &a.service, &a.container).cmp(&(
            &b.namespace,
            &b.link,
            &b.service,
            &b.container,
        ))
    });
    Ok(reports)
}

/// Runs [`discover`] every `interval` until shutdown, handing each changed result to
/// `publish` and logging each new problem once.
pub async fn run(
    engine: Engine,
    links: Vec<(IpcLink, LinkPlan, PathBuf)>,
    interval: Duration,
    publish: impl Fn(Vec<MemberReport>) + Send + 'static,
    fault: impl Fn(Option<String>) + Send + 'static,
    shutdown: Shutdown,
) {
    let mut docker: Option<Docker> = None;
    let mut last: Option<Vec<MemberReport>> = None;
    loop {
        if docker.is_none() {
            match connect(&engine).await {
                Ok(d) => docker = Some(d),
                Err(e) => {
                    fault(Some(format!(
                        "cannot reach the engine at {} ({e}): mount the API socket of the engine that runs this container there (Compose: ENGINE_SOCKET=/var/run/docker.sock on Docker, /run/podman/podman.sock on podman)",
                        engine.socket
                    )));
                }
            }
        }
        if let Some(d) = &docker {
            match discover(d, &engine, &links).await {
                Ok(reports) if last.as_ref() != Some(&reports) => {
                    fault(None);
                    for r in &reports {
                        let seen = last.iter().flatten().any(|o| o == r);
                        if seen {
                            continue;
                        }
                        tracing::info!(
                            namespace = %r.namespace,
                            link = %r.link,
                            service = %r.service,
                            container = %r.container,
                            user = %r.user,
                            "member found"
                        );
                        for p in &r.problems {
                            tracing::warn!(namespace = %r.namespace, link = %r.link, "{p}");
                        }
                    }
                    publish(reports.clone());
                    last = Some(reports);
                }
                Ok(_) => fault(None),
                // Only the inspection of this container can answer 404 here (members
                // that vanish are skipped).
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => fault(Some(format!(
                    "the engine at {} does not know container {:?}: either it is not the engine that runs this sidecar (mount that engine's API socket; Compose: ENGINE_SOCKET=/var/run/docker.sock on Docker, /run/podman/podman.sock on podman), or that is not this container's id or name (--container; its default, the hostname, is not the container's id with Compose's `hostname:` or `network_mode: host`)",
                    engine.socket, engine.container
                ))),
                Err(e) => {
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

    #[test]
    fn users() {
        assert_eq!(parse_user(""), Some((0, Some(0))));
        assert_eq!(parse_user("1000"), Some((1000, None)));
        assert_eq!(parse_user("1000:2000"), Some((1000, Some(2000))));
        assert_eq!(parse_user("app"), None);
        assert_eq!(parse_user("1000:staff"), None);
    }
}
