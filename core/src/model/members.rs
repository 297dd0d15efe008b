//! Which pods a link's members select.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::spec::IpcLink;

/// A pod's labels, however they are kept.
pub trait Labels {
    /// The value of label `key`, if the pod has it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Whether `selector` selects a pod with `labels` (Kubernetes semantics: every
/// matchLabels pair and every matchExpression must hold; an empty selector selects all).
pub fn selects(selector: &LabelSelector, labels: &(impl Labels + ?Sized)) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.label(&e.key);
        let listed = |v: &str| values.iter().any(|x| x == v);
        match e.operator.as_str() {
            "In" => have.is_some_and(listed),
            "NotIn" => have.is_none_or(|v| !listed(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Names of the members of `link` that select a pod with `labels`. A member without a
/// podSelector selects no pod (it exists for local and Compose use); `podSelector: {}`
/// selects every pod of the link's namespace. A pod no member selects may not mount the
/// link: a link is closed unless it says whom it admits.
pub fn members_of(link: &IpcLink, labels: &(impl Labels + ?Sized)) -> Vec<String> {
    link.spec
        .members
        .iter()
        .filter(|m| m.pod_selector.as_ref().is_some_and(|s| selects(s, labels)))
        .map(|m| m.name.clone())
        .collect()
}

/// Whether any member of `link` has a podSelector (without one, a link admits no pod
/// in a cluster).
pub fn has_pod_selectors(link: &IpcLink) -> bool {
    link.spec.members.iter().any(|m| m.pod_selector.is_some())
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
