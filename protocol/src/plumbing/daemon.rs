//! What every daemon binary shares: tracing set-up from `DISCOMY_LOG`, and shutdown on
//! SIGINT/SIGTERM through a [`CancellationToken`] (a second signal exits at once).

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Logs to stderr with the filter in `DISCOMY_LOG` (default `info`).
pub fn init_tracing() {
    let filter = std::env::var(super::env::LOG).unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process on the second.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            warn!("failed to install signal handlers");
            return;
        };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            count += 1;
            if count == 1 {
                info!("shutting down; send the signal again to stop at once");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}
