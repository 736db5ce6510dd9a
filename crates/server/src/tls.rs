//! TLS for the listeners: the certificate and key (`tls_cert`,
//! `tls_key`), loaded and checked, reloaded without a restart (SIGHUP, or
//! a change of either file, polled), and the accept loop that turns a
//! listener's TCP connections into TLS connections for the gRPC and HTTP
//! servers.
//!
//! One [`Certificates`] serves both listeners: every handshake asks it for
//! the certificate of the moment, so a reload takes effect at the next
//! handshake while open connections keep the one they started with. This
//! module does not route requests or know what is served over the
//! connections it hands out. It also holds what clients share about TLS
//! (the words for a refused certificate, [`refusal`]) and makes the
//! certificates of `chat-server tls self-signed`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for a change.
pub const POLL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped: a
/// connection that sends nothing (or plaintext) must not hold a slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; more connections wait in
/// the listen backlog.
const MAX_HANDSHAKES: usize = 256;

/// The certificate chain and private key files, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's certificate first (`tls_cert`).
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`tls_key`).
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a PEM certificate chain: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: not a usable PEM private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{} is not the key of the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

impl TlsError {
    /// The setting whose file is at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            TlsError::Read { setting, .. } => setting,
            TlsError::Key { .. } | TlsError::Mismatch { .. } => "tls_key",
            TlsError::NoCertificate { .. }
            | TlsError::Certificate { .. }
            | TlsError::Generate(_)
            | TlsError::Setup(_) => "tls_cert",
        }
    }
}

/// The cryptography of every TLS configuration here: ring, whose C part
/// builds in seconds (aws-lc-rs's takes minutes and cmake). rustls marks it
/// deprecated for lacking post-quantum key exchange, which neither the
/// clients here nor tonic's offer yet.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks `files`: a chain of at least one certificate, a key
/// rustls can sign with, and that key belonging to the first certificate.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let read = |setting, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            setting,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("tls_cert", &files.cert)?;
    let key_pem = read("tls_key", &files.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_error = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// What a file looked like when last read: a change of either stamp is a
/// renewal to load.
type Stamps = [Option<(SystemTime, u64)>; 2];

fn stamps(files: &TlsFiles) -> Stamps {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [stamp(&files.cert), stamp(&files.key)]
}

/// The certificate served now, replaced as a whole by a reload.
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps at the last attempt, successful or not, so that
    /// broken files are reported once, not at every poll.
    seen: Mutex<Stamps>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads `files`; an error here stops the server at start.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let seen = stamps(&files);
        let current = load(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
        }))
    }

    /// Loads the files again; new handshakes use them from now on. On an
    /// error the certificate served stays the one before.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.files)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(loaded);
        }
        Ok(())
    }

    /// Reloads if either file changed since the last attempt.
    fn reload_if_changed(&self) {
        let now = stamps(&self.files);
        let changed = match self.seen.lock() {
            Ok(mut seen) if *seen != now => {
                *seen = now;
                true
            }
            _ => false,
        };
        if changed {
            self.reload_logged("the certificate files changed");
        }
    }

    fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.files.cert.display(), why, "TLS certificate reloaded")
            }
            Err(e) => tracing::error!(
                error = %e,
                why,
                "TLS certificate not reloaded: serving the previous one"
            ),
        }
    }

    /// A TLS server configuration offering `alpn`, with these
    /// certificates.
    fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The acceptor of the gRPC listener: HTTP/2 only.
    pub fn grpc(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        self.server_config(&[b"h2"])
    }

    /// The acceptor of the HTTP listener: HTTP/2 and HTTP/1.1.
    pub fn http(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        self.server_config(&[b"h2", b"http/1.1"])
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.clone())
    }
}

/// Reloads `certificates` on SIGHUP and whenever a file changes, until
/// `stop`.
pub async fn watch(certificates: Arc<Certificates>, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(
            |e| tracing::warn!(error = %e, "no SIGHUP handler: reloading on file changes only"),
        )
        .ok();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup_received => {
                if let Ok(mut seen) = certificates.seen.lock() {
                    *seen = stamps(&certificates.files);
                }
                certificates.reload_logged("SIGHUP");
            }
            _ = poll.tick() => certificates.reload_if_changed(),
        }
    }
}

/// One accepted TLS connection, with the client's address (the rate
/// limits are per address).
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    pub remote: SocketAddr,
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().0.connect_info()
    }
}

/// The TLS connections of `listener`: accepted, handshaken (at most
/// [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]) and
/// handed out in the order their handshakes end. A failed handshake (a
/// plaintext client, an untrusting one) closes that connection and is
/// logged at debug level. Accepting stops, and the listener closes, at
/// `stop` or when the stream is dropped.
pub fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<TlsConnection>> {
    let (connections, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                _ = connections.closed() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                _ = connections.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait for
                        // some to close rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Nagle's algorithm would hold small frames back for up to 40 ms.
            let _ = tcp.set_nodelay(true);
            let (acceptor, connections) = (acceptor.clone(), connections.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = connections.send(Ok(TlsConnection { stream, remote })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

/// Why a client refused a server's certificate, in words an operator acts
/// on, if `error` (or one of its causes) is such a refusal.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError as Why;
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::InvalidCertificate(why)) = error.downcast_ref() {
            let words = match why {
                Why::UnknownIssuer | Why::BadSignature => {
                    "it is not signed by a trusted CA (give the CA with --ca-cert FILE)".into()
                }
                Why::NotValidForName | Why::NotValidForNameContext { .. } => {
                    "it is not valid for this host name".into()
                }
                Why::Expired | Why::ExpiredContext { .. } => "it has expired".into(),
                Why::NotValidYet | Why::NotValidYetContext { .. } => "it is not valid yet".into(),
                Why::Revoked => "it is revoked".into(),
                other => format!("{other:?}"),
            };
            return Some(words);
        }
        // An `io::Error`'s `source` skips the error it wraps.
        cause = match error.downcast_ref::<io::Error>().and_then(|e| e.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// A certificate and key for `hosts` (names or IP addresses), signed by
/// itself and valid for a year, in PEM: for trying TLS out.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), TlsError> {
    use chrono::Datelike as _;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    let today = chrono::Utc::now().date_naive();
    // The 28th at most: a year after 29 February is no date.
    let day = today.day().min(28) as u8;
    let month = today.month() as u8;
    params.not_before = rcgen::date_time_ymd(today.year(), month, day);
    params.not_after = rcgen::date_time_ymd(today.year() + 1, month, day);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts.first().cloned().unwrap_or_default(),
    );
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}
