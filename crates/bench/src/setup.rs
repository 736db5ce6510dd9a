//! Where the load goes: running servers (`--server`), one started in this
//! process (`--embedded`), or `chat-server` child processes (`--spawn`);
//! and the plumbing every scenario shares: registration, live streams,
//! bounded concurrency.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::server_frame::Frame as Out;
use chat_proto::user_service_client::UserServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::proc;

/// How the servers are chosen, from the global flags.
#[derive(Debug)]
pub struct TargetArgs {
    pub servers: Vec<String>,
    pub server_pids: Vec<u32>,
    pub embedded: bool,
    pub spawn: usize,
    pub server_bin: Option<PathBuf>,
    pub server_args: Vec<String>,
    pub durability: String,
    /// The CA to trust for `https://` servers instead of the system's
    /// roots.
    pub ca_cert: Option<PathBuf>,
}

/// The servers under load, shared by every task of a scenario.
pub struct Target {
    urls: Vec<String>,
    /// How `https://` servers are verified.
    tls: tonic::transport::ClientTlsConfig,
    /// One lazily connected channel per server for unary calls
    /// (registration, groups); streams get connections of their own.
    shared: Vec<Channel>,
    /// Processes whose cost is read from /proc.
    pub pids: Vec<u32>,
    /// The pids include this process (embedded server).
    pub includes_generator: bool,
}

/// A live `Connect` stream that has received its `ready`.
pub struct Stream {
    /// Frames to the server; dropping it closes the client side.
    pub tx: mpsc::Sender<pb::ClientFrame>,
    pub frames: tonic::Streaming<pb::ServerFrame>,
}

impl Target {
    pub fn servers(&self) -> usize {
        self.urls.len()
    }

    pub fn url(&self, server: usize) -> &str {
        &self.urls[server % self.urls.len()]
    }

    /// The summed /proc reading of the server processes, if known.
    pub fn sample(&self) -> Option<proc::Sample> {
        proc::sample_all(&self.pids)
    }

    /// The server's cost: CPU over `window`, state at `end` (see
    /// [`proc::cost`]).
    pub fn cost(
        &self,
        window: Option<(proc::Sample, proc::Sample)>,
        end: Option<proc::Sample>,
        delivered: Option<u64>,
    ) -> (serde_json::Value, String) {
        proc::cost(&self.pids, self.includes_generator, window, end, delivered)
    }

    /// A new HTTP/2 connection to server `server % n`.
    pub async fn channel(&self, server: usize) -> anyhow::Result<Channel> {
        let url = self.url(server);
        endpoint(url, &self.tls)?
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))
    }

    /// Registers a user on server `server % n` and returns its secret.
    pub async fn register(&self, server: usize, username: &str) -> anyhow::Result<String> {
        let channel = self.shared[server % self.shared.len()].clone();
        let r = UserServiceClient::new(channel)
            .register(pb::RegisterRequest {
                username: username.into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("registering {username} on {}", self.url(server)))?;
        Ok(r.into_inner().secret)
    }

    /// A chat client for unary calls, over the server's shared channel.
    pub fn chat_shared(&self, server: usize, secret: &str) -> anyhow::Result<pb::AuthedChatClient> {
        let bearer = pb::Bearer::new(secret).context("secret is not a header value")?;
        Ok(ChatServiceClient::with_interceptor(
            self.shared[server % self.shared.len()].clone(),
            bearer,
        ))
    }

    /// A chat client on a new connection of its own.
    pub async fn chat(&self, server: usize, secret: &str) -> anyhow::Result<pb::AuthedChatClient> {
        let bearer = pb::Bearer::new(secret).context("secret is not a header value")?;
        Ok(ChatServiceClient::with_interceptor(
            self.channel(server).await?,
            bearer,
        ))
    }

    /// Opens a live stream on a new connection and waits for its `ready`.
    /// `queue` bounds the frames waiting to go to the server.
    pub async fn open(&self, server: usize, secret: &str, queue: usize) -> anyhow::Result<Stream> {
        let mut chat = self.chat(server, secret).await?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let mut frames = chat
            .connect(ReceiverStream::new(rx))
            .await
            .context("Connect")?
            .into_inner();
        match frames.message().await.context("waiting for ready")? {
            Some(pb::ServerFrame {
                frame: Some(Out::Ready(_)),
            }) => Ok(Stream { tx, frames }),
            other => anyhow::bail!("expected ready, got {other:?}"),
        }
    }
}

/// A channel's endpoint; an `https://` URL is verified with `tls`, and
/// never falls back to plaintext.
fn endpoint(url: &str, tls: &tonic::transport::ClientTlsConfig) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad server URL {url:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        return endpoint
            .tls_config(tls.clone())
            .with_context(|| format!("TLS for {url}"));
    }
    Ok(endpoint)
}

/// The system's roots, or only the CA of `ca_cert`.
fn client_tls(
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let tls = tonic::transport::ClientTlsConfig::new();
    Ok(match ca_cert {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
            tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    })
}

