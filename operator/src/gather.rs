//! Channel depths gathered from the node plugins' (or sidecars') `/v1/links` endpoints
//! and folded into `status.channels` at most once per interval per link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use ipclink_core::sample::LinkSample;
use ipclink_core::{IpcLink, LinkKey};
use ipclink_runtime::Shutdown;
use kube::runtime::reflector::ObjectRef;

use crate::plan::observed::{LinkDepths, channel_status, whole_seconds};

/// Latest channel depths per link, from the node plugins.
pub type Depths = Arc<Mutex<HashMap<LinkKey, LinkDepths>>>;

/// Where depths come from.
#[derive(Clone)]
pub struct Sources {
    /// (node, `[http://|https://]HOST:PORT`) of each endpoint given on the command line.
    pub endpoints: Vec<(String, String)>,
    /// Node plugin pods found each round: their API, label selector and metrics port;
    /// each running pod is gathered at `podIP:port` and labelled with its node.
    pub plugins: Option<(kube::Api<k8s_openapi::api::core::v1::Pod>, String, u16)>,
    /// Time between two rounds.
    pub interval: Duration,
    /// Time allowed for one endpoint.
    pub timeout: Duration,
    /// Endpoints asked at once.
    pub concurrency: usize,
    /// An endpoint's last figures are shown for this many intervals after it stopped
    /// answering; then they are shown as stale (objects without figures).
    pub stale_after: u32,
    /// How `https://` endpoints are reached.
    pub secure: Option<ipclink_runtime::client::Secure>,
    /// Node plugin pods are reached over https (else plain http).
    pub plugins_https: bool,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("endpoints", &self.endpoints)
            .field("plugins", &self.plugins.as_ref().map(|(_, s, p)| (s, p)))
            .finish_non_exhaustive()
    }
}

/// The endpoints of this round: the static ones, then the running node plugin pods, as
/// (node, address).
pub async fn endpoints(sources: &Sources) -> Vec<(String, String)> {
    let mut all = sources.endpoints.clone();
    if let Some((api, selector, port)) = &sources.plugins {
        match api
            .list(&kube::api::ListParams::default().labels(selector))
            .await
        {
            Ok(pods) => all.extend(pods.items.into_iter().filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                let status = p.status.as_ref()?;
                let ip = status.pod_ip.clone()?;
                (status.phase.as_deref() == Some("Running")).then(|| {
                    let scheme = if sources.plugins_https {
                        "https://"
                    } else {
                        ""
                    };
                    let addr = if ip.contains(':') {
                        format!("{scheme}[{ip}]:{port}")
                    } else {
                        format!("{scheme}{ip}:{port}")
                    };
                    (node, addr)
                })
            })),
            Err(e) => tracing::warn!(selector, error = %e, "cannot list node plugin pods"),
        }
    }
    all
}

/// One GET of `/v1/links` from `endpoint` (`https://` ones with `sources.secure`): its
/// links.
pub async fn fetch(endpoint: &str, sources: &Sources) -> anyhow::Result<Vec<LinkSample>> {
    let secure = sources.secure.as_ref();
    Ok(
        ipclink_runtime::client::links(endpoint, secure, sources.timeout)
            .await?
            .links,
    )
}

/// What one endpoint last answered.
#[derive(Debug, Clone)]
struct Answer {
    when: Instant,
    /// What the status shows of each link it reported (kept rather than the samples,
    /// which also carry paths, holders and modes: a tenth of the memory).
    links: Vec<(LinkKey, LinkDepths)>,
}

/// The figures of one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Endpoints that answered.
    pub answered: usize,
    /// Endpoints that did not answer; their last figures are still shown.
    pub failed: usize,
    /// Endpoints that have not answered for `stale_after` intervals.
    pub stale: usize,
    /// How long the round took.
    pub took: Duration,
}

/// Asks every endpoint, `concurrency` at a time, and folds the answers into `answers`
/// (an endpoint that does not answer keeps its last answer; one that is gone is
/// forgotten). Returns the depths of every link and the round's figures.
async fn gather(
    sources: &Sources,
    answers: &mut HashMap<String, Answer>,
) -> (HashMap<LinkKey, LinkDepths>, Round) {
    let start = Instant::now();
    let endpoints = endpoints(sources).await;
    let results: Vec<(String, String, anyhow::Result<Vec<LinkSample>>)> =
        futures::stream::iter(endpoints)
            .map(|(node, endpoint)| async move {
                let r = fetch(&endpoint, sources).await;
                (node, endpoint, r)
            })
            .buffer_unordered(sources.concurrency.max(1))
            .collect()
            .await;
    let mut round = Round::default();
    let mut listed = std::collections::HashSet::new();
    for (node, endpoint, result) in results {
        listed.insert(endpoint.clone());
        match result {
            Ok(links) => {
                round.answered += 1;
                // Whole seconds, as the API server keeps it: a finer stamp would differ
                // from its own stored copy at every reconcile.
                let at = whole_seconds(Time(k8s_openapi::jiff::Timestamp::now()));
                let links = links
                    .iter()
                    .map(|l| {
                        let mut d = channel_status(l);
                        d.observed = Some(at.clone());
                        (LinkKey::new(&*l.namespace, &*l.name), d)
                    })
                    .collect();
                answers.insert(
                    endpoint,
                    Answer {
                        when: Instant::now(),
                        links,
                    },
                );
            }
            Err(e) => {
                round.failed += 1;
                tracing::debug!(node, endpoint, error = %e, "cannot gather depths");
            }
        }
    }
    answers.retain(|e, _| listed.contains(e));
    let stale_after = sources.interval * sources.stale_after.max(1);
    let mut next = HashMap::new();
    for answer in answers.values() {
        let stale = answer.when.elapsed() > stale_after;
        round.stale += usize::from(stale);
        for (key, d) in &answer.links {
            let d = d.clone();
            next.insert(key.clone(), if stale { d.into_stale() } else { d });
        }
    }
    round.took = start.elapsed();
    (next, round)
}

