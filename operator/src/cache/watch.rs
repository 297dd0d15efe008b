//! Watches the controller keeps a cache of, and their reconnect backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};

/// A reflected watch of `api` whose objects are trimmed by `trim` before they are
/// stored: its store, a flag set once the store holds the first list, and the stream of
/// changed objects.
#[allow(clippy::type_complexity)]
pub fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (
    Store<K>,
    Arc<std::sync::atomic::AtomicBool>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = listed.clone();
    let stream = reflector(
        writer,
        watcher(api, config)
            .backoff(Reconnect::default())
            .modify(trim),
    )
    .inspect(move |e| mark_listed(e, &flag))
    .touched_objects();
    (store, listed, stream)
}

/// Sets `flag` once `event` ends a list, i.e. once the store it was applied to holds
/// the list. Not through `Store::wait_until_ready`: of two tasks waiting on one store
/// (the controller waits on its own) only the last one polled is woken.
pub fn mark_listed<K>(
    event: &Result<watcher::Event<K>, watcher::Error>,
    flag: &std::sync::atomic::AtomicBool,
) {
    if let Ok(watcher::Event::InitDone) = event {
        flag.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Reconnect backoff for every watch: 250 ms doubling to at most 4 s, reset by the
/// first event. kube's default climbs to 30 s, which leaves a restarted API server's
/// changes unseen for half a minute.
#[derive(Debug, Clone)]
pub struct Reconnect {
    next: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            next: Duration::from_millis(250),
        }
    }
}

impl Iterator for Reconnect {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(4));
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Reconnect {
    fn reset(&mut self) {
        *self = Reconnect::default();
    }
}
