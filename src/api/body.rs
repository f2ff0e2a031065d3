//! A time limit on every request body (`--body-timeout-ms`).
//!
//! Header timeouts stop a client that sends its headers a byte at a time; without a body limit the same
//! client sends the headers quickly and then the body a byte every few seconds, holding a connection (and
//! a slot of its address's `--max-connections-per-ip`) for as long as it likes, on routes that need no
//! credentials (the demo, inbound postbacks). So every body must arrive within the limit; an upload of
//! a file (CSV imports, which may take minutes) must instead never go that long without sending anything.
//! A body that runs out of time ends the request with `408 body_timeout`, and the connection is closed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::{Instant, Sleep};

use super::AppState;

/// Routes whose body is a file streamed for as long as it takes: only silence is limited there.
const UPLOADS: [&str; 1] = ["/api/v1/brands/{brand_id}/imports"];

/// The error a body gives when its time is up; handlers turn it into `408 body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether a body read failed because its time was up.
pub fn timed_out(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Middleware: gives every request's body its time limit.
pub(super) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = Duration::from_millis(state.config.body_timeout_ms);
    let upload = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|route| UPLOADS.contains(&route.as_str()));
    let request = request.map(|body| {
        Body::new(TimedBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(limit)),
            idle: upload.then_some(limit),
            waiting: false,
        })
    });
    next.run(request).await
}

/// A body that fails with [`BodyTimedOut`] when its deadline passes: a fixed one, or (for uploads) a
/// silence limit, counted only while the handler waits for the next piece (a handler busy with what it
/// read does not count against the client).
struct TimedBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    idle: Option<Duration>,
    /// For uploads: the handler is waiting for a piece, since the silence clock was last set.
    waiting: bool,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                if let Some(idle) = this.idle
                    && !this.waiting
                {
                    this.waiting = true;
                    this.sleep.as_mut().reset(Instant::now() + idle);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