/// Gathers every `interval` until shutdown; links whose figures changed are sent on
/// `changed` (their next status write carries them). `rounds` gets each round's figures.
pub async fn run(
    sources: Sources,
    depths: Depths,
    changed: futures::channel::mpsc::Sender<ObjectRef<IpcLink>>,
    rounds: impl Fn(Round) + Send,
    shutdown: Shutdown,
) {
    let mut changed = changed;
    let mut answers = HashMap::new();
    let mut tick = tokio::time::interval(sources.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let (mut next, round) = gather(&sources, &mut answers).await;
        if round.failed > 0 {
            tracing::warn!(
                failed = round.failed,
                stale = round.stale,
                answered = round.answered,
                "some node plugins did not answer with depths"
            );
        }
        rounds(round);
        let wake: Vec<ObjectRef<IpcLink>> = {
            let mut current = depths.lock().unwrap_or_else(|p| p.into_inner());
            let mut wake = Vec::new();
            for (k, v) in &mut next {
                match current.get(k) {
                    // Same figures: keep when they were first seen, wake nobody.
                    Some(old) if old.same_figures(v) => v.observed = old.observed.clone(),
                    _ => wake.push(ObjectRef::new(&k.name).within(&k.namespace)),
                }
            }
            *current = next;
            wake
        };
        for r in wake {
            if futures::SinkExt::send(&mut changed, r).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A `/v1/links` endpoint on loopback answering `body` to each request (or, with
    /// `None`, accepting connections and never answering).
    fn endpoint(body: Option<String>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                match &body {
                    Some(body) => {
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf);
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    None => held.push(conn),
                }
            }
        });
        addr
    }

    fn links_body(link: &str, queued: u64) -> String {
        let sample = LinkSample {
            namespace: "ns".into(),
            name: link.into(),
            channels: vec![ipclink_core::sample::ChannelSample {
                info: Arc::new(ipclink_core::sample::ObjectInfo {
                    name: "events".into(),
                    kind: "fifo".into(),
                    ..Default::default()
                }),
                present: true,
                queue_bytes: Some(queued),
                ..Default::default()
            }],
            ..LinkSample::default()
        };
        serde_json::to_string(&ipclink_core::report::LinksReport {
            links: vec![sample],
            members: Vec::new(),
        })
        .expect("json")
    }

    #[tokio::test]
    async fn a_silent_endpoint_keeps_its_figures_then_shows_them_stale() {
        let good = endpoint(Some(links_body("a", 7)));
        let silent = endpoint(None);
        let mut sources = Sources {
            endpoints: vec![("n1".into(), good.clone()), ("n2".into(), silent.clone())],
            plugins: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            concurrency: 8,
            stale_after: 3,
            secure: None,
            plugins_https: false,
        };
        let mut answers = HashMap::new();
        let (first, round) = gather(&sources, &mut answers).await;
        assert_eq!((round.answered, round.failed, round.stale), (1, 1, 0));
        let a = first.get(&LinkKey::new("ns", "a")).expect("link a");
        assert_eq!(a.channels[0].queue_bytes, Some(7));
        assert!(!a.stale && a.observed.is_some());

        // n1 stops answering: its figures stay until stale_after intervals passed …
        sources.endpoints = vec![("n1".into(), silent.clone())];
        answers.insert(silent.clone(), answers[&good].clone());
        let (kept, round) = gather(&sources, &mut answers).await;
        assert_eq!((round.answered, round.failed, round.stale), (0, 1, 0));
        assert_eq!(
            kept[&LinkKey::new("ns", "a")].channels[0].queue_bytes,
            Some(7)
        );
        // … then they are shown stale: the channel stays, its figure goes.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (stale, round) = gather(&sources, &mut answers).await;
        assert_eq!((round.answered, round.failed, round.stale), (0, 1, 1));
        let a = &stale[&LinkKey::new("ns", "a")];
        assert!(a.stale);
        assert_eq!(a.channels[0].name, "events");
        assert_eq!(a.channels[0].queue_bytes, None);
        assert!(!a.same_figures(&kept[&LinkKey::new("ns", "a")]));
    }

    #[tokio::test]
    async fn endpoints_are_asked_concurrently_within_the_timeout() {
        let mut endpoints = Vec::new();
        for i in 0..40 {
            let body = (i % 10 != 0).then(|| links_body(&format!("l{i}"), i));
            endpoints.push((format!("n{i}"), endpoint(body)));
        }
        let sources = Sources {
            endpoints,
            plugins: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            concurrency: 64,
            stale_after: 3,
            secure: None,
            plugins_https: false,
        };
        let (links, round) = gather(&sources, &mut HashMap::new()).await;
        assert_eq!((round.answered, round.failed), (36, 4));
        assert_eq!(links.len(), 36);
        // Four silent endpoints one after another would take 2 s.
        assert!(round.took < Duration::from_millis(1500), "{:?}", round.took);
    }
}
