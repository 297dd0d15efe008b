//! A link's record, next to the link directory (`<namespace>/.<name>.json`, never inside
//! what members see): the plan the link serves, what of its spec is pending and which
//! spec it was last given. Written temp file, fsync, rename, fsync dir.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::fs::{list_names, write_atomic_at};
use crate::model::validate::{LinkPlan, Problem};
use crate::store::{MaterializeError, Store};

/// A link's record: the plan it serves and what of its last spec is still pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The plan the link serves.
    #[serde(flatten)]
    pub plan: LinkPlan,
    /// What of its spec waits for the members to leave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Problem>,
    /// [`LinkPlan::digest`] of the spec last applied (which `plan` serves, but for what
    /// is pending).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
}

impl Store {
    /// Saves `plan` as the link's record (`<namespace>/.<name>.json`, next to the link
    /// directory, never inside what members see), with what is pending: temp file,
    /// fsync, rename, fsync dir.
    pub(crate) fn write_record(
        &self,
        plan: &LinkPlan,
        pending: &[Problem],
        spec: &str,
    ) -> Result<(), MaterializeError> {
        let lp = || {
            self.link_path(&plan.namespace, &plan.name)
                .display()
                .to_string()
        };
        let ns = self
            .open_namespace(&plan.namespace)
            .map_err(|errno| MaterializeError::Sys {
                path: lp(),
                op: "open",
                errno,
            })?;
        let record = Record {
            plan: plan.clone(),
            pending: pending.to_vec(),
            spec: spec.to_owned(),
        };
        let body = serde_json::to_vec_pretty(&record).unwrap_or_default();
        write_atomic_at(ns.as_fd(), &format!(".{}.json", plan.name), &body).map_err(|e| {
            MaterializeError::Sys {
                path: lp(),
                op: "write record",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            }
        })
    }

    /// Records that the link keeps serving what it serves while its spec `spec` waits
    /// for what `problems` name (a node budget it does not fit, say): the spec counts as
    /// seen, and what holds it back is pending, each naming its field.
    pub fn hold_back(&self, spec: &LinkPlan, problems: &[Problem]) -> Result<(), MaterializeError> {
        let served = self
            .record(&spec.namespace, &spec.name)
            .map(|r| r.plan)
            .ok_or_else(|| MaterializeError::Refused {
                path: self
                    .link_path(&spec.namespace, &spec.name)
                    .display()
                    .to_string(),
                message: "has no record: nothing is served to hold back".into(),
            })?;
        self.write_record(&served, problems, &spec.digest())
    }

    /// The record of link `namespace/name`, if it exists and can be read.
    pub fn record(&self, namespace: &str, name: &str) -> Option<Record> {
        let ns = self.open_namespace(namespace).ok()?;
        self.read_record(ns.as_fd(), name)
            .filter(|r| r.plan.namespace == namespace)
    }

    /// The record of link `name` in the namespace directory `ns`, if it can be read.
    pub(crate) fn read_record(&self, ns: BorrowedFd<'_>, name: &str) -> Option<Record> {
        let fd = openat(
            ns,
            format!(".{name}.json").as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let text = std::io::read_to_string(File::from(fd)).ok()?;
        serde_json::from_str::<Record>(&text)
            .ok()
            .filter(|r| r.plan.name == name)
    }

    /// Every link record under the base directory, in (namespace, name) order. Records
    /// that cannot be read are reported by their path.
    pub fn records(&self) -> (Vec<Record>, Vec<String>) {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for ns in list_names(self.base.as_fd()) {
            if crate::model::names::check_dns_label(&ns).is_err() {
                continue;
            }
            let Ok(ns_fd) = self.open_namespace(&ns) else {
                continue;
            };
            for entry in list_names(ns_fd.as_fd()) {
                let Some(name) = entry
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                let path = self.base_path.join(&ns).join(&entry).display().to_string();
                match self
                    .read_record(ns_fd.as_fd(), name)
                    .filter(|r| r.plan.namespace == ns)
                {
                    Some(r) => records.push(r),
                    None => bad.push(path),
                }
            }
        }
        records.sort_by(|a, b| {
            (&a.plan.namespace, &a.plan.name).cmp(&(&b.plan.namespace, &b.plan.name))
        });
        (records, bad)
    }
}
