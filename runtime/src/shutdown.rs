//! The process's one shutdown signal. [`Shutdown::install`] registers the SIGTERM and
//! SIGINT handlers once; every server, controller and loop gets a clone of the handle and
//! waits on it, so one signal stops them all and each drains in its own way.

use std::future::Future;

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown has begun.
#[derive(Debug, Clone)]
pub struct Shutdown {
    begun: watch::Receiver<bool>,
}

/// Begins a [`Shutdown`] made by [`Shutdown::manual`].
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Begins shutdown; every handle resolves.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers now (so a signal during start-up is not
    /// fatal) and returns the handle they fire. Needs a Tokio runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (trigger, shutdown) = Shutdown::manual();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
            trigger.fire();
        });
        Ok(shutdown)
    }

    /// A shutdown begun by hand through the returned [`Trigger`] (tests, and processes
    /// that end themselves).
    pub fn manual() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown { begun: rx })
    }

    /// Whether shutdown has begun.
    pub fn has_begun(&self) -> bool {
        *self.begun.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has). A trigger dropped
    /// without firing never begins it.
    pub async fn wait(&self) {
        let mut begun = self.begun.clone();
        if begun.wait_for(|b| *b).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// [`Shutdown::wait`] as an owned future, for APIs that take one
    /// (`serve_with_incoming_shutdown`, `graceful_shutdown_on`).
    pub fn signalled(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let this = self.clone();
        async move { this.wait().await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_resolves_after_the_trigger_fires() {
        let (trigger, shutdown) = Shutdown::manual();
        let other = shutdown.clone();
        assert!(!shutdown.has_begun());
        let waiting = tokio::spawn(other.signalled());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "resolved before the trigger fired");
        trigger.fire();
        waiting.await.expect("the waiting task");
        assert!(shutdown.has_begun());
        // A handle made after the fact resolves at once.
        shutdown.clone().wait().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_never_begins_shutdown() {
        let (trigger, shutdown) = Shutdown::manual();
        drop(trigger);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), shutdown.wait()).await;
        assert!(waited.is_err(), "shutdown began without a trigger");
    }
}
