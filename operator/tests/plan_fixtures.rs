//! Validate and plan (the pure stages) from YAML fixtures: a link, its pods, and what the
//! operator must conclude (`kind: Expect`).

use std::collections::BTreeMap;

use ipclink_core::validate;
use ipclink_operator::plan::{Observed, plan};
use ipclink_operator::pods::PodView;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[allow(dead_code)]
    kind: String,
    phase: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default, rename = "memberCount")]
    member_count: Option<i32>,
    #[serde(default, rename = "channelCount")]
    channel_count: Option<i32>,
    /// A node-scoped link's rows per node (also: no `node`).
    #[serde(default)]
    nodes: Option<Vec<ipclink_core::model::spec::NodeInstance>>,
    #[serde(default)]
    conditions: BTreeMap<String, ExpectCondition>,
    events: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExpectCondition {
    status: String,
    reason: String,
    #[serde(default)]
    mentions: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
}

fn run(file: &str) {
    let path = format!("{}/tests/fixtures/plan/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    let docs = ipclink_core::yaml_documents(file, &text).expect("yaml");
    let mut link = None;
    let mut pods = Vec::new();
    let mut expect = None;
    for d in docs {
        match d["kind"].as_str() {
            Some("IpcLink") => {
                // Metadata the API server sets (generation, deletionTimestamp) is read
                // leniently here; the spec goes through the strict parser.
                let mut strict = d.clone();
                strict["metadata"] = serde_json::json!({
                    "name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"]
                });
                let mut l = ipclink_core::parse_link_value(file, strict).expect("link");
                l.metadata = serde_json::from_value(d["metadata"].clone()).expect("metadata");
                link = Some(l);
            }
            Some("Pod") => pods.push(serde_json::from_value::<Pod>(d).expect("pod")),
            Some("Expect") => expect = Some(serde_json::from_value::<Expect>(d).expect("expect")),
            other => panic!("{file}: unexpected document kind {other:?}"),
        }
    }
    let (link, expect) = (link.expect("an IpcLink"), expect.expect("an Expect"));
    let views: Vec<PodView> = pods.iter().filter_map(|p| PodView::of(p, &link)).collect();
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let planned = plan(&link, &validate(&link), &views, &Observed::default(), &now);
    let status = &planned.status;
    let phase = format!("{:?}", status.phase.expect("phase"));
    assert_eq!(phase, expect.phase, "{file}: phase; status {status:#?}");
    if expect.node.is_some() {
        assert_eq!(status.node, expect.node, "{file}: node");
    }
    if let Some(nodes) = &expect.nodes {
        assert_eq!(&status.nodes, nodes, "{file}: nodes");
        assert_eq!(
            status.node_count,
            Some(nodes.len() as i32),
            "{file}: nodeCount"
        );
        assert_eq!(
            status.node, None,
            "{file}: a node-scoped link has no one node"
        );
    }
    if let Some(n) = expect.member_count {
        assert_eq!(status.member_count, Some(n), "{file}: memberCount");
    }
    if let Some(n) = expect.channel_count {
        assert_eq!(status.channel_count, Some(n), "{file}: channelCount");
    }
    for (type_, want) in &expect.conditions {
        let c = status
            .conditions
            .iter()
            .find(|c| &c.type_ == type_)
            .unwrap_or_else(|| panic!("{file}: no {type_} condition"));
        assert_eq!(
            (&c.status, &c.reason),
            (&want.status, &want.reason),
            "{file}: {type_}: {}",
            c.message
        );
        for m in &want.mentions {
            assert!(
                c.message.contains(m.as_str()),
                "{file}: {type_} message {:?} lacks {m:?}",
                c.message
            );
        }
        for m in &want.absent {
            assert!(
                !c.message.contains(m.as_str()),
                "{file}: {type_} message {:?} has {m:?}",
                c.message
            );
        }
    }
    let reasons: Vec<&str> = planned.notes.iter().map(|n| n.reason.as_str()).collect();
    assert_eq!(reasons, expect.events, "{file}: events {:?}", planned.notes);

    // Planning the planned status again changes nothing and says nothing new.
    let mut again = link.clone();
    again.status = Some(status.clone());
    let replanned = plan(
        &again,
        &validate(&again),
        &views,
        &Observed::default(),
        &now,
    );
    assert_eq!(
        &replanned.status, status,
        "{file}: plan is not a fixed point"
    );
    assert!(
        replanned.notes.is_empty(),
        "{file}: repeated events {:?}",
        replanned.notes
    );
}

#[test]
fn members_mounted_on_one_node_with_fitting_identities_are_ready() {
    run("ready.yaml");
}

#[test]
fn members_on_two_nodes_are_not_scheduled() {
    run("split-nodes.yaml");
}

#[test]
fn a_node_scoped_link_with_members_on_two_nodes_is_ready() {
    run("node-scoped.yaml");
}

#[test]
fn a_writer_whose_uid_cannot_write_is_named_with_its_channel() {
    run("writer-denied.yaml");
}

#[test]
fn readers_naming_no_member_make_the_link_invalid_naming_the_field() {
    run("invalid-reader.yaml");
}

#[test]
fn a_new_link_waits_for_members_without_warnings() {
    run("no-pods.yaml");
}

#[test]
fn deletion_with_a_mounted_member_is_terminating() {
    run("terminating.yaml");
}

#[test]
fn the_chart_crd_is_what_the_operator_prints() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/ipclink/files/crds/ipclinks.ipclink.dev.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("charts/ipclink/crds copy");
    assert!(
        committed == ipclink_operator::crd::crd_yaml().expect("the CRD serializes"),
        "charts/ipclink/files/crds/ipclinks.ipclink.dev.yaml drifted from `ipclink-operator crd`; regenerate it with\n  cargo run -p ipclink-operator -- crd > charts/ipclink/files/crds/ipclinks.ipclink.dev.yaml"
    );
}

#[test]
fn a_claim_on_an_impossible_storage_class_is_invalid() {
    run("invalid-claim.yaml");
}
