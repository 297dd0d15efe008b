//! Which pods a link's members select.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::spec::IpcLink;

/// Whether `selector` selects a pod with `labels` (Kubernetes semantics: every
/// matchLabels pair and every matchExpression must hold; an empty selector selects all).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Names of the members of `link` that select a pod with `labels`. A member without a
/// podSelector selects no pod (it exists for local and Compose use).
pub fn members_of(link: &IpcLink, labels: &BTreeMap<String, String>) -> Vec<String> {
    link.spec
        .members
        .iter()
        .filter(|m| m.pod_selector.as_ref().is_some_and(|s| selects(s, labels)))
        .map(|m| m.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "camera")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["test".into()]),
            }]),
        };
        assert!(selects(&sel, &labels(&[("app", "camera")])));
        assert!(!selects(
            &sel,
            &labels(&[("app", "camera"), ("tier", "test")])
        ));
        assert!(!selects(&sel, &labels(&[("app", "detector")])));
        assert!(selects(&LabelSelector::default(), &labels(&[])));
    }
}
