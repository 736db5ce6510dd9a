//! A TCP fault proxy on loopback: tests put it between a client and the
//! server, or between the server and PostgreSQL or Redis, and then delay,
//! stall, blackhole or cut the traffic, or refuse new connections. These
//! machines have no kernel traffic shaping; this is how network faults are
//! made here.
//!
//! Each direction has its own [`Fault`]: `upstream` is what the client
//! sends to the service, `downstream` what comes back. A change applies at
//! once to the connections already open and to new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What happens to the bytes going one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded as they come.
    None,
    /// Each chunk is forwarded after this long.
    Delay(Duration),
    /// Read and thrown away: the sender sees its writes succeed, the
    /// receiver never gets them (a one-way partition).
    Blackhole,
    /// Not read at all: the sender's socket buffers fill and its writes
    /// block, as with a peer that stopped reading.
    Stall,
}

struct Shared {
    upstream: watch::Sender<Fault>,
    downstream: watch::Sender<Fault>,
    refuse: watch::Sender<bool>,
    /// Cancelled by [`Proxy::cut`]; replaced by a fresh one right after.
    generation: Mutex<CancellationToken>,
    accepted: AtomicU64,
}

/// A proxy listening on a loopback port, forwarding to `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts forwarding a new loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: watch::channel(Fault::None).0,
            downstream: watch::channel(Fault::None).0,
            refuse: watch::channel(false).0,
            generation: Mutex::new(CancellationToken::new()),
            accepted: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            shared.clone(),
            stop.clone(),
        ));
        Self { addr, shared, stop }
    }

    /// Where clients connect instead of `upstream`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what happens to the bytes going to the service.
    pub fn set_upstream(&self, fault: Fault) {
        self.shared.upstream.send_replace(fault);
    }

    /// Sets what happens to the bytes coming back from the service.
    pub fn set_downstream(&self, fault: Fault) {
        self.shared.downstream.send_replace(fault);
    }

    /// Sets both directions.
    pub fn set(&self, fault: Fault) {
        self.set_upstream(fault);
        self.set_downstream(fault);
    }

    /// Closes every open connection at once, on both sides, as when a
    /// service or the path to it goes away.
    pub fn cut(&self) {
        let mut generation = self.shared.generation.lock().expect("proxy lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// While `true`, new connections are accepted and reset at once, as by
    /// a service that is down.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refuse.send_replace(refuse);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if *shared.refuse.borrow() {
            reset(client);
            continue;
        }
        let generation = shared.generation.lock().expect("proxy lock").clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                reset(client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pump(client_read, server_write, shared.upstream.subscribe());
            let down = pump(server_read, client_write, shared.downstream.subscribe());
            tokio::select! {
                _ = generation.cancelled() => {}
                // Either side closing ends the connection.
                _ = async { tokio::join!(up, down) } => {}
            }
        });
    }
}

/// Drops a socket with SO_LINGER 0, so the peer gets a reset rather than
/// an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Copies `from` into `to` according to the fault of the moment. Returns
/// when either side closes; a half-close is passed on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut fault: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = *fault.borrow_and_update();
        if now == Fault::Stall {
            if fault.changed().await.is_err() {
                return;
            }
            continue;
        }
        let n = tokio::select! {
            biased;
            // A stall must stop reading at once, not after the next chunk.
            _ = fault.changed() => continue,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
        };
        // A chunk read just before a stall waits for it to be lifted.
        while *fault.borrow_and_update() == Fault::Stall {
            if fault.changed().await.is_err() {
                return;
            }
        }
        let now = *fault.borrow();
        match now {
            Fault::Blackhole => continue,
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::None | Fault::Stall => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo service on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).await.unwrap();
        let mut got = vec![0u8; bytes.len()];
        tokio::time::timeout(crate::WAIT, stream.read_exact(&mut got))
            .await
            .expect("echo in time")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn forwards_blackholes_stalls_cuts_and_refuses() {
        let proxy = Proxy::start(echo().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");

        // Blackholed bytes are gone for good; later ones flow again.
        proxy.set_upstream(Fault::Blackhole);
        stream.write_all(b"lost").await.unwrap();
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut one)).await;
        assert!(read.is_err(), "a blackholed write came back");
        // The proxy may still be holding the blackholed chunk when the fault
        // changes; a sentinel round trip shows when the path is clear.
        proxy.set_upstream(Fault::None);
        assert_eq!(round_trip(&mut stream, b"back").await, b"back");

        // A stall holds bytes back until it is lifted, then delivers them.
        proxy.set_downstream(Fault::Stall);
        stream.write_all(b"held").await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut one)).await;
        assert!(read.is_err(), "a stalled direction delivered");
        proxy.set_downstream(Fault::None);
        let mut held = [0u8; 4];
        tokio::time::timeout(crate::WAIT, stream.read_exact(&mut held))
            .await
            .expect("stalled bytes arrive once the stall is lifted")
            .unwrap();
        assert_eq!(&held, b"held");

        // A cut closes the connection; new ones work.
        proxy.cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(crate::WAIT, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the cut connection stayed open");
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"again").await, b"again");

        // Refused connections are reset at once.
        proxy.refuse(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut rest = Vec::new();
        let answer = tokio::time::timeout(crate::WAIT, refused.read_to_end(&mut rest))
            .await
            .expect("a refused connection is closed at once");
        assert!(answer.is_err() || rest.is_empty());
        proxy.refuse(false);
        assert_eq!(round_trip(&mut stream, b"still").await, b"still");
        assert_eq!(proxy.accepted(), 3);
    }
}
