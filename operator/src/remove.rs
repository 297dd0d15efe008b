//! `ipclink-operator remove-links`: what the chart's pre-delete hook runs, so that
//! `helm uninstall` never removes the operator and the CRD while IpcLinks still wait
//! for it to handle their finalizers.
//!
//! It refuses, changing nothing, while any link has a member with the link mounted
//! (the data lives only while mounted, and the node plugin must stay to unmount it).
//! Otherwise it deletes every IpcLink and waits until the running operator has cleaned
//! each up, the volumes it provisioned are gone, and no node plugin holds a link.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ipclink_core::IpcLink;
use ipclink_core::model::names::DRIVER_NAME;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::gather::{self, Sources};
use crate::provision::PROVISIONED_BY;

/// How long a mounted member may take to show as gone in status.
const SETTLE: Duration = Duration::from_secs(10);

/// `namespace/name (pods a, b)` of each link whose status shows a member mounted.
pub fn mounted(links: &[IpcLink]) -> Vec<String> {
    links
        .iter()
        .filter_map(|l| {
            let pods: Vec<&str> = l
                .status
                .as_ref()?
                .members
                .iter()
                .filter(|m| m.mounted)
                .map(|m| m.pod.as_str())
                .collect();
            (!pods.is_empty()).then(|| {
                format!(
                    "{}/{} (pods {})",
                    l.namespace().unwrap_or_default(),
                    l.name_any(),
                    pods.join(", ")
                )
            })
        })
        .collect()
}

/// Deletes every IpcLink once none is mounted and waits for the cleanup: the links,
/// their volumes, and (with `plugins`) each node plugin's copy of them, so nothing
/// stays mounted on a node after the plugins are gone.
pub async fn run(
    client: Client,
    plugins: Option<Sources>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let links: Api<IpcLink> = Api::all(client.clone());
    let volumes: Api<PersistentVolume> = Api::all(client);
    // Status follows a deleted member within moments: look again for a few seconds
    // before refusing.
    let settle = Instant::now();
    let (all, busy) = loop {
        let all = links
            .list(&ListParams::default())
            .await
            .context("listing IpcLinks")?
            .items;
        let busy = mounted(&all);
        if busy.is_empty() || settle.elapsed() > SETTLE {
            break (all, busy);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if !busy.is_empty() {
        anyhow::bail!(
            "{} IpcLink(s) still have members with the link mounted: {}. Nothing was removed. Delete those member pods first (a link's data lives only while a member has it mounted), then uninstall again",
            busy.len(),
            busy.join("; ")
        );
    }
    for l in &all {
        let api: Api<IpcLink> = Api::namespaced(
            links.clone().into_client(),
            &l.namespace().unwrap_or_default(),
        );
        match api.delete(&l.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "deleting IpcLink {}/{}",
                        l.namespace().unwrap_or_default(),
                        l.name_any()
                    )
                });
            }
        }
    }
    println!(
        "deleted {} IpcLink(s); waiting for their cleanup",
        all.len()
    );
    let start = Instant::now();
    loop {
        let left = links
            .list(&ListParams::default())
            .await
            .context("listing IpcLinks")?
            .items;
        let ours: Vec<String> = volumes
            .list(&ListParams::default())
            .await
            .context("listing PersistentVolumes")?
            .items
            .iter()
            .filter(|v| {
                v.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(DRIVER_NAME)
            })
            .map(ResourceExt::name_any)
            .collect();
        if left.is_empty() && ours.is_empty() {
            println!("every IpcLink and its volumes are gone");
            break;
        }
        if start.elapsed() > timeout {
            let names: Vec<String> = left
                .iter()
                .map(|l| format!("{}/{}", l.namespace().unwrap_or_default(), l.name_any()))
                .collect();
            anyhow::bail!(
                "after {timeout:?}, IpcLinks still being cleaned up: [{}]; volumes left: [{}]. A member mounted since the check holds them: delete it and uninstall again",
                names.join(", "),
                ours.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(plugins) = plugins else {
        return Ok(());
    };
    loop {
        let mut held = Vec::new();
        for (node, addr) in gather::endpoints(&plugins).await {
            match gather::fetch(&addr, &plugins).await {
                Ok(links) if links.is_empty() => {}
                Ok(links) => held.push(format!(
                    "{node}: {}",
                    links
                        .iter()
                        .map(|l| format!("{}/{}", l.namespace, l.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => held.push(format!("{node}: no answer ({e})")),
            }
        }
        if held.is_empty() {
            println!("no node plugin holds a link any more");
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "after {timeout:?}, node plugins still hold links: {}",
                held.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipclink_core::model::spec::{IpcLinkStatus, MemberStatus};

    #[test]
    fn only_mounted_members_hold_a_link() {
        let mut a: IpcLink = serde_json::from_value(serde_json::json!({
            "apiVersion": "ipclink.dev/v1alpha1",
            "kind": "IpcLink",
            "metadata": {"name": "frames", "namespace": "vision"},
            "spec": {"members": [{"name": "cam"}]},
        }))
        .expect("link");
        let member = |pod: &str, mounted| MemberStatus {
            member: "cam".into(),
            pod: pod.into(),
            node: None,
            mounted,
        };
        a.status = Some(IpcLinkStatus {
            members: vec![
                member("cam-0", true),
                member("cam-1", false),
                member("cam-2", true),
            ],
            ..IpcLinkStatus::default()
        });
        let mut b = a.clone();
        b.metadata.name = Some("idle".into());
        b.status = Some(IpcLinkStatus {
            members: vec![member("x", false)],
            ..IpcLinkStatus::default()
        });
        let mut c = a.clone();
        c.metadata.name = Some("new".into());
        c.status = None;
        assert_eq!(mounted(&[a, b, c]), ["vision/frames (pods cam-0, cam-2)"]);
    }
}
