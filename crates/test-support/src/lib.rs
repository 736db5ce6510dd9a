//! Real chat servers for tests: [`TestServer::start`] runs the server
//! in-process on loopback port 0 with its data in a temporary directory, and
//! hands out authenticated clients and live sessions.
//!
//! Every wait here is bounded by [`WAIT`], so a broken feature fails the
//! test with a message instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::user_service_client::UserServiceClient;
use chat_server::{Backends, Config, Listeners, ServerError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use chat_proto::AuthedChatClient;

pub mod fault;
pub mod http;
pub mod ledger;
pub mod proc;
pub mod tls;

pub use http::{http, http_as, http_with, HttpAnswer};

/// The longest any test waits for an event that should come.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    /// The CA certificate (PEM) its clients trust, when it serves TLS.
    ca_pem: Option<String>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

/// A registered user.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub username: String,
    pub secret: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed the default config; it
    /// connects to the backends the config names.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_node(None, adjust).await
    }

    /// Starts a server on the given backends (shared with other servers of
    /// this process), or on those its config names when `None`.
    pub async fn start_node(backends: Option<Backends>, adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config {
            data_dir: data_dir.path().to_owned(),
            ..Config::default()
        };
        adjust(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let grpc_addr = grpc.local_addr().expect("gRPC address");
        let http_addr = http.local_addr().expect("HTTP address");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let listeners = Listeners { grpc, http };
        let stopped = async move { signal.cancelled().await };
        let backends = match backends {
            Some(backends) => backends,
            None => {
                // Connect here so that a backend that cannot be reached
                // fails the test at once, with its reason.
                config.cluster.validate().expect("a valid cluster config");
                Backends::connect(&config)
                    .await
                    .expect("the backends are reachable")
            }
        };
        let task = tokio::spawn(chat_server::run_with(config, backends, listeners, stopped));
        Self {
            grpc_addr,
            http_addr,
            data_dir,
            ca_pem: None,
            shutdown,
            task,
        }
    }

    /// Starts a server serving TLS with a certificate of `ca` for
    /// `localhost` and `127.0.0.1`; its clients trust `ca` only.
    pub async fn start_tls(ca: &tls::TestCa, adjust: impl FnOnce(&mut Config)) -> Self {
        let files = ca.issue(
            "server",
            &["localhost", "127.0.0.1"],
            tls::Validity::Current,
        );
        let mut server = Self::start_with(|config| {
            config.tls = Some(files);
            adjust(config);
        })
        .await;
        server.ca_pem = Some(ca.cert_pem.clone());
        server
    }

    fn scheme(&self) -> &'static str {
        match self.ca_pem {
            Some(_) => "https",
            None => "http",
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http_addr)
    }

    pub async fn channel(&self) -> Channel {
        if let Some(ca) = &self.ca_pem {
            return tls::channel(self.grpc_addr, ca, "localhost")
                .await
                .expect("connect to the test server over TLS");
        }
        Endpoint::from_shared(self.grpc_url())
            .expect("endpoint")
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect to the test server")
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    /// A chat client that sends `secret` as its bearer token.
    pub async fn chat_as(&self, secret: &str) -> AuthedChatClient {
        let bearer = pb::Bearer::new(secret).expect("a header-safe secret");
        ChatServiceClient::with_interceptor(self.channel().await, bearer)
    }

    pub async fn chat(&self, user: &TestUser) -> AuthedChatClient {
        self.chat_as(&user.secret).await
    }

    /// Registers `username` over gRPC.
    pub async fn register(&self, username: &str) -> TestUser {
        let response = self
            .users()
            .await
            .register(pb::RegisterRequest {
                username: username.into(),
                name: format!("{username} name"),
                phone: "8098080".into(),
            })
            .await
            .expect("register")
            .into_inner();
        TestUser {
            username: response.user.expect("user").username,
            secret: response.secret,
        }
    }

    /// Opens a live session and waits for its `ready`.
    pub async fn connect(&self, user: &TestUser) -> Live {
        Live::open(self.chat(user).await).await
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ran without error");
    }
}

