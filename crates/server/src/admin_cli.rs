//! `chat-server admin …`: operates a running server through its admin HTTP
//! API (part of the binary, not of the library).
//!
//! ```text
//! chat-server admin users list [--after USERNAME] [--limit N]
//! chat-server admin users revoke <username>
//! chat-server admin sessions [--node NODE] [--user USERNAME]
//! chat-server admin nodes
//! chat-server admin dead-letters list [--limit N] [--after ID] [--pending]
//! chat-server admin dead-letters show <id>
//! chat-server admin dead-letters replay <id>
//! chat-server admin dead-letters replay-all
//! chat-server admin dead-letters purge [--before <unix ms | RFC 3339>] [--replayed]
//! ```
//!
//! Results go to stdout, one per line, tab-separated, errors to stderr as
//! `error: …`. Exit codes: 0 ok, 1 failure (server unreachable, not
//! replayable, not delivered), 2 usage, 3 unauthorized (no or wrong admin
//! token), 4 not found (no such user or dead letter, or the server has no
//! admin API).
//!
//! Requests go through `reqwest` and the answers are read into the
//! server's own body types (`chat_server::http::types`). `https://`
//! addresses are verified against the system's roots, or only the CA of
//! `--ca-cert`; a certificate that does not verify is refused, never
//! retried in plaintext.

use std::process::ExitCode;
use std::time::Duration;

use chat_server::http::types::{
    rfc3339, DeadLetterDetail, DeadLetterPage, Envelope, NodeList, Purged, ReplayBatch,
    ReplayOutcome, ReplayResult, Revoked, SessionList, UserPage,
};
use chat_server::http::MAX_SESSIONS;
use clap::{Args, Subcommand};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

/// How long one request may take (a replay batch included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;
/// Letters (and users) asked for per request.
const PAGE: u64 = 200;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's HTTP address (`https://host:port`, `http://host:port`,
    /// `host:port` or `:port`, the last two plaintext).
    #[arg(
        long,
        env = "CHAT_ADMIN_HTTP",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    http: String,
    /// The server's admin token.
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true, global = true)]
    admin_token: Option<String>,
    /// Trust only this CA certificate (PEM) for an `https://` server
    /// instead of the system's roots: a private CA or a self-signed
    /// certificate.
    #[arg(long, env = "CHAT_ADMIN_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Registered users, and revoking a user's secret.
    #[command(subcommand)]
    Users(UserCommand),
    /// Who is connected to which server:
    /// `<username>\t<node>\t<session>`, sorted.
    Sessions {
        /// Only the sessions on this server (node id).
        #[arg(long)]
        node: Option<String>,
        /// Only the sessions of this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// The servers alive in the cluster:
    /// `<node>\t<gRPC address>\t<HTTP address>\t<started>\t<last heartbeat>`.
    Nodes,
    /// The dead-letter queue: delivery records the servers could not
    /// process.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Users by username: `<username>\t<name>\t<created>`.
    List {
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<u64>,
        /// Only those after this username.
        #[arg(long)]
        after: Option<String>,
    },
    /// Replaces the user's secret with a new one, printed to be handed to
    /// the user, and ends every stream opened with the old one.
    Revoke { username: String },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// Dead letters, oldest first: `<id>\t<created>\t<node>\t<reason>`.
    List {
        /// At most this many (default: all).
        #[arg(long)]
        limit: Option<u64>,
        /// Only those after this id.
        #[arg(long)]
        after: Option<u64>,
        /// Only those not replayed yet.
        #[arg(long)]
        pending: bool,
    },
    /// One dead letter with its payload.
    Show { id: u64 },
    /// Delivers one dead letter again.
    Replay { id: u64 },
    /// Delivers every pending dead letter that can be decoded:
    /// `<id>\t<outcome>\t<detail>` each.
    ReplayAll,
    /// Deletes dead letters (all, unless narrowed); prints how many.
    Purge {
        /// Only those created before this time: Unix milliseconds or
        /// RFC 3339 (`2025-01-31T12:00:00Z`).
        #[arg(long)]
        before: Option<String>,
        /// Only those already replayed.
        #[arg(long)]
        replayed: bool,
    },
}

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub async fn run(args: AdminArgs) -> ExitCode {
    match dispatch(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(args: AdminArgs) -> Result<(), Failure> {
    let token = args.admin_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Failure::new(
            2,
            "the admin token is required: --admin-token or CHAT_ADMIN_TOKEN",
        )
    })?;
    let api = Api::new(&args.http, token, args.ca_cert.as_deref())?;
    let command = match args.command {
        AdminCommand::Users(UserCommand::List { limit, after }) => {
            return list_users(&api, limit, after).await
        }
        AdminCommand::Users(UserCommand::Revoke { username }) => {
            return revoke(&api, &username).await
        }
        AdminCommand::Sessions { node, user } => {
            return sessions(&api, node.as_deref(), user.as_deref()).await
        }
        AdminCommand::Nodes => return nodes(&api).await,
        AdminCommand::DeadLetters(command) => command,
    };
    match command {
        DeadLetterCommand::List {
            limit,
            after,
            pending,
        } => list(&api, limit, after, pending).await,
        DeadLetterCommand::Show { id } => show(&api, id).await,
        DeadLetterCommand::Replay { id } => {
            let url = api.url(&["admin", "dead-letters", &id.to_string(), "replay"]);
            let result: ReplayResult = api.call(Method::POST, url).await?;
            println!("{}", result_line(&result));
            Ok(())
        }
        DeadLetterCommand::ReplayAll => replay_all(&api).await,
        DeadLetterCommand::Purge { before, replayed } => {
            let mut url = api.url(&["admin", "dead-letters"]);
            url.query_pairs_mut()
                .append_pair("replayed", &replayed.to_string());
            if let Some(before) = before {
                let ms = unix_ms(&before).map_err(|e| Failure::new(2, e))?;
                url.query_pairs_mut().append_pair("before", &ms.to_string());
            }
            let done: Purged = api.call(Method::DELETE, url).await?;
            println!("{}", done.purged);
            Ok(())
        }
    }
}

