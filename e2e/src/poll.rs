//! Waiting for eventual state with a deadline.

use std::time::{Duration, Instant};

/// How long tests wait for the servers to converge unless they say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long tests wait for kcp's own slow work (a workspace becoming ready
/// or going away, a binding, an export's endpoints), sized for a loaded
/// 2-core machine.
pub const KCP_SLOW_TIMEOUT: Duration = Duration::from_secs(300);

/// Calls `check` until it returns `Ok`, at most until `timeout` has passed.
/// `check` reports what it saw in its `Err`; on timeout the last report is
/// part of the error, so a failing test says what state it was stuck in.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last saw: {seen}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success() {
        let mut calls = 0;
        let value = poll_until("three calls", Duration::from_secs(5), async || {
            calls += 1;
            if calls < 3 {
                Err(format!("call {calls}"))
            } else {
                Ok(calls)
            }
        })
        .await
        .expect("succeeds on the third call");
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn timeout_reports_what_was_last_seen() {
        let error = poll_until("never", Duration::from_millis(300), async || {
            Err::<(), _>("phase Initializing".to_string())
        })
        .await
        .expect_err("never succeeds");
        let message = error.to_string();
        assert!(
            message.contains("never") && message.contains("phase Initializing"),
            "{message}"
        );
    }
}
