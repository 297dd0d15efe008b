//! The metric families of every component (DESIGN.md §3): names, help, labels, units.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::probe::LinkSample;

const CHANNEL_LABELS: &[&str] = &["namespace", "link", "channel", "kind"];
const LINK_LABELS: &[&str] = &["namespace", "link"];

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition is static and valid");
    registry
        .register(Box::new(g.clone()))
        .expect("each family is registered once");
    g
}

/// Channel, semaphore and link families, filled from [`LinkSample`]s.
#[derive(Debug, Clone)]
pub struct ChannelMetrics {
    registry: Registry,
    queue_bytes: IntGaugeVec,
    capacity_bytes: IntGaugeVec,
    backlog: IntGaugeVec,
    readers: IntGaugeVec,
    present: IntGaugeVec,
    sem_value: IntGaugeVec,
    sem_waiters: IntGaugeVec,
    shm_size: IntGaugeVec,
    shm_resident: IntGaugeVec,
    link_used: IntGaugeVec,
    link_limit: IntGaugeVec,
}

impl Default for ChannelMetrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}

impl ChannelMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        ChannelMetrics {
            queue_bytes: gauge(r, "ipclink_channel_queue_bytes", "Bytes queued in a channel and not yet read.", CHANNEL_LABELS),
            capacity_bytes: gauge(r, "ipclink_channel_capacity_bytes", "Bytes a channel can hold (pipe buffer, shm region size).", CHANNEL_LABELS),
            backlog: gauge(r, "ipclink_socket_backlog_connections", "Connections waiting in accept() on listening sockets of a socket channel.", CHANNEL_LABELS),
            readers: gauge(r, "ipclink_fifo_reader_present", "1 when a fifo has a reader, 0 when it has none.", CHANNEL_LABELS),
            present: gauge(r, "ipclink_channel_present", "1 when a declared channel or semaphore exists on disk.", CHANNEL_LABELS),
            sem_value: gauge(r, "ipclink_semaphore_value", "Current value of a named semaphore.", CHANNEL_LABELS),
            sem_waiters: gauge(r, "ipclink_semaphore_waiters", "Threads waiting on a named semaphore.", CHANNEL_LABELS),
            shm_size: gauge(r, "ipclink_shm_size_bytes", "Size of a shared-memory region.", CHANNEL_LABELS),
            shm_resident: gauge(r, "ipclink_shm_resident_bytes", "Memory held by a shared-memory region.", CHANNEL_LABELS),
            link_used: gauge(r, "ipclink_link_used_bytes", "Bytes used on a link's tmpfs.", LINK_LABELS),
            link_limit: gauge(r, "ipclink_link_limit_bytes", "Size limit of a link's tmpfs.", LINK_LABELS),
            registry,
        }
    }

    /// The registry holding the families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces every series with what `samples` show (links gone disappear).
    pub fn observe(&self, samples: &[LinkSample]) {
        for g in [
            &self.queue_bytes, &self.capacity_bytes, &self.backlog, &self.readers, &self.present,
            &self.sem_value, &self.sem_waiters, &self.shm_size, &self.shm_resident,
            &self.link_used, &self.link_limit,
        ] {
            g.reset();
        }
        let set = |g: &IntGaugeVec, labels: &[&str], v: Option<u64>| {
            if let Some(v) = v {
                g.with_label_values(labels).set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        for s in samples {
            let link = [s.namespace.as_str(), s.name.as_str()];
            set(&self.link_used, &link, Some(s.used_bytes));
            set(&self.link_limit, &link, Some(s.limit_bytes));
            for c in &s.channels {
                let l = [s.namespace.as_str(), s.name.as_str(), c.name.as_str(), c.kind.as_str()];
                set(&self.present, &l, Some(u64::from(c.present)));
                set(&self.queue_bytes, &l, c.queue_bytes);
                set(&self.readers, &l, c.reader_present.map(u64::from));
                set(&self.backlog, &l, c.backlog_connections);
                if c.kind == "shm" {
                    set(&self.shm_size, &l, c.capacity_bytes);
                    set(&self.shm_resident, &l, c.resident_bytes);
                } else {
                    set(&self.capacity_bytes, &l, c.capacity_bytes);
                }
            }
            for m in &s.semaphores {
                let l = [s.namespace.as_str(), s.name.as_str(), m.name.as_str(), "semaphore"];
                set(&self.present, &l, Some(u64::from(m.present)));
                set(&self.sem_value, &l, m.value.map(u64::from));
                set(&self.sem_waiters, &l, m.waiters.map(u64::from));
            }
        }
    }
}

/// CSI node/controller request families.
#[derive(Debug, Clone)]
pub struct CsiMetrics {
    /// `ipclink_csi_requests_total{method,code}`.
    pub requests: IntCounterVec,
    /// `ipclink_csi_request_duration_seconds{method}`.
    pub duration: HistogramVec,
}

impl CsiMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("ipclink_csi_requests_total", "CSI requests handled, by method and gRPC code."),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("ipclink_csi_request_duration_seconds", "Time to handle a CSI request.")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(CsiMetrics { requests, duration })
    }
}

/// Operator reconcile families.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// `ipclink_reconcile_total{result}`.
    pub reconciles: IntCounterVec,
    /// `ipclink_reconcile_duration_seconds`.
    pub duration: HistogramVec,
    /// `ipclink_links{phase}`.
    pub links: IntGaugeVec,
}

impl OperatorMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            Opts::new("ipclink_reconcile_total", "Reconciles of IpcLinks, by result."),
            &["result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("ipclink_reconcile_duration_seconds", "Time to reconcile one IpcLink."),
            &[],
        )?;
        let links = IntGaugeVec::new(Opts::new("ipclink_links", "IpcLinks by phase."), &["phase"])?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(links.clone()))?;
        Ok(OperatorMetrics { reconciles, duration, links })
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding our own families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