async fn list_users(api: &Api, limit: Option<u64>, after: Option<String>) -> Result<(), Failure> {
    let mut after = after;
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let mut url = api.url(&["admin", "users"]);
        url.query_pairs_mut()
            .append_pair("limit", &left.min(PAGE).to_string());
        if let Some(after) = &after {
            url.query_pairs_mut().append_pair("after", after);
        }
        let page: UserPage = api.call(Method::GET, url).await?;
        for user in &page.users {
            println!(
                "{}\t{}\t{}",
                text(&user.username),
                text(&user.name),
                text(&user.created_at),
            );
        }
        left = left.saturating_sub(page.users.len() as u64);
        if page.users.is_empty() || !page.has_more || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    Ok(())
}

async fn revoke(api: &Api, username: &str) -> Result<(), Failure> {
    let url = api.url(&["admin", "users", username, "revoke"]);
    let done: Revoked = api.call(Method::POST, url).await?;
    // The secret alone on stdout, for scripts; the rest is for people.
    println!("{}", text(&done.secret));
    eprintln!(
        "the secret of {} was replaced; streams opened with the old one were told to end \
         (sessions on the answering server: {}, other servers: {})",
        text(&done.username),
        done.local_sessions,
        joined(&done.nodes),
    );
    let undelivered: Vec<String> = done.undelivered.iter().map(|u| text(u)).collect();
    if !undelivered.is_empty() {
        return Err(Failure::new(
            1,
            format!(
                "the secret was replaced (above), but the revocation did not reach every \
                 server, where streams opened with the old secret stay open until its dead \
                 letter is replayed: {}",
                undelivered.join("; ")
            ),
        ));
    }
    Ok(())
}

async fn sessions(api: &Api, node: Option<&str>, user: Option<&str>) -> Result<(), Failure> {
    let mut url = api.url(&["admin", "sessions"]);
    url.query_pairs_mut()
        .append_pair("limit", &MAX_SESSIONS.to_string());
    if let Some(node) = node {
        url.query_pairs_mut().append_pair("node", node);
    }
    if let Some(user) = user {
        url.query_pairs_mut().append_pair("user", user);
    }
    let list: SessionList = api.call(Method::GET, url).await?;
    for session in &list.sessions {
        println!(
            "{}\t{}\t{}",
            text(&session.username),
            text(&session.node),
            session.session,
        );
    }
    if list.truncated {
        eprintln!(
            "more than {MAX_SESSIONS} sessions: only some are listed; narrow with --node or --user"
        );
    }
    Ok(())
}

