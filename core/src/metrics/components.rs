//! The registries of the CSI plugin and the operator: their own families, beside the
//! channel families every probe renders.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

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
            Opts::new(
                "ipclink_csi_requests_total",
                "CSI requests handled, by method and gRPC code.",
            ),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ipclink_csi_request_duration_seconds",
                "Time to handle a CSI request.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
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
    /// `ipclink_reconcile_errors_total{error}`: failed reconciles by the error's category.
    pub errors: IntCounterVec,
    /// `ipclink_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `ipclink_links{phase}`.
    pub links: IntGaugeVec,
    /// `ipclink_status_writes_total`: status patches this replica sent.
    pub status_writes: IntCounter,
    /// `ipclink_operator_leader`: 1 while this replica leads (or runs alone), else 0.
    pub leader: IntGauge,
    /// `ipclink_depth_round_duration_seconds`: one gathering of depths from every node
    /// plugin (no label; absent until this replica gathers depths, so a standby does not
    /// export an empty one).
    pub depth_rounds: HistogramVec,
    /// `ipclink_depth_endpoints{state}`: node plugins that answered, failed or are
    /// stale in the last round (absent until depths are gathered).
    pub depth_endpoints: IntGaugeVec,
}

impl OperatorMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "ipclink_reconcile_total",
                "Reconciles of IpcLinks, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ipclink_reconcile_errors_total",
                "Reconciles of IpcLinks that failed, by the category of the error.",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "ipclink_reconcile_duration_seconds",
                "Time to reconcile one IpcLink.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let links = IntGaugeVec::new(Opts::new("ipclink_links", "IpcLinks by phase."), &["phase"])?;
        let status_writes = IntCounter::new(
            "ipclink_status_writes_total",
            "IpcLink status patches sent by this operator replica.",
        )?;
        let leader = IntGauge::new(
            "ipclink_operator_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), 0 while it stands by.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(links.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        let depth_rounds = HistogramVec::new(
            HistogramOpts::new(
                "ipclink_depth_round_duration_seconds",
                "Time to gather depths from every node plugin once.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &[],
        )?;
        let depth_endpoints = IntGaugeVec::new(
            Opts::new(
                "ipclink_depth_endpoints",
                "Node plugins in the last depth round: answered, failed (last figures still shown) or stale (figures no longer shown).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(depth_rounds.clone()))?;
        registry.register(Box::new(depth_endpoints.clone()))?;
        Ok(OperatorMetrics {
            depth_rounds,
            depth_endpoints,
            reconciles,
            errors,
            duration,
            links,
            status_writes,
            leader,
        })
    }
}