/// A live `Connect` session.
pub struct Live {
    pub ready: pb::Ready,
    frames_out: mpsc::Sender<pb::ClientFrame>,
    frames_in: tonic::Streaming<pb::ServerFrame>,
}

impl Live {
    pub async fn open(mut client: AuthedChatClient) -> Self {
        let (frames_out, rx) = mpsc::channel(64);
        let mut frames_in = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("Connect accepted")
            .into_inner();
        let first = tokio::time::timeout(WAIT, frames_in.message())
            .await
            .expect("ready in time")
            .expect("stream ok")
            .expect("a first frame");
        let Some(pb::server_frame::Frame::Ready(ready)) = first.frame else {
            panic!("the first frame is not ready: {first:?}");
        };
        Self {
            ready,
            frames_out,
            frames_in,
        }
    }

    /// The next frame from the server, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<pb::server_frame::Frame, tonic::Status>> {
        match tokio::time::timeout(WAIT, self.frames_in.message()).await {
            Err(_) => panic!("no frame within {WAIT:?}"),
            Ok(Ok(Some(frame))) => Some(Ok(frame.frame.expect("a frame with content"))),
            Ok(Ok(None)) => None,
            Ok(Err(status)) => Some(Err(status)),
        }
    }

    /// The next frame, which must exist.
    pub async fn frame(&mut self) -> pb::server_frame::Frame {
        self.next()
            .await
            .expect("the stream is open")
            .expect("no stream error")
    }

    /// The next `message` frame, skipping others.
    pub async fn message(&mut self) -> pb::Message {
        loop {
            if let pb::server_frame::Frame::Message(m) = self.frame().await {
                return m;
            }
        }
    }

    /// The next `ack` frame, skipping others.
    pub async fn ack(&mut self) -> pb::SendAck {
        loop {
            if let pb::server_frame::Frame::Ack(a) = self.frame().await {
                return a;
            }
        }
    }

    pub async fn push(&self, frame: pb::client_frame::Frame) {
        self.frames_out
            .send(pb::ClientFrame { frame: Some(frame) })
            .await
            .expect("the stream accepts frames");
    }

    /// Like [`Live::push`], but `false` instead of a panic when the stream
    /// has ended (a server going away under traffic).
    pub async fn try_push(&mut self, frame: pb::client_frame::Frame) -> bool {
        self.frames_out
            .send(pb::ClientFrame { frame: Some(frame) })
            .await
            .is_ok()
    }

    /// The next frame, however long it takes (`None` when the stream
    /// ended): for a reader task that the test itself stops or bounds.
    pub async fn recv(&mut self) -> Option<Result<pb::server_frame::Frame, tonic::Status>> {
        match self.frames_in.message().await {
            Ok(Some(frame)) => Some(Ok(frame.frame.expect("a frame with content"))),
            Ok(None) => None,
            Err(status) => Some(Err(status)),
        }
    }

    /// The next frame if one comes within `wait`, `None` if none does; the
    /// stream must stay open.
    pub async fn frame_within(&mut self, wait: Duration) -> Option<pb::server_frame::Frame> {
        let frame = tokio::time::timeout(wait, self.frames_in.message())
            .await
            .ok()?;
        let frame = frame.expect("no stream error").expect("the stream is open");
        Some(frame.frame.expect("a frame with content"))
    }

    /// Sends a direct message over the stream (its ack comes later).
    pub async fn send_to(&self, to: &str, body: &str, client_msg_id: &str) {
        self.push(pb::client_frame::Frame::Send(send_request(
            to,
            body,
            client_msg_id,
        )))
        .await;
    }
}

/// A direct `SendMessageRequest`.
pub fn send_request(to: &str, body: &str, client_msg_id: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        target: Some(pb::send_message_request::Target::ToUser(to.into())),
        body: body.into(),
        client_msg_id: client_msg_id.into(),
    }
}

/// The admin token tests configure (`c.admin_token = Some(admin_token())`).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn admin_token() -> chat_server::config::AdminToken {
    chat_server::config::AdminToken::new(TEST_ADMIN_TOKEN).expect("a valid admin token")
}

