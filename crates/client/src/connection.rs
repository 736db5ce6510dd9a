//! Getting to a server: parsing `--server`, opening channels, the bearer
//! secret, fresh client message ids, and the reconnect backoff.

use std::time::Duration;

use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::{AuthedChatClient, Bearer};
use rand::Rng;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::error::{describe_error, Failure};

/// The port used when a server address names none.
pub const DEFAULT_PORT: u16 = 50050;
/// How long opening a TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The servers of a comma-separated `--server` value, as URLs.
pub fn parse_servers(spec: &str) -> Result<Vec<String>, Failure> {
    let servers = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(normalize_server)
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(Failure::usage("--server names no server"));
    }
    Ok(servers)
}

/// One server address as an `http://` URL: `:port` is on 127.0.0.1,
/// `host` alone gets the default port.
pub fn normalize_server(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim();
    let bad = |why: &str| Failure::usage(format!("invalid server address {raw:?}: {why}"));
    let url = if let Some(rest) = raw.strip_prefix("http://") {
        format!("http://{}", rest.trim_end_matches('/'))
    } else if raw.starts_with("https://") {
        return Err(bad("TLS is not supported by this client; use http://"));
    } else if raw.contains("://") {
        return Err(bad("only http:// is supported"));
    } else if let Some(port) = raw.strip_prefix(':') {
        format!("http://127.0.0.1:{port}")
    } else if has_port(raw) {
        format!("http://{raw}")
    } else {
        format!("http://{raw}:{DEFAULT_PORT}")
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    if let Some(port) = port_text(authority) {
        if port.parse::<u16>().is_err() {
            return Err(bad("the port must be a number from 0 to 65535"));
        }
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(bad("a server address has no path"));
    }
    Endpoint::from_shared(url.clone()).map_err(|e| bad(&describe_error(&e)))?;
    Ok(url)
}

/// `host:port` or `[v6]:port`.
fn has_port(raw: &str) -> bool {
    port_text(raw).is_some_and(|port| !port.is_empty())
}

/// What follows the host's `:`, if anything (`[v6]` hosts contain colons).
fn port_text(authority: &str) -> Option<&str> {
    let host_end = if authority.starts_with('[') {
        authority.find(']').unwrap_or(0)
    } else {
        0
    };
    authority[host_end..].rsplit_once(':').map(|(_, port)| port)
}

/// Connects to `url` now (not lazily), so an unreachable server is an
/// error here and not on the first call.
pub async fn open_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Notice a dead connection (a cable pulled, a VM paused) even when
        // the stream is idle.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
}

/// The first server of `servers` that accepts a connection, tried in order.
pub async fn first_reachable(servers: &[String]) -> Result<(String, Channel), Failure> {
    let mut errors = Vec::new();
    for url in servers {
        match open_channel(url).await {
            Ok(channel) => return Ok((url.clone(), channel)),
            Err(e) => errors.push(format!("{url}: {}", describe_error(&e))),
        }
    }
    Err(Failure::other(format!(
        "cannot reach the server ({})",
        errors.join("; ")
    )))
}

/// The interceptor that sends `secret`; a secret that cannot be a header
/// value was never issued by a server.
pub fn bearer(secret: &str) -> Result<Bearer, Failure> {
    Bearer::new(secret)
        .ok_or_else(|| Failure::auth("the secret contains characters a secret never has"))
}

/// A `ChatService` client that authenticates as the owner of `secret`.
pub fn chat_client(channel: Channel, secret: &str) -> Result<AuthedChatClient, Failure> {
    Ok(ChatServiceClient::with_interceptor(
        channel,
        bearer(secret)?,
    ))
}

/// A fresh `client_msg_id`: 128 random bits in hex.
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// Exponential backoff with jitter between reconnect attempts: 200 ms
/// doubling up to 5 s, each delay drawn from its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::MIN }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// After a successful connection: the next failure retries quickly.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_normalized() {
        let ok = [
            ("http://example.com:1234", "http://example.com:1234"),
            ("http://example.com:1234/", "http://example.com:1234"),
            ("example.com:1234", "http://example.com:1234"),
            (":7000", "http://127.0.0.1:7000"),
            ("localhost", "http://localhost:50050"),
            ("[::1]:9", "http://[::1]:9"),
            ("[::1]", "http://[::1]:50050"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_server(raw).unwrap(), want, "{raw}");
        }
        for bad in [
            "https://x:1",
            "ftp://x",
            ":notaport",
            "http://",
            "x:1/path",
            "a b:1",
        ] {
            let failure = normalize_server(bad).unwrap_err();
            assert_eq!(failure.exit, crate::Exit::Usage, "{bad}");
        }
    }

    #[test]
    fn server_lists() {
        assert_eq!(
            parse_servers(" :1, host:2 ,").unwrap(),
            ["http://127.0.0.1:1", "http://host:2"]
        );
        assert!(parse_servers(" , ").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Backoff::MIN / 2 && delays[0] <= Backoff::MIN);
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[7] >= Backoff::MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= Backoff::MIN);
    }

    #[test]
    fn client_msg_ids_are_fresh_and_valid() {
        let (a, b) = (new_client_msg_id(), new_client_msg_id());
        assert_ne!(a, b);
        assert!((1..=64).contains(&a.len()));
    }
}