async fn nodes(api: &Api) -> Result<(), Failure> {
    let list: NodeList = api.call(Method::GET, api.url(&["admin", "nodes"])).await?;
    for node in &list.nodes {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            text(&node.node),
            text(&node.grpc_addr),
            text(&node.http_addr),
            text(&node.started_at),
            text(&node.heartbeat_at),
        );
    }
    Ok(())
}

async fn list(
    api: &Api,
    limit: Option<u64>,
    after: Option<u64>,
    pending: bool,
) -> Result<(), Failure> {
    let mut after = after;
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let mut url = api.url(&["admin", "dead-letters"]);
        url.query_pairs_mut()
            .append_pair("limit", &left.min(PAGE).to_string())
            .append_pair("pending", &pending.to_string());
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        let page: DeadLetterPage = api.call(Method::GET, url).await?;
        for letter in &page.dead_letters {
            println!(
                "{}\t{}\t{}\t{}",
                letter.id,
                text(&letter.created_at),
                text(&letter.node),
                text(&letter.reason),
            );
        }
        left = left.saturating_sub(page.dead_letters.len() as u64);
        if page.dead_letters.is_empty() || !page.has_more || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    Ok(())
}

async fn show(api: &Api, id: u64) -> Result<(), Failure> {
    let url = api.url(&["admin", "dead-letters", &id.to_string()]);
    let shown: DeadLetterDetail = api.call(Method::GET, url).await?;
    let letter = &shown.letter;
    println!("id: {}", letter.id);
    println!("created: {}", text(&letter.created_at));
    println!("node: {}", text(&letter.node));
    println!("reason: {}", text(&letter.reason));
    let replayed = letter
        .replayed_at_unix_ms
        .map_or_else(|| "never".to_owned(), time);
    println!("replayed: {replayed}");
    println!("replay_attempts: {}", letter.replay_attempts);
    println!("payload_bytes: {}", letter.payload_bytes);
    match &shown.payload_text {
        Some(payload) => println!("payload (text):\n{payload}"),
        None => println!("payload (hex):\n{}", text(&shown.payload_hex)),
    }
    Ok(())
}

async fn replay_all(api: &Api) -> Result<(), Failure> {
    let mut after: Option<u64> = None;
    let mut failed = 0;
    loop {
        let mut url = api.url(&["admin", "dead-letters", "replay"]);
        url.query_pairs_mut()
            .append_pair("limit", &PAGE.to_string());
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        let batch: ReplayBatch = api.call(Method::POST, url).await?;
        for result in &batch.results {
            println!("{}", result_line(result));
        }
        failed += batch.failed;
        if failed > 0 || batch.results.is_empty() || !batch.has_more || batch.next_after <= after {
            break;
        }
        after = batch.next_after;
    }
    if failed > 0 {
        return Err(Failure::new(
            1,
            "a dead letter could not be delivered now (see above); the rest were not tried",
        ));
    }
    Ok(())
}

/// `<id>\t<outcome>\t<detail>` of one replay.
fn result_line(result: &ReplayResult) -> String {
    let (outcome, detail) = match &result.outcome {
        ReplayOutcome::Replayed {
            local_sessions,
            nodes,
        } => (
            "replayed",
            format!("local sessions: {local_sessions}, nodes: {}", joined(nodes)),
        ),
        ReplayOutcome::NotReplayable { reason } => ("not_replayable", text(reason)),
        ReplayOutcome::Failed { reason } => ("failed", text(reason)),
    };
    format!("{}\t{outcome}\t{detail}", result.id)
}

/// Names joined with commas, `-` for none.
fn joined(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.iter().map(|n| text(n)).collect::<Vec<_>>().join(",")
    }
}

/// Text on one line (tabs and newlines would break the columns).
fn text(value: &str) -> String {
    value.replace(['\t', '\n', '\r'], " ")
}

/// A time for people: RFC 3339, or the Unix milliseconds if out of range.
fn time(unix_ms: i64) -> String {
    Some(rfc3339(unix_ms))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// `--before`: Unix milliseconds or RFC 3339.
fn unix_ms(value: &str) -> Result<i64, String> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("--before {value:?}: expected Unix milliseconds or RFC 3339"))
}

/// The scheme and `host:port` of `http[s]://host:port[/]`, `host:port` or
/// `:port` (the last two plaintext).
fn authority(url: &str) -> Result<(&'static str, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some(_) => return Err(format!("--http {url:?}: expected https:// or http://")),
        None => ("http", url),
    };
    let rest = rest.trim_end_matches('/');
    let authority = if rest.starts_with(':') {
        format!("127.0.0.1{rest}")
    } else {
        rest.to_owned()
    };
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !authority.contains('/');
    if valid {
        Ok((scheme, authority))
    } else {
        Err(format!("--http {url:?}: expected https://host:port"))
    }
}

