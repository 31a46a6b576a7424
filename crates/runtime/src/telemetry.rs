//! Logging: one `init` for every binary. Text or JSON lines on stderr; `log_filter` takes
//! `EnvFilter` directives and `RUST_LOG` overrides it. HTTP/2 and tower internals are quieted
//! to `warn` because at `info` they log every connection.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops (tests start many servers).
pub fn init(json: bool, filter: &str) {
    let directives = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{filter},h2=warn,tower=warn,hyper=warn"));
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