/// The servers and whatever this process started for them.
pub struct Running {
    pub target: Arc<Target>,
    embedded: Option<(
        CancellationToken,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    )>,
    spawned: Vec<Child>,
}

/// A `chat-server` child process.
struct Child {
    name: String,
    child: tokio::process::Child,
    /// The last lines of its stdout and stderr, for error messages.
    tail: Arc<Mutex<VecDeque<String>>>,
    _data: tempfile::TempDir,
}

const TAIL_LINES: usize = 40;
const READY_WITHIN: Duration = Duration::from_secs(30);
const STOP_WITHIN: Duration = Duration::from_secs(10);

impl Running {
    pub async fn start(args: &TargetArgs) -> anyhow::Result<Self> {
        for &pid in &args.server_pids {
            proc::sample(pid)
                .with_context(|| format!("--server-pid {pid}: cannot read /proc/{pid}"))?;
        }
        let mut pids = args.server_pids.clone();
        let mut embedded = None;
        let mut spawned = Vec::new();
        let mut includes_generator = false;
        let urls = if args.embedded {
            let (url, server) = start_embedded(&args.durability).await?;
            embedded = Some(server);
            pids.push(std::process::id());
            includes_generator = true;
            vec![url]
        } else if args.spawn > 0 {
            let binary = match &args.server_bin {
                Some(path) => path.clone(),
                None => std::env::current_exe()
                    .context("locating chat-bench")?
                    .with_file_name("chat-server"),
            };
            anyhow::ensure!(
                binary.is_file(),
                "no server binary at {} (build it with `cargo build -p chat-server`, or give --server-bin)",
                binary.display()
            );
            let mut urls = Vec::new();
            for i in 0..args.spawn {
                // Stop the ones already started if a later one fails.
                match spawn_server(&binary, i, args).await {
                    Ok((url, child)) => {
                        pids.push(child.child.id().context("spawned server has no pid")?);
                        urls.push(url);
                        spawned.push(child);
                    }
                    Err(e) => {
                        for child in spawned {
                            child.stop().await;
                        }
                        return Err(e);
                    }
                }
            }
            urls
        } else {
            args.servers.clone()
        };
        anyhow::ensure!(!urls.is_empty(), "no server to load");
        anyhow::ensure!(
            args.ca_cert.is_none() || urls.iter().all(|u| u.starts_with("https://")),
            "--ca-cert is for https:// servers"
        );
        let tls = client_tls(args.ca_cert.as_deref())?;
        let shared = urls
            .iter()
            .map(|u| Ok(endpoint(u, &tls)?.connect_lazy()))
            .collect::<anyhow::Result<_>>()?;
        let target = Arc::new(Target {
            urls,
            tls,
            shared,
            pids,
            includes_generator,
        });
        Ok(Self {
            target,
            embedded,
            spawned,
        })
    }

    pub async fn stop(self) {
        if let Some((stop, task, _dir)) = self.embedded {
            stop.cancel();
            let _ = task.await;
        }
        for child in self.spawned {
            child.stop().await;
        }
    }
}

async fn start_embedded(
    durability: &str,
) -> anyhow::Result<(
    String,
    (
        CancellationToken,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    ),
)> {
    let dir = tempfile::tempdir()?;
    let config = chat_server::Config {
        data_dir: dir.path().to_owned(),
        durability: if durability == "normal" {
            chat_server::config::Durability::Normal
        } else {
            chat_server::config::Durability::Full
        },
        ..chat_server::Config::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", grpc.local_addr()?);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(async move {
        let listeners = chat_server::Listeners { grpc, http };
        if let Err(e) = chat_server::run(config, listeners, signal.cancelled_owned()).await {
            eprintln!("embedded server failed: {e}");
        }
    });
    Ok((url, (stop, task, dir)))
}

/// A loopback address whose port was free a moment ago.
fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding port 0")?;
    Ok(listener.local_addr()?)
}

/// Starts server `i` and waits until it serves HTTP and gRPC.
async fn spawn_server(
    binary: &std::path::Path,
    i: usize,
    args: &TargetArgs,
) -> anyhow::Result<(String, Child)> {
    let data = tempfile::tempdir()?;
    let (grpc, http) = (free_addr()?, free_addr()?);
    let name = format!("bench-{i}");
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--data-dir")
        .arg(data.path())
        .arg(format!("--grpc-addr={grpc}"))
        .arg(format!("--http-addr={http}"))
        .arg(format!("--node-id={name}"))
        .arg(format!("--durability={}", args.durability))
        .args(&args.server_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    // Keep reading its output so that it never blocks on a full pipe.
    if let Some(out) = child.stdout.take() {
        keep_tail(out, tail.clone());
    }
    if let Some(err) = child.stderr.take() {
        keep_tail(err, tail.clone());
    }
    let mut child = Child {
        name,
        child,
        tail,
        _data: data,
    };
    eprintln!(
        "started {} (pid {}): gRPC {grpc}, HTTP {http}",
        child.name,
        child.child.id().unwrap_or_default()
    );
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = child.child.try_wait()? {
            anyhow::bail!(
                "{} exited before it was ready ({status}); its last output:\n{}",
                child.name,
                child.tail()
            );
        }
        if healthy(http).await && tokio::net::TcpStream::connect(grpc).await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            let tail = child.tail();
            let name = child.name.clone();
            child.stop().await;
            anyhow::bail!("{name} was not ready within {READY_WITHIN:?}; its last output:\n{tail}");
        }
        // No event tells us the server is listening: poll, bounded above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((format!("http://{grpc}"), child))
}