/// A request to the admin API with [`TEST_ADMIN_TOKEN`].
pub async fn admin_http(addr: SocketAddr, method: &str, path: &str) -> HttpAnswer {
    http_as(addr, TEST_ADMIN_TOKEN, method, path, None).await
}

/// A delivery record as servers put them on the bus (envelope version 1):
/// a text message `body` of conversation `conversation_id` at `seq`, from
/// `sender`, for the sessions of `to`. Written out by hand, as an older
/// server would have written it, so that a change of the format that
/// breaks replaying stored records fails a test.
pub fn message_envelope(
    to: &[&str],
    conversation_id: &str,
    seq: u64,
    sender: &str,
    body: &str,
) -> Vec<u8> {
    let record = serde_json::json!({
        "v": 1,
        "to": to,
        "event": {
            "type": "message",
            "id": format!("m-{conversation_id}-{seq}"),
            "conversation_id": conversation_id,
            "seq": seq,
            "sender": sender,
            "body": body,
            "client_msg_id": format!("k-{conversation_id}-{seq}"),
            "sent_at_unix_ms": 1_700_000_000_000_i64,
            "kind": "text",
        },
    });
    serde_json::to_vec(&record).expect("JSON")
}

/// The value of an unlabelled metric in `GET /metrics`, if shown.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let answer = http(addr, "GET", "/metrics", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

/// Polls `GET /metrics` until `name` shows `value`, for a counter moved by
/// a background task no test can await; fails after [`WAIT`].
pub async fn await_metric(addr: SocketAddr, name: &str, value: u64) {
    let started = tokio::time::Instant::now();
    loop {
        let now = metric(addr, name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{name} is {now:?}, not {value}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The services the cluster tests need, started by `scripts/test.sh`. A
/// test that needs one and does not find it fails, naming the command.
pub mod services {
    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests with scripts/test.sh, which starts the services they need")
        })
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn redis_url() -> String {
        env("CHAT_TEST_REDIS_URL")
    }

    /// The Java runtime (`CHAT_TEST_JAVA`) and the directory of Apache
    /// Kafka's jars (`CHAT_TEST_KAFKA_JARS`), for a test that runs a broker
    /// of its own to stop and start it.
    pub fn kafka_runtime() -> (std::path::PathBuf, std::path::PathBuf) {
        let java = std::path::PathBuf::from(env("CHAT_TEST_JAVA"));
        let jars = std::path::PathBuf::from(env("CHAT_TEST_KAFKA_JARS"));
        assert!(
            jars.join(".complete").is_file(),
            "CHAT_TEST_KAFKA_JARS={} holds no complete copy of the broker: run the tests with scripts/test.sh",
            jars.display()
        );
        (java, jars)
    }

    /// `127.0.0.1:<port>` of an Apache Kafka broker.
    pub fn kafka_brokers() -> String {
        env("CHAT_TEST_KAFKA_BROKERS")
    }

    /// A unique prefix for Redis keys and channels, Kafka topics and node
    /// ids, so that tests sharing the services never see each other.
    pub fn unique(prefix: &str) -> String {
        format!("{prefix}{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
    }

    /// The `host:port` of a PostgreSQL URL (`postgres://user@host:port/db`),
    /// e.g. to put a fault proxy in front of it.
    pub fn postgres_addr(url: &str) -> std::net::SocketAddr {
        let rest = url.split_once("://").expect("a URL").1;
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host_port = host_port.split('/').next().expect("host:port");
        host_port.parse().expect("a numeric host:port")
    }

    /// `CHAT_TEST_POSTGRES_URL` and a connection to it (its default
    /// database, never a test's).
    async fn postgres_server() -> (String, tokio_postgres::Client) {
        let server = env("CHAT_TEST_POSTGRES_URL");
        let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server}: {e}"));
        tokio::spawn(connection);
        (server, client)
    }

    /// The URL of a new, empty PostgreSQL database.
    pub async fn fresh_postgres() -> String {
        let (server, client) = postgres_server().await;
        let name = unique("chat_test_");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        match server.rsplit_once('/') {
            Some((base, _)) if base.contains("://") => format!("{base}/{name}"),
            _ => panic!("CHAT_TEST_POSTGRES_URL must be a URL ending in /<database>"),
        }
    }

    /// A connection of its own to the test PostgreSQL server (to its
    /// default database, never to a test's), to see what others hold.
    pub struct PostgresObserver {
        client: tokio_postgres::Client,
    }

    impl PostgresObserver {
        pub async fn connect() -> Self {
            let (_, client) = postgres_server().await;
            Self { client }
        }

        /// How many connections to the database of `url` (one that
        /// [`fresh_postgres`] gave) are open now, from `pg_stat_activity`.
        pub async fn connections(&self, url: &str) -> u64 {
            let database = url
                .rsplit_once('/')
                .and_then(|(_, rest)| rest.split('?').next())
                .expect("a URL ending in /<database>");
            let row = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&database],
                )
                .await
                .expect("read pg_stat_activity");
            let count: i64 = row.get(0);
            u64::try_from(count).expect("a count is not negative")
        }
    }
}

