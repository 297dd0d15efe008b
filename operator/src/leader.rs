//! Leader election among operator replicas through a `coordination.k8s.io` Lease.
//!
//! Only the leader reconciles, provisions and gathers depths; every replica serves
//! metrics and health from the start. A leader that cannot renew its Lease (another
//! replica took it, or the API server did not answer before it expired) exits at once,
//! as the Kubernetes controllers do: the kubelet restarts it as a standby, and nothing
//! runs twice. On SIGTERM the leader finishes its reconciles and releases the Lease, so
//! a standby takes over without waiting for it to expire.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};

/// How to elect.
#[derive(Debug, Clone)]
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Seconds a Lease is valid without renewal.
    pub duration_seconds: u64,
}

impl Election {
    /// Seconds before expiry at which the leader renews: a third of the duration, so a
    /// renewal has two thirds of it to be retried before a standby may take over.
    fn grace_seconds(&self) -> u64 {
        (self.duration_seconds / 3).max(1)
    }
}

/// A replica that holds the Lease.
pub struct Leadership {
    manager: LeaseManager,
    identity: String,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// How often a standby reads the Lease again. The manager alone would sleep until the
/// Lease it saw expires; reading again notices a Lease released by a leader that
/// stopped cleanly, as client-go's retry period does.
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until this replica holds the Lease (`Some`) or `stop` resolves first (`None`).
pub async fn acquire(
    client: Client,
    election: &Election,
    stop: impl Future<Output = ()>,
) -> Option<Leadership> {
    tracing::info!(
        lease = %format!("{}/{}", election.namespace, election.lease),
        identity = %election.identity,
        "standing by until this replica holds the leader Lease"
    );
    tokio::pin!(stop);
    loop {
        let manager = LeaseManager::new(
            client.clone(),
            &election.lease,
            &election.namespace,
            LeaseParams::new(
                election.identity.clone(),
                election.duration_seconds,
                election.grace_seconds(),
            ),
            LeaseCreateMode::AutoCreate,
        );
        let attempt = async {
            let manager = manager.await?;
            match tokio::time::timeout(RETRY, manager.changed()).await {
                Ok(Ok(true)) => Ok(Some(manager)),
                Ok(Ok(false)) | Err(_) => Ok(None),
                Ok(Err(e)) => Err(e),
            }
        };
        tokio::select! {
            () = &mut stop => return None,
            r = attempt => match r {
                Ok(Some(manager)) => {
                    tracing::info!(identity = %election.identity, "this replica is the leader");
                    return Some(Leadership {
                        manager,
                        identity: election.identity.clone(),
                    });
                }
                Ok(None) => {}
                // Not leading yet: an API error only delays the election.
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        lease = %format!("{}/{}", election.namespace, election.lease),
                        "cannot take part in the election (the operator needs get, create and patch on leases.coordination.k8s.io); retrying"
                    );
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    }
}

impl Leadership {
    /// Renews the Lease until `stop` resolves, then releases it. Returns `Err` as soon
    /// as the Lease is lost or cannot be renewed: the caller must stop leading at once.
    pub async fn hold(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let lost = tokio::select! {
            () = &mut stop => None,
            held = self.manager.changed() => Some(match held {
                Ok(_) => anyhow::anyhow!("another replica holds the leader Lease now"),
                Err(e) => anyhow::anyhow!("the leader Lease could not be renewed: {e}"),
            }),
        };
        match lost {
            Some(e) => Err(e),
            None => {
                if let Err(e) = self.manager.release().await {
                    tracing::warn!(error = %e, "cannot release the leader Lease; it expires by itself");
                } else {
                    tracing::info!(identity = %self.identity, "released the leader Lease");
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_leaves_two_thirds_of_the_lease_for_retries() {
        let e = |d| Election {
            namespace: "ns".into(),
            lease: "l".into(),
            identity: "i".into(),
            duration_seconds: d,
        };
        assert_eq!(e(15).grace_seconds(), 5);
        assert_eq!(e(2).grace_seconds(), 1);
        assert!(
            e(2).grace_seconds() < 2,
            "grace must stay below the duration"
        );
    }
}
