//! Reading `IpcLink` documents from multi-document YAML, strictly: an unknown field, a
//! wrong type or a wrong `apiVersion`/`kind` is an error that names the field.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::model::spec::{API_VERSION, IpcLink, IpcLinkSpec, KIND};
use crate::model::validate::{LinkPlan, Problem, Problems, validate};

/// The accepted shape of one document (stricter than what the API server stores).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LinkDocument {
    api_version: String,
    kind: String,
    metadata: LinkMetadata,
    spec: IpcLinkSpec,
    /// Tolerated so that `kubectl get -o yaml` output can be reused; never read.
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Parses every document of `text` (named `source` in errors) into links.
pub fn parse_links(source: &str, text: &str) -> Result<Vec<IpcLink>, Problems> {
    let docs = yaml_documents(source, text)?;
    let mut links = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = if i == 0 {
            source.to_owned()
        } else {
            format!("{source} (document {})", i + 1)
        };
        match parse_link_value(&at, doc) {
            Ok(link) => links.push(link),
            Err(Problems(p)) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(links)
    } else {
        Err(Problems(problems))
    }
}

/// Splits multi-document YAML into generic documents. serde-saphyr reports line and column
/// and enforces its budgets against alias bombs; the typed pass comes after, with paths.
pub fn yaml_documents(source: &str, text: &str) -> Result<Vec<serde_json::Value>, Problems> {
    serde_saphyr::from_multiple(text)
        .map_err(|e| Problems(vec![Problem::new(source, format!("malformed YAML: {e}"))]))
}

/// Parses one already-read YAML document (named `at` in errors) into a link.
pub fn parse_link_value(at: &str, doc: serde_json::Value) -> Result<IpcLink, Problems> {
    let d = match serde_path_to_error::deserialize::<_, LinkDocument>(doc) {
        Ok(d) => d,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return Err(Problems(vec![Problem::new(
                format!("{at}: {path}").trim_end_matches(": ").to_owned(),
                e.into_inner().to_string(),
            )]));
        }
    };
    let mut problems = Vec::new();
    if d.api_version != API_VERSION {
        problems.push(Problem::new(
            format!("{at}: apiVersion"),
            format!("{:?} is not served; use {API_VERSION:?}", d.api_version),
        ));
    }
    if d.kind != KIND {
        problems.push(Problem::new(
            format!("{at}: kind"),
            format!("{:?} is not handled; use {KIND:?}", d.kind),
        ));
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    let mut link = IpcLink::new(d.metadata.name.as_deref().unwrap_or(""), d.spec);
    link.metadata = ObjectMeta {
        name: d.metadata.name,
        namespace: d.metadata.namespace,
        labels: Some(d.metadata.labels).filter(|l| !l.is_empty()),
        annotations: Some(d.metadata.annotations).filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    };
    Ok(link)
}

/// Parses and validates several files; returns every problem of every file, or the plans
/// paired with their links. Two links with the same namespace and name are an error.
pub fn load_plans(files: &[(String, String)]) -> Result<Vec<(IpcLink, LinkPlan)>, Problems> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<crate::LinkKey, String> = BTreeMap::new();
    for (source, text) in files {
        match parse_links(source, text) {
            Err(Problems(p)) => problems.extend(p),
            Ok(links) => {
                for link in links {
                    let label =
                        format!("{source}: {}", link.metadata.name.as_deref().unwrap_or(""));
                    match validate(&link) {
                        Err(Problems(p)) => problems.extend(p.into_iter().map(|mut p| {
                            p.field = format!("{label}: {}", p.field);
                            p
                        })),
                        Ok(plan) => {
                            let key = plan.key();
                            if let Some(first) = seen.get(&key) {
                                problems.push(Problem::new(
                                    format!("{label}: metadata.name"),
                                    format!(
                                        "link {key} is also defined in {first}; each namespace/name once"
                                    ),
                                ));
                            } else {
                                seen.insert(key, source.clone());
                                out.push((link, plan));
                            }
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}
