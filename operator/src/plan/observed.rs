//! What the node plugins observed of a link, as its status shows it: the input of
//! [`super::plan`] that the gatherer (`crate::gather`) fills.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use ipclink_core::model::spec::ChannelStatus;
use ipclink_core::sample::LinkSample;

/// Most objects members created that a link's status lists (the metrics list up to
/// 1,000; a status is read by people and stored in etcd).
pub const MAX_CREATED_IN_STATUS: usize = 64;

/// The depths of one link as its status shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkDepths {
    /// Every declared object, then at most [`MAX_CREATED_IN_STATUS`] created ones.
    pub channels: Vec<ChannelStatus>,
    /// How many objects members created, in all.
    pub created: u64,
    /// When the node plugin first reported these figures.
    pub observed: Option<Time>,
    /// The node plugin stopped answering: `channels` carry no figures.
    pub stale: bool,
    /// What of the spec waits for the members to leave, as the node reports it.
    pub pending: Vec<ipclink_core::Problem>,
    /// The digest of the spec the node last applied, when it says.
    pub spec: Option<String>,
}

impl LinkDepths {
    /// The same figures, whenever they were observed.
    pub(crate) fn same_figures(&self, other: &LinkDepths) -> bool {
        (
            &self.channels,
            self.created,
            self.stale,
            &self.pending,
            &self.spec,
        ) == (
            &other.channels,
            other.created,
            other.stale,
            &other.pending,
            &other.spec,
        )
    }

    /// These depths once their endpoint has not answered for too long: the objects
    /// stay listed, their figures go (never shown as 0).
    pub(crate) fn into_stale(mut self) -> LinkDepths {
        for c in &mut self.channels {
            c.queue_bytes = None;
            c.value = None;
        }
        self.stale = true;
        self
    }
}

/// A channel's name as the status shows it: a name a member chose, printable
/// (`kubectl describe` prints the status raw).
fn shown(info: &ipclink_core::sample::ObjectInfo) -> String {
    if info.discovered {
        ipclink_core::report::printable(&info.name).into_owned()
    } else {
        info.name.clone()
    }
}

/// What a link's status shows of a sample.
pub fn channel_status(sample: &LinkSample) -> LinkDepths {
    let channels = sample.channels.iter().map(|c| ChannelStatus {
        name: shown(&c.info),
        kind: c.info.kind.clone(),
        // A region's size or resident memory is no queue: shm has no depth here.
        queue_bytes: c.queue_bytes,
        value: None,
        discovered: c.info.discovered,
    });
    let semaphores = sample.semaphores.iter().map(|s| ChannelStatus {
        name: shown(&s.info),
        kind: s.info.kind.clone(),
        queue_bytes: None,
        value: s.value,
        discovered: s.info.discovered,
    });
    let (created, declared): (Vec<_>, Vec<_>) =
        channels.chain(semaphores).partition(|c| c.discovered);
    // A walk the node cut short leaves the count unknown: absent, not too small.
    let total = if sample.walk_truncated {
        0
    } else {
        created.len() as u64 + sample.unreported_objects
    };
    let mut channels = declared;
    channels.extend(created.into_iter().take(MAX_CREATED_IN_STATUS));
    LinkDepths {
        channels,
        created: total,
        observed: None,
        stale: false,
        pending: sample.pending.clone(),
        spec: sample.spec.clone(),
    }
}

/// `t` without its fraction of a second, as the API server stores and returns it.
pub fn whole_seconds(t: Time) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.0.as_second()).unwrap_or(t.0))
}