struct Api {
    client: reqwest::Client,
    base: Url,
    authority: String,
    token: String,
}

impl Api {
    fn new(http: &str, token: String, ca_cert: Option<&std::path::Path>) -> Result<Self, Failure> {
        let (scheme, authority) = authority(http).map_err(|e| Failure::new(2, e))?;
        let base = Url::parse(&format!("{scheme}://{authority}"))
            .map_err(|e| Failure::new(2, format!("--http {http:?}: {e}")))?;
        // Straight to the server, as `--http` names it: a proxy from the
        // environment has no place between an operator and the admin API.
        // No redirects: one to http:// would be a plaintext fallback.
        let mut client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(scheme == "https");
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::new(2, format!("--ca-cert {}: {e}", path.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|roots| !roots.is_empty())
                .ok_or_else(|| {
                    Failure::new(
                        2,
                        format!("--ca-cert {}: no PEM certificate in it", path.display()),
                    )
                })?;
            client = roots
                .into_iter()
                .fold(client.tls_built_in_root_certs(false), |client, root| {
                    client.add_root_certificate(root)
                });
        }
        let client = client
            .build()
            .map_err(|e| Failure::new(1, format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            authority,
            token,
        })
    }

    /// The URL of the path made of `segments`, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(segments);
        }
        url
    }

    /// One request; the answer's `data` on success.
    async fn call<T: DeserializeOwned>(&self, method: Method, url: Url) -> Result<T, Failure> {
        let unreachable = |e: reqwest::Error| {
            if e.is_timeout() {
                Failure::new(
                    1,
                    format!(
                        "{} did not answer within {REQUEST_TIMEOUT:?}",
                        self.authority
                    ),
                )
            } else {
                if let Some(refusal) = chat_server::tls::refusal(&e) {
                    return Failure::new(
                        1,
                        format!(
                            "refused the TLS certificate of {}: {refusal}",
                            self.authority
                        ),
                    );
                }
                // reqwest's message names the request; the cause (e.g.
                // "Connection refused") is in its sources.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                Failure::new(
                    1,
                    format!("cannot reach the server at {}: {why}", self.authority),
                )
            }
        };
        let mut answer = self
            .client
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = answer.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(unreachable)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_ANSWER_BYTES {
                return Err(Failure::new(
                    1,
                    format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                ));
            }
        }
        if status == 200 {
            return serde_json::from_slice::<Envelope<T>>(&body)
                .ok()
                .and_then(|envelope| envelope.data)
                .ok_or_else(|| {
                    Failure::new(
                        1,
                        format!("{} answered 200 without the expected data", self.authority),
                    )
                });
        }
        let message = serde_json::from_slice::<Envelope<serde::de::IgnoredAny>>(&body)
            .ok()
            .and_then(|envelope| envelope.error)
            .map(|error| error.message)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(match status {
            401 => Failure::new(
                3,
                format!("unauthorized: {message} (check the admin token)"),
            ),
            404 if message == "route not found" => Failure::new(
                4,
                "not found: this server has no admin API (start it with --admin-token)",
            ),
            404 => Failure::new(4, message),
            _ => Failure::new(1, message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_times_parse() {
        assert_eq!(
            authority("http://127.0.0.1:3000/").unwrap(),
            ("http", "127.0.0.1:3000".to_owned())
        );
        assert_eq!(
            authority("localhost:3001").unwrap(),
            ("http", "localhost:3001".to_owned())
        );
        assert_eq!(
            authority(":3002").unwrap(),
            ("http", "127.0.0.1:3002".to_owned())
        );
        assert_eq!(
            authority("https://host:443").unwrap(),
            ("https", "host:443".to_owned())
        );
        assert!(authority("ftp://host:443").is_err());
        assert!(authority("http://host").is_err());
        assert!(authority("http://host:3000/x").is_err());
        assert_eq!(unix_ms("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(unix_ms("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(unix_ms("yesterday").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let api = Api::new(":3000", "t".into(), None).unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(
            api.url(&["admin", "users", "a b/ü&", "revoke"]).as_str(),
            "http://127.0.0.1:3000/admin/users/a%20b%2F%C3%BC&/revoke"
        );
    }
}
