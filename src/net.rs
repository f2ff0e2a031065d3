//! Connections, below HTTP: the accept loop, optional TLS, and the guards a public port needs.
//!
//! axum's own `serve` has no header timeout, so a client sending its request a byte a minute (slow
//! loris) or idling between keep-alive requests would hold a file descriptor forever. This loop serves
//! each connection with hyper directly, with `--header-timeout-ms` on every request's headers (idle
//! keep-alive time included), a per-address connection cap, and TLS when a certificate is configured.
//! The router sees the peer's address as [`ConnectInfo`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::api::ApiError;
use crate::limits::{IpSlot, Limit, PerIp, TrustedProxies};
use crate::metrics::Metrics;

/// What the accept loop needs besides the listener and the routes.
#[derive(Clone)]
pub struct Guards {
    /// Connections per client address.
    pub per_ip: Arc<PerIp>,
    /// Proxies whose connections are not counted per address here (their clients are, at the upgrade).
    pub proxies: TrustedProxies,
    /// Time allowed for a request's headers, and for the TLS handshake.
    pub header_timeout: Duration,
    /// Where refusals and timeouts are counted.
    pub metrics: Arc<Metrics>,
}

/// Serves HTTP (and WebSocket upgrades) on `listener` until `stop` is cancelled, then asks every open
/// HTTP connection to finish its request in flight and waits for them. Upgraded WebSockets are not
/// waited for here: their sessions watch the shutdown token themselves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<Tls>>,
    guards: Guards,
    stop: CancellationToken,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = guards.proxies.trusts(peer.ip());
        // Clients behind a trusted proxy are counted by their forwarded address at the upgrade.
        let slot = if proxy {
            None
        } else {
            match guards.per_ip.acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    guards.metrics.limit_hit(Limit::ConnectionsPerIp);
                    if tls.is_none() {
                        tokio::spawn(refuse(stream));
                    }
                    continue;
                }
            }
        };
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let guards = guards.clone();
        let stop = stop.clone();
        let router = router.clone();
        connections.spawn(async move {
            let io = match tls {
                None => Stream::Plain(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(guards.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => Stream::Tls(Box::new(stream)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            guards.metrics.limit_hit(Limit::HeaderTimeout);
                            return;
                        }
                    }
                }
            };
            // A trusted proxy times its own clients out and reuses idle connections to the hub: closing
            // one under it would race its next request (a 502), so its connections have no header timeout.
            let header_timeout = (!proxy).then_some(guards.header_timeout);
            let io = Counted { io, _slot: slot };
            serve_connection(io, peer, router, header_timeout, &guards, stop).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The answer to a plain-HTTP connection over its address's cap, without hyper: the request's head is
/// read (a client may not read an answer that comes before its request), the 429 written, and the socket
/// gone within a second whatever the client does. Over TLS the connection is just closed: a handshake is
/// too much to spend on it.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, body) = ApiError::TooManyConnections.status_and_body();
    let body = serde_json::to_string(&body).expect("an error body always serialises");
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await? {
                0 => return Ok(()),
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what else the client sent, so closing does not reset the connection before it reads.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

async fn serve_connection(
    io: Counted,
    peer: SocketAddr,
    router: Router,
    header_timeout: Option<Duration>,
    guards: &Guards,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            guards.metrics.limit_hit(Limit::HeaderTimeout);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A client connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection that holds its address's slot for as long as the socket lives, through a WebSocket
/// upgrade too (hyper hands the socket itself to the upgraded session).
struct Counted {
    io: Stream,
    _slot: Option<IpSlot>,
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            Stream::Plain($io) => $call,
            Stream::Tls($io) => $call,
        }
    };
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// The TLS certificate and key in force, reloaded when their files change or on SIGHUP, so a renewed
/// certificate (certbot, cert-manager) is served without a restart. A reload that fails keeps the
/// certificate in force and says why in the log.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// How often the certificate files are looked at for changes.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl Tls {
    /// Loads the PEM certificate chain and private key; fails with a message naming the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let stamp = stamps(cert, key);
        let config = server_config(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Loaded { config, stamp }),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().expect("not poisoned");
        TlsAcceptor::from(Arc::clone(&current.config))
    }

    /// Loads the files again; `Ok(false)` when they did not change since the last load.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let stamp = stamps(&self.cert, &self.key);
        if !force && self.current.read().expect("not poisoned").stamp == stamp {
            return Ok(false);
        }
        let loaded = server_config(&self.cert, &self.key);
        let mut current = self.current.write().expect("not poisoned");
        // A half-written renewal fails now and is tried again when the files change once more.
        current.stamp = stamp;
        current.config = loaded?;
        Ok(true)
    }

    /// Reloads on SIGHUP and when the files change, until `stop`.
    pub fn watch(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) {
        tasks.spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(TLS_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<Option<()>>();
                let force = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    _ = hup => true,
                };
                let this = Arc::clone(&self);
                let reloaded = tokio::task::spawn_blocking(move || this.reload(force))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match reloaded {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.tls_reload(true);
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        metrics.tls_reload(false);
                        tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in force");
                    }
                }
            }
        });
    }
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "the TLS certificate file {} holds no PEM certificate",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "the TLS key {} does not fit the certificate {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
