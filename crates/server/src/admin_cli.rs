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
//! The HTTP client is a minimal HTTP/1.1 exchange over a tokio
//! `TcpStream`, one request per connection: the admin API is plain JSON on
//! a trusted network (HTTPS is not supported), and this keeps the binary
//! free of an HTTP client stack for a handful of requests.

use std::process::ExitCode;
use std::time::Duration;

use chat_server::http::MAX_SESSIONS;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take (a replay batch included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;
/// Letters (and users) asked for per request.
const PAGE: u64 = 200;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's HTTP address (`http://host:port`, `host:port` or
    /// `:port`).
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
    let api = Api {
        authority: authority(&args.http).map_err(|e| Failure::new(2, e))?,
        token,
    };
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
            let data = api
                .call("POST", &format!("/admin/dead-letters/{id}/replay"))
                .await?;
            println!("{}", result_line(&data));
            Ok(())
        }
        DeadLetterCommand::ReplayAll => replay_all(&api).await,
        DeadLetterCommand::Purge { before, replayed } => {
            let mut path = format!("/admin/dead-letters?replayed={replayed}");
            if let Some(before) = before {
                let ms = unix_ms(&before).map_err(|e| Failure::new(2, e))?;
                path.push_str(&format!("&before={ms}"));
            }
            let data = api.call("DELETE", &path).await?;
            println!("{}", data["purged"].as_u64().unwrap_or(0));
            Ok(())
        }
    }
}

async fn list_users(api: &Api, limit: Option<u64>, after: Option<String>) -> Result<(), Failure> {
    let mut after = after;
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let mut path = format!("/admin/users?limit={}", left.min(PAGE));
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", query_value(after)));
        }
        let data = api.call("GET", &path).await?;
        let users = data["users"].as_array().cloned().unwrap_or_default();
        for user in &users {
            println!(
                "{}\t{}\t{}",
                text(&user["username"]),
                text(&user["name"]),
                text(&user["created_at"]),
            );
        }
        left = left.saturating_sub(users.len() as u64);
        let next = data["next_after"].as_str().map(str::to_owned);
        if users.is_empty() || !data["has_more"].as_bool().unwrap_or(false) || next <= after {
            break;
        }
        after = next;
    }
    Ok(())
}

async fn revoke(api: &Api, username: &str) -> Result<(), Failure> {
    let data = api
        .call(
            "POST",
            &format!("/admin/users/{}/revoke", query_value(username)),
        )
        .await?;
    // The secret alone on stdout, for scripts; the rest is for people.
    println!("{}", text(&data["secret"]));
    let nodes: Vec<String> = data["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().map(text).collect())
        .unwrap_or_default();
    eprintln!(
        "the secret of {} was replaced; streams opened with the old one were told to end \
         (sessions on the answering server: {}, other servers: {})",
        text(&data["username"]),
        data["local_sessions"],
        if nodes.is_empty() {
            "-".to_owned()
        } else {
            nodes.join(",")
        }
    );
    let undelivered: Vec<String> = data["undelivered"]
        .as_array()
        .map(|u| u.iter().map(text).collect())
        .unwrap_or_default();
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
    let mut path = format!("/admin/sessions?limit={MAX_SESSIONS}");
    if let Some(node) = node {
        path.push_str(&format!("&node={}", query_value(node)));
    }
    if let Some(user) = user {
        path.push_str(&format!("&user={}", query_value(user)));
    }
    let data = api.call("GET", &path).await?;
    for session in data["sessions"].as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}",
            text(&session["username"]),
            text(&session["node"]),
            session["session"],
        );
    }
    if data["truncated"].as_bool().unwrap_or(false) {
        eprintln!(
            "more than {MAX_SESSIONS} sessions: only some are listed; narrow with --node or --user"
        );
    }
    Ok(())
}

async fn nodes(api: &Api) -> Result<(), Failure> {
    let data = api.call("GET", "/admin/nodes").await?;
    for node in data["nodes"].as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            text(&node["node"]),
            text(&node["grpc_addr"]),
            text(&node["http_addr"]),
            text(&node["started_at"]),
            text(&node["heartbeat_at"]),
        );
    }
    Ok(())
}

/// `value` percent-encoded for a query string or a path segment (every
/// byte but `A-Z a-z 0-9 - . _ ~`).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        let mut path = format!(
            "/admin/dead-letters?limit={}&pending={pending}",
            left.min(PAGE)
        );
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let data = api.call("GET", &path).await?;
        let letters = data["dead_letters"].as_array().cloned().unwrap_or_default();
        for letter in &letters {
            println!(
                "{}\t{}\t{}\t{}",
                letter["id"],
                text(&letter["created_at"]),
                text(&letter["node"]),
                text(&letter["reason"]),
            );
        }
        left = left.saturating_sub(letters.len() as u64);
        let next = data["next_after"].as_u64();
        if letters.is_empty() || !data["has_more"].as_bool().unwrap_or(false) || next <= after {
            break;
        }
        after = next;
    }
    Ok(())
}

