//! Where the load goes: a remote server or one started in this process.

use anyhow::Context;
use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::user_service_client::UserServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub struct Target {
    pub url: String,
    embedded: Option<(
        CancellationToken,
        tokio::task::JoinHandle<()>,
        tempfile::TempDir,
    )>,
}

impl Target {
    pub fn remote(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            embedded: None,
        }
    }

    pub async fn embedded(durability: &str) -> anyhow::Result<Self> {
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
        Ok(Self {
            url,
            embedded: Some((stop, task, dir)),
        })
    }

    pub async fn stop(self) {
        if let Some((stop, task, _dir)) = self.embedded {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// A new HTTP/2 connection.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Endpoint::from_shared(self.url.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    /// Registers a user and returns its secret.
    pub async fn register(
        &self,
        users: &mut UserServiceClient<Channel>,
        username: &str,
    ) -> anyhow::Result<String> {
        let r = users
            .register(pb::RegisterRequest {
                username: username.into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("registering {username}"))?;
        Ok(r.into_inner().secret)
    }

    pub async fn chat(&self, secret: &str) -> anyhow::Result<pb::AuthedChatClient> {
        let bearer = pb::Bearer::new(secret).context("secret is not a header value")?;
        Ok(ChatServiceClient::with_interceptor(
            self.channel().await?,
            bearer,
        ))
    }
}

/// A short random tag so that runs against one server do not collide.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or_default();
    format!("{:06x}", nanos & 0xff_ffff)
}