fn keep_tail(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut tail = tail.lock().expect("tail");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
}

/// `GET /healthz` answers 200.
async fn healthy(http: std::net::SocketAddr) -> bool {
    // The server is on loopback: no proxy from the environment.
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    else {
        return false;
    };
    client
        .get(format!("http://{http}/healthz"))
        .send()
        .await
        .is_ok_and(|answer| answer.status() == reqwest::StatusCode::OK)
}

impl Child {
    fn tail(&self) -> String {
        let tail = self.tail.lock().expect("tail");
        tail.iter().map(|l| format!("  {l}\n")).collect()
    }

    /// SIGTERM, then SIGKILL if it has not exited within STOP_WITHIN.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory preconditions; the pid is our
            // child's and it has not been reaped yet (id() is Some).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(STOP_WITHIN, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!(
                    "{} did not stop within {STOP_WITHIN:?} of SIGTERM: killing it",
                    self.name
                );
                let _ = self.child.kill().await;
                None
            }
        };
        if let Some(status) = status.filter(|s| !s.success()) {
            eprintln!(
                "{} exited with {status}; its last output:\n{}",
                self.name,
                self.tail()
            );
        }
    }
}

/// Runs `f(0..n)` with at most `concurrency` at a time and returns the
/// results in order; the first error stops it. Prints progress under
/// `label` about once a second.
pub async fn bounded<T, F, Fut>(
    label: &str,
    n: usize,
    concurrency: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut done = 0;
    let mut shown = Instant::now();
    while done < n {
        while next < n && running.len() < concurrency.max(1) {
            let job = f(next);
            let i = next;
            running.spawn(async move { (i, job.await) });
            next += 1;
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, result) = joined.context("a setup task panicked")?;
        results[i] = Some(result?);
        done += 1;
        if shown.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {label}: {done}/{n}");
            shown = Instant::now();
        }
    }
    results
        .into_iter()
        .map(|r| r.context("a setup task did not finish"))
        .collect()
}

/// A short random tag so that runs against one server do not collide.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("{:06x}", nanos & 0xff_ffff)
}

/// Raises the soft limit of open files to the hard limit, so that
/// thousands of streams (one connection each) fit.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            eprintln!(
                "cannot read the open-files limit: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!(
                    "cannot raise the open-files limit from {before}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// What [`next_frame`] found.
pub enum Next<T> {
    /// The next frame of the wanted kind.
    Frame(T),
    /// The server ended the stream.
    Ended,
    /// The stream failed.
    Failed(tonic::Status),
    /// `stop` was cancelled first.
    Stopped,
}

/// The next frame of a stream that `pick` keeps (it returns `None` for the
/// kinds to skip), unless the stream ends or `stop` is cancelled first.
pub async fn next_frame<T>(
    frames: &mut tonic::Streaming<pb::ServerFrame>,
    stop: &CancellationToken,
    pick: impl Fn(Out) -> Option<T>,
) -> Next<T> {
    loop {
        let frame = tokio::select! {
            f = frames.message() => f,
            _ = stop.cancelled() => return Next::Stopped,
        };
        match frame {
            Ok(Some(pb::ServerFrame { frame: Some(f) })) => {
                if let Some(wanted) = pick(f) {
                    return Next::Frame(wanted);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return Next::Ended,
            Err(status) => return Next::Failed(status),
        }
    }
}

/// The `ack` frames of a stream, for [`next_frame`].
fn ack(frame: Out) -> Option<pb::SendAck> {
    match frame {
        Out::Ack(ack) => Some(ack),
        _ => None,
    }
}

/// A sender's acks matched to its sends: for each ack of a `client_msg_id`
/// still in `outstanding`, `on_ack` gets what was recorded when it was
/// sent, the error if the send was refused, and when the ack arrived.
/// Runs until the stream ends or `abandon` is cancelled; returns the status
/// if the stream failed.
pub async fn match_acks<V>(
    frames: &mut tonic::Streaming<pb::ServerFrame>,
    outstanding: &Mutex<std::collections::HashMap<String, V>>,
    abandon: &CancellationToken,
    mut on_ack: impl FnMut(V, Option<pb::Error>, Instant),
) -> Option<tonic::Status> {
    loop {
        let ack = match next_frame(frames, abandon, ack).await {
            Next::Frame(ack) => ack,
            Next::Ended | Next::Stopped => return None,
            Next::Failed(status) => return Some(status),
        };
        let now = Instant::now();
        let sent = outstanding
            .lock()
            .expect("outstanding")
            .remove(&ack.client_msg_id);
        if let Some(sent) = sent {
            on_ack(sent, ack.error, now);
        }
    }
}