async fn show(api: &Api, id: u64) -> Result<(), Failure> {
    let letter = api
        .call("GET", &format!("/admin/dead-letters/{id}"))
        .await?;
    println!("id: {}", letter["id"]);
    println!("created: {}", text(&letter["created_at"]));
    println!("node: {}", text(&letter["node"]));
    println!("reason: {}", text(&letter["reason"]));
    let replayed = letter["replayed_at_unix_ms"]
        .as_i64()
        .map_or_else(|| "never".to_owned(), rfc3339);
    println!("replayed: {replayed}");
    println!("replay_attempts: {}", letter["replay_attempts"]);
    println!("payload_bytes: {}", letter["payload_bytes"]);
    match letter["payload_text"].as_str() {
        Some(payload) => println!("payload (text):\n{payload}"),
        None => println!("payload (hex):\n{}", text(&letter["payload_hex"])),
    }
    Ok(())
}

async fn replay_all(api: &Api) -> Result<(), Failure> {
    let mut after: Option<u64> = None;
    let mut failed = 0;
    loop {
        let mut path = format!("/admin/dead-letters/replay?limit={PAGE}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let data = api.call("POST", &path).await?;
        let results = data["results"].as_array().cloned().unwrap_or_default();
        for result in &results {
            println!("{}", result_line(result));
        }
        failed += data["failed"].as_u64().unwrap_or(0);
        let next = data["next_after"].as_u64();
        if failed > 0
            || results.is_empty()
            || !data["has_more"].as_bool().unwrap_or(false)
            || next <= after
        {
            break;
        }
        after = next;
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
fn result_line(result: &Value) -> String {
    let outcome = text(&result["outcome"]);
    let detail = if outcome == "replayed" {
        let nodes: Vec<String> = result["nodes"]
            .as_array()
            .map(|nodes| nodes.iter().map(text).collect())
            .unwrap_or_default();
        format!(
            "local sessions: {}, nodes: {}",
            result["local_sessions"],
            if nodes.is_empty() {
                "-".to_owned()
            } else {
                nodes.join(",")
            }
        )
    } else {
        text(&result["reason"])
    };
    format!("{}\t{outcome}\t{detail}", result["id"])
}

/// A JSON string as plain text on one line (tabs and newlines would break
/// the columns).
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
        .replace(['\t', '\n', '\r'], " ")
}

fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
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

/// `host:port` from `http://host:port[/]`, `host:port` or `:port`.
fn authority(url: &str) -> Result<String, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => {
            return Err(format!(
                "--http {url:?}: only http:// is supported (the admin API is for a trusted network)"
            ))
        }
        None => url,
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
        Ok(authority)
    } else {
        Err(format!("--http {url:?}: expected http://host:port"))
    }
}

struct Api {
    authority: String,
    token: String,
}

impl Api {
    /// One request; the answer's `data` on success.
    async fn call(&self, method: &str, path: &str) -> Result<Value, Failure> {
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path))
            .await
            .map_err(|_| {
                Failure::new(
                    1,
                    format!(
                        "{} did not answer within {REQUEST_TIMEOUT:?}",
                        self.authority
                    ),
                )
            })?
            .map_err(|e| {
                Failure::new(
                    1,
                    format!("cannot reach the server at {}: {e}", self.authority),
                )
            })?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 200 {
            return Ok(json["data"].clone());
        }
        let message = json["error"]["message"]
            .as_str()
            .map(str::to_owned)
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

    async fn exchange(&self, method: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = tokio::net::TcpStream::connect(&self.authority).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.authority, self.token
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut raw)
            .await?;
        parse_answer(&raw)
    }
}

fn bad_answer(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad HTTP answer: {why}"),
    )
}

/// The status and body of a complete HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad_answer("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad_answer("headers not UTF-8"))?;
    let body = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_answer("no status"))?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad_answer("bad chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_times_parse() {
        assert_eq!(
            authority("http://127.0.0.1:3000/").unwrap(),
            "127.0.0.1:3000"
        );
        assert_eq!(authority("localhost:3001").unwrap(), "localhost:3001");
        assert_eq!(authority(":3002").unwrap(), "127.0.0.1:3002");
        assert!(authority("https://host:443").is_err());
        assert!(authority("http://host").is_err());
        assert!(authority("http://host:3000/x").is_err());
        assert_eq!(unix_ms("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(unix_ms("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(unix_ms("yesterday").is_err());
        assert_eq!(query_value("a.b_c-d~9"), "a.b_c-d~9");
        assert_eq!(query_value("a b/ü&"), "a%20b%2F%C3%BC%26");
    }

    #[test]
    fn answers_parse_plain_and_chunked() {
        let (status, body) =
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
        let (status, body) = parse_answer(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((status, body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse_answer(b"garbage").is_err());
    }
}
