//! Moving whole operations onto tokio's blocking pool.

use crate::Error;

/// Runs `f` on the blocking pool. A panic or cancellation there becomes [`Error::Blocking`].
pub(crate) async fn spawn<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Blocking {
            op,
            panicked: e.is_panic(),
        })
}

/// [`spawn`] for work that can fail.
pub(crate) async fn run<T, F>(op: &'static str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    spawn(op, f).await?
}
