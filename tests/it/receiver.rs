//! `Receiver`: a local HTTP server that plays an affiliate's postback endpoint. Each path answers from a
//! script (status, `Retry-After`, delay, redirect), then `200 OK`; every hit is recorded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<&'static str>,
    pub delay: Option<Duration>,
    pub location: Option<String>,
    /// The body, instead of `OK` (or `answer <status>`).
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            ..Default::default()
        }
    }
}

/// A request the receiver saw.
#[derive(Clone, Debug)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub referer: Option<String>,
    pub body: String,
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    running: Mutex<(usize, usize)>, // (now, most at once)
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A receiver on `addr` (a port kept for it while it was "down").
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("the receiver binds");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            shared,
            task: Some(task),
        }
    }

    /// A loopback address where nothing listens: connections are refused.
    pub async fn down() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next answers of `path`, in order; after them it answers `200 OK`.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .script
            .lock()
            .unwrap()
            .insert(path.to_owned(), replies.into_iter().collect());
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    pub fn hits_of(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// The most requests it was answering at one time.
    pub fn most_at_once(&self) -> usize {
        self.shared.running.lock().unwrap().1
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    shared.hits.lock().unwrap().push(Hit {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        referer: parts
            .headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    let reply = shared
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| Reply::status(200));
    {
        let mut running = shared.running.lock().unwrap();
        running.0 += 1;
        running.1 = running.1.max(running.0);
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    shared.running.lock().unwrap().0 -= 1;
    let mut headers = HeaderMap::new();
    if let Some(after) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, after.parse().unwrap());
    }
    if let Some(location) = &reply.location {
        headers.insert(header::LOCATION, location.parse().unwrap());
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let text = if let Some(body) = reply.body {
        body
    } else if status.is_success() {
        "OK".to_owned()
    } else {
        format!("answer {}", reply.status)
    };
    (status, headers, text).into_response()
}

/// An endpoint that accepts connections and never answers, as a hung affiliate server does.
pub struct Hanging {
    pub addr: SocketAddr,
    open: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    task: JoinHandle<()>,
}

impl Hanging {
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// On `addr` (another loopback address, to order hosts).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&open);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                held.lock().unwrap().push(socket);
            }
        });
        Hanging { addr, open, task }
    }

    /// Connections it holds.
    pub fn connections(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.task.abort();
    }
}