/// The real `chat-server` binary in a child process, for what only a
/// process can show (SIGKILL, restarts).
pub mod process {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};
    use tonic::transport::{Channel, Endpoint};

    use crate::WAIT;

    /// A loopback address whose port was free a moment ago.
    pub fn free_addr() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        listener.local_addr().expect("local address")
    }

    pub struct ServerProcess {
        pub child: Child,
        pub grpc_addr: SocketAddr,
        pub http_addr: SocketAddr,
    }

    impl ServerProcess {
        /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_chat-server")`)
        /// with its data in `data_dir`, on `grpc_addr` and a free HTTP port,
        /// with extra `CHAT_…` variables, and waits for its "listening" log
        /// line.
        pub async fn start(
            binary: &Path,
            data_dir: &Path,
            grpc_addr: SocketAddr,
            env: &[(&str, String)],
        ) -> Self {
            let http_addr = free_addr();
            let mut command = Command::new(binary);
            command
                .env("CHAT_DATA_DIR", data_dir)
                .env("CHAT_GRPC_ADDR", grpc_addr.to_string())
                .env("CHAT_HTTP_ADDR", http_addr.to_string())
                .env("CHAT_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            for (name, value) in env {
                command.env(name, value);
            }
            let mut child = command.spawn().expect("start chat-server");
            let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            let listening = async {
                while let Some(line) = lines.next_line().await.expect("read the server's log") {
                    if line.contains("chat server listening") {
                        return true;
                    }
                }
                false
            };
            let started = tokio::time::timeout(WAIT, listening)
                .await
                .expect("server starts in time");
            assert!(started, "the server exited before listening");
            // Keep draining the log so the server never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Self {
                child,
                grpc_addr,
                http_addr,
            }
        }

        /// SIGKILL, and wait until the process is gone.
        pub async fn kill(&mut self) {
            self.child.start_kill().expect("SIGKILL");
            self.child.wait().await.expect("the server is reaped");
        }

        pub async fn channel(&self) -> Channel {
            Endpoint::from_shared(format!("http://{}", self.grpc_addr))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the server process")
        }

        pub async fn users(&self) -> chat_proto::user_service_client::UserServiceClient<Channel> {
            chat_proto::user_service_client::UserServiceClient::new(self.channel().await)
        }

        pub async fn chat(&self, secret: &str) -> chat_proto::AuthedChatClient {
            let bearer = chat_proto::Bearer::new(secret).expect("a header-safe secret");
            chat_proto::chat_service_client::ChatServiceClient::with_interceptor(
                self.channel().await,
                bearer,
            )
        }

        /// Registers `username` and returns its secret.
        pub async fn register(&self, username: &str) -> String {
            let request = chat_proto::RegisterRequest {
                username: username.into(),
                ..Default::default()
            };
            self.users()
                .await
                .register(request)
                .await
                .expect("register")
                .into_inner()
                .secret
        }
    }

    /// A port for a service the test stops and starts again on the same
    /// port: free now, and below Linux's ephemeral range (32768 and up),
    /// so that no outgoing connection takes it while the service is down.
    pub fn free_service_port() -> u16 {
        for _ in 0..200 {
            let port = 20000 + (rand::random::<u16>() % 12768);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("found no free port in 20000-32767");
    }

    /// Whether process `pid` holds a listening TCP socket on `port` (so
    /// that what answers there is that process, not another one).
    pub fn listens_on(pid: u32, port: u16) -> bool {
        let hex = format!(":{port:04X}");
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address, state 0A (LISTEN), inode.
                if fields.len() > 9 && fields[1].ends_with(&hex) && fields[3] == "0A" {
                    inodes.push(format!("socket:[{}]", fields[9]));
                }
            }
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        })
    }

    /// An Apache Kafka broker of the test's own, run as
    /// `scripts/services.sh` runs the suite's (its `scripts/kafka/` files,
    /// [`crate::services::kafka_runtime`]), on a loopback port, with its
    /// data in a temporary directory: the test can kill it and start it
    /// again with its data or empty. Killed when dropped.
    pub struct Broker {
        pub port: u16,
        controller_port: u16,
        dir: tempfile::TempDir,
        child: Option<Child>,
        starts: usize,
    }

    /// How long a broker may take to start: a JVM that starts in 4 s on an
    /// idle machine took 17 s on two cores shared with a build.
    const BROKER_START: std::time::Duration = std::time::Duration::from_secs(60);

    /// The broker's files in `scripts/kafka/`.
    fn kafka_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/kafka")
            .join(name)
    }

    /// A KRaft cluster id: 16 random bytes in URL-safe base64 without
    /// padding, not starting with `-` (as `scripts/services.sh` makes one).
    fn kafka_cluster_id() -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        loop {
            let bytes: [u8; 16] = rand::random();
            let mut bits = 0u32;
            let mut nbits = 0;
            let mut id = String::new();
            for byte in bytes {
                bits = (bits << 8) | u32::from(byte);
                nbits += 8;
                while nbits >= 6 {
                    nbits -= 6;
                    id.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
                }
            }
            id.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
            if !id.starts_with('-') {
                return id;
            }
        }
    }

    impl Broker {
        /// Formats a new broker's storage and starts it on
        /// `127.0.0.1:port`; returns once it takes requests.
        pub async fn start(port: u16) -> Self {
            let mut broker = Self {
                port,
                controller_port: free_service_port(),
                dir: tempfile::tempdir().expect("a directory for the broker"),
                child: None,
                starts: 0,
            };
            broker.format().await;
            broker.restart().await;
            broker
        }

        /// `127.0.0.1:<port>`, for `CHAT_KAFKA_BROKERS`.
        pub fn address(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        fn properties(&self) -> std::path::PathBuf {
            self.dir.path().join("server.properties")
        }

        /// Writes the configuration and formats empty storage, under a new
        /// cluster id.
        async fn format(&self) {
            let data = self.dir.path().join("data");
            if data.exists() {
                std::fs::remove_dir_all(&data).expect("delete the broker's data");
            }
            let template = std::fs::read_to_string(kafka_file("server.properties"))
                .expect("read scripts/kafka/server.properties");
            let properties = template
                .replace("@PORT@", &self.port.to_string())
                .replace("@CONTROLLER_PORT@", &self.controller_port.to_string())
                .replace("@DATA@", data.to_str().expect("a UTF-8 path"));
            std::fs::write(self.properties(), properties).expect("write server.properties");
            let (java, jars) = crate::services::kafka_runtime();
            let output = Command::new(java)
                .arg("-cp")
                .arg(jars.join("*"))
                .args(["kafka.tools.StorageTool", "format", "--cluster-id"])
                .arg(kafka_cluster_id())
                .arg("--config")
                .arg(self.properties())
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run Kafka's StorageTool");
            assert!(
                output.status.success(),
                "formatting the broker's storage failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        /// Starts the broker (again) with the data it has, and waits until
        /// it takes requests (it logs that it started).
        pub async fn restart(&mut self) {
            assert!(self.child.is_none(), "the broker is running");
            self.starts += 1;
            let log_path = self.dir.path().join(format!("kafka-{}.log", self.starts));
            let log = std::fs::File::create(&log_path).expect("create the broker's log");
            let (java, jars) = crate::services::kafka_runtime();
            let mut child = Command::new(java)
                .arg(format!(
                    "@{}",
                    kafka_file("jvm.options").to_str().expect("a UTF-8 path")
                ))
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    kafka_file("log4j2.properties").display()
                ))
                .arg("-cp")
                .arg(jars.join("*"))
                .arg("kafka.Kafka")
                .arg(self.properties())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("the log file"))
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start the Kafka broker");
            let pid = child.id().expect("the broker's pid");
            let started = tokio::time::Instant::now();
            loop {
                if let Some(status) = child.try_wait().expect("broker status") {
                    panic!(
                        "the Kafka broker exited with {status} before it started (log: {})",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                if listens_on(pid, self.port)
                    && std::fs::read_to_string(&log_path)
                        .is_ok_and(|log| log.contains("Kafka Server started"))
                {
                    break;
                }
                assert!(
                    started.elapsed() < BROKER_START,
                    "the Kafka broker did not start on port {} within {BROKER_START:?}",
                    self.port,
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            eprintln!(
                "Kafka broker on port {} started in {:?}",
                self.port,
                started.elapsed()
            );
            self.child = Some(child);
        }

        /// Starts the broker again with none of its data (topics, records):
        /// as a broker whose disk was lost, under a new cluster id.
        pub async fn restart_empty(&mut self) {
            self.format().await;
            self.restart().await;
        }

        /// SIGSTOP: the broker keeps its connections but answers nothing.
        pub fn pause(&self) {
            self.signal("-STOP");
        }

        /// SIGCONT, after [`Broker::pause`].
        pub fn resume(&self) {
            self.signal("-CONT");
        }

        fn signal(&self, signal: &str) {
            let child = self.child.as_ref().expect("the broker is running");
            let pid = child.id().expect("the broker's pid").to_string();
            let status = std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} {pid} failed");
        }

        /// SIGKILL, and wait until the process is gone.
        pub async fn kill(&mut self) {
            let mut child = self.child.take().expect("the broker is running");
            child.start_kill().expect("SIGKILL the broker");
            child.wait().await.expect("the broker is reaped");
        }
    }
}

/// Makes `config` a node `node` of a cluster on the PostgreSQL database
/// `postgres`, with the Redis registry and bus under `prefix`.
pub fn cluster_node(config: &mut Config, node: &str, postgres: &str, prefix: &str) {
    use chat_server::config::{BusBackend, RegistryBackend, StoreBackend};
    config.cluster.node_id = node.to_owned();
    config.cluster.store = StoreBackend::Postgres {
        url: postgres.to_owned(),
    };
    config.cluster.registry = RegistryBackend::Redis {
        url: services::redis_url(),
        prefix: prefix.to_owned(),
    };
    config.cluster.bus = BusBackend::Redis {
        url: services::redis_url(),
        prefix: prefix.to_owned(),
    };
}

/// What `chat-server admin …` printed and how it exited.
pub struct AdminRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs this package's `chat-server admin --http <http> [--admin-token
/// <token>] <args>` (see [`admin_cli()`]); for the tests of the server
/// package, where cargo names the binary.
#[macro_export]
macro_rules! admin_cli {
    ($http:expr, $token:expr, $args:expr $(,)?) => {
        $crate::admin_cli(
            ::std::path::Path::new(env!("CARGO_BIN_EXE_chat-server")),
            $http,
            $token,
            $args,
        )
    };
}

/// Runs `binary admin --http <http> [--admin-token <token>] <args>` with no
/// admin variables of the environment.
pub async fn admin_cli(
    binary: &std::path::Path,
    http: &str,
    token: Option<&str>,
    args: &[&str],
) -> AdminRun {
    let mut command = tokio::process::Command::new(binary);
    command
        .env_remove("CHAT_ADMIN_TOKEN")
        .env_remove("CHAT_ADMIN_HTTP")
        .args(["admin", "--http", http])
        .args(token.map(|t| ["--admin-token", t]).into_iter().flatten())
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command ends in time")
        .expect("the command runs");
    AdminRun {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}
