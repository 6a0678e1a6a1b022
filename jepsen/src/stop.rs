//! The stop signal the run's tasks share: the time limit or Ctrl-C.

use std::time::Duration;

#[derive(Clone)]
pub struct Stop(pub tokio::sync::watch::Receiver<bool>);

impl Stop {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// Sleep up to `d`; true if the stop signal came first.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut rx = self.0.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_set(),
            _ = rx.wait_for(|s| *s) => true,
        }
    }
}
