//! One WebSocket connection: hello, then deliver and take acks until it ends.
//!
//! A session moves through three states, each a function below: *connecting* ([`handshake`]: only a
//! hello is accepted, within the hello timeout), *live* ([`live`]: pixels out, acks and pongs in), and
//! *closed* (one place, [`run`], sends the close frame and releases the player's lease). The session never
//! buffers pixels: it asks the store for at most `window` unacknowledged ones, so a client that stops
//! reading holds a bounded amount of memory until the write timeout closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::brand::ConsentMode;
use crate::clock::SharedClock;
use crate::delivery::{Ack, BrowserReport};
use crate::hub::{Hub, Registration, SessionInfo, Signal, wake};
use crate::ids::{BrandId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::ledger::Ledger;
use crate::limits::TokenBucket;
use crate::metrics::Metrics;
use crate::player_token::{self, TokenError};
use crate::protocol::{
    AckResult, ClientMessage, CloseReason, ConsentAsk, MAX_ACK_IDS, PROTOCOL_VERSION,
    ServerMessage, WirePixel,
};
use crate::store::StoreError;

/// What a session needs from the process; built once per connection by the HTTP layer.
#[derive(Clone)]
pub struct SessionContext {
    /// The rules and the durable state behind them.
    pub ledger: Ledger,
    /// This process's registry.
    pub hub: Hub,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Timing and window settings.
    pub limits: SessionLimits,
    /// The client's address (the peer, or the one a trusted proxy forwarded), shown to ops.
    pub client_ip: std::net::IpAddr,
    /// The upgrade request's `Origin` header, checked against the brand's allowlist after the hello.
    pub origin: Option<String>,
    /// The brand the upgrade URL named (`/websocket?brand_id=…`), whose origin allowlist was checked
    /// before the upgrade; the hello must name the same brand.
    pub url_brand: Option<BrandId>,
    /// The upgrade request's `User-Agent`, shown to ops with the session.
    pub user_agent: Option<String>,
    /// Where connects and closes are counted.
    pub metrics: Arc<Metrics>,
    /// What "now" is: player tokens' validity, the session's start.
    pub clock: SharedClock,
}

/// Per-session limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Time allowed between upgrade and hello.
    pub hello_timeout: Duration,
    /// Time allowed for the client to accept one frame.
    pub write_timeout: Duration,
    /// Most unacknowledged pixels in flight.
    pub window: usize,
    /// Server ping interval, announced in the welcome.
    pub heartbeat: Duration,
    /// Average frames a second the client may send (bursts of twice that).
    pub messages_per_second: u32,
    /// Sessions one player may hold in this process.
    pub sessions_per_player: usize,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// We close, telling the client why.
    Close(CloseReason),
    /// The client closed or the connection broke; there is nobody to tell.
    Gone,
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> Self {
        End::Close(reason)
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store call failed in session");
        End::Close(match e {
            StoreError::Closed => CloseReason::Shutdown,
            _ => CloseReason::InternalError,
        })
    }
}

/// Serves one upgraded connection to its end.
///
/// A session's future lives as long as its connection, so its size is paid ~19,000 times over: it is
/// built here from one `async` block (an `async fn` would keep its arguments beside the block that
/// takes them), and every step that runs briefly (the handshake, a delivery, an ack, the close) is boxed
/// for its duration rather than reserving its largest state in every idle session.
pub fn run(socket: WebSocket, mut ctx: SessionContext) -> impl Future<Output = ()> + Send {
    let id = SessionId::generate();
    let span = tracing::info_span!("session", session_id = %id, brand = field::Empty, player = field::Empty);
    async move {
        let mut conn = Conn {
            socket,
            write_timeout: ctx.limits.write_timeout,
            rate: TokenBucket::messages(ctx.limits.messages_per_second, Instant::now()),
        };
        let end = match Box::pin(handshake(&mut conn, &ctx, id)).await {
            Ok((key, welcome, consent_needed)) => {
                let span = tracing::Span::current();
                span.record("brand", key.brand.as_str());
                span.record("player", key.player.as_str());
                let info = SessionInfo {
                    session_id: id,
                    connected_since_ms: ctx.clock.now_ms(),
                    // Checked in the handshake, needed by ops from now on: moved, not copied.
                    user_agent: ctx.user_agent.take(),
                    origin: ctx.origin.take(),
                    client_ip: ctx.client_ip,
                };
                let admitted = Box::pin(admit(&ctx, &key, info)).await;
                match admitted {
                    Err(end) => end,
                    Ok(registration) => {
                        let consent = Consent::new(consent_needed);
                        let end =
                            live(&mut conn, &ctx, &key, welcome, &registration, consent).await;
                        drop(registration);
                        Box::pin(let_go(&ctx, &key, id)).await;
                        end
                    }
                }
            }
            Err(end) => end,
        };
        match end {
            End::Close(reason) => {
                tracing::debug!(
                    code = reason.code(),
                    reason = reason.as_str(),
                    "closing session"
                );
                ctx.metrics.ws_closed(reason.as_str());
                if let Some(limit) = reason.limit() {
                    ctx.metrics.limit_hit(limit);
                }
                Box::pin(conn.close(reason)).await;
            }
            End::Gone => {
                tracing::debug!("client went away");
                ctx.metrics.ws_closed("client_gone");
            }
        }
    }
    .instrument(span)
}

/// The WebSocket plus the write timeout every send obeys and the rate every frame received is held to.
struct Conn {
    socket: WebSocket,
    write_timeout: Duration,
    rate: TokenBucket,
}

impl Conn {
    async fn send(&mut self, text: String) -> Result<(), End> {
        // Boxed: a send with its timer is the biggest state of a live session, and brief (see `run`).
        let sending = Box::pin(tokio::time::timeout(
            self.write_timeout,
            self.socket.send(Message::text(text)),
        ));
        match sending.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(CloseReason::SlowClient)),
        }
    }

    /// Reads the next frame, mapping transport outcomes to how the session ends.
    async fn recv(&mut self) -> Result<Message, End> {
        let received = self.socket.recv().await;
        // Every frame counts, pings included: each costs the hub a wake-up.
        if matches!(received, Some(Ok(_))) && !self.rate.allow(Instant::now()) {
            return Err(End::Close(CloseReason::RateLimited));
        }
        match received {
            Some(Ok(Message::Close(_))) | None => Err(End::Gone),
            Some(Ok(Message::Binary(_))) => Err(End::Close(CloseReason::BadMessage)),
            Some(Ok(message)) => Ok(message),
            Some(Err(e)) => {
                let too_big = e
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                Err(if too_big {
                    End::Close(CloseReason::MessageTooBig)
                } else {
                    End::Gone
                })
            }
        }
    }

    /// The closing handshake: our close frame, then the peer's frames read until its close (or its
    /// end), within a second. Dropping the socket with the peer's frames unread would make the kernel
    /// answer with a reset, and a browser that gets the reset first reports 1006, not our code.
    async fn close(mut self, reason: CloseReason) {
        let frame = CloseFrame {
            code: reason.code(),
            reason: reason.as_str().into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if self.socket.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(message)) = self.socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
}

/// Connecting: waits for a valid hello for an existing brand, from an allowed origin, with the player
/// token the brand requires. Returns the player, the welcome to send and whether the brand asks for
/// consent, so that the brand's settings are not kept for the session's life.
async fn handshake(
    conn: &mut Conn,
    ctx: &SessionContext,
    session: SessionId,
) -> Result<(PlayerKey, String, bool), End> {
    let deadline = tokio::time::sleep(ctx.limits.hello_timeout);
    tokio::pin!(deadline);
    let message = loop {
        let message = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(CloseReason::Shutdown.into()),
            _ = &mut deadline => return Err(CloseReason::HelloTimeout.into()),
            message = conn.recv() => message?,
        };
        if let Message::Text(text) = message {
            break ClientMessage::parse(text.as_str())?;
        }
        // Protocol-level ping/pong frames are answered by the WebSocket layer.
    };
    let ClientMessage::Hello {
        v,
        brand_id,
        player_id,
        token,
        attribution,
    } = message
    else {
        return Err(CloseReason::UnexpectedMessage.into());
    };
    if v != PROTOCOL_VERSION {
        return Err(CloseReason::UnsupportedVersion.into());
    }
    let brand = brand_id
        .to_brand_id()
        .map_err(|_| CloseReason::InvalidHello)?;
    if ctx.url_brand.as_ref().is_some_and(|url| *url != brand) {
        return Err(CloseReason::InvalidHello.into());
    }
    let player = PlayerId::parse(&player_id).map_err(|_| CloseReason::InvalidHello)?;
    let Some(settings) = ctx.ledger.brand(&brand).await? else {
        return Err(CloseReason::UnknownBrand.into());
    };
    if !origin_allowed(&settings.settings.allowed_origins, ctx.origin.as_deref()) {
        return Err(CloseReason::OriginNotAllowed.into());
    }
    let required = settings.settings.require_player_token;
    if required || token.is_some() {
        let secret = ctx
            .ledger
            .secret(&brand, crate::brand::SecretKind::Signing)
            .await?;
        let now_ms = ctx.clock.now_ms();
        let checked = match token.as_deref() {
            None => Err(TokenError::Missing),
            Some(token) => {
                player_token::verify(token, &brand, &player, secret.active(now_ms), now_ms / 1000)
            }
        };
        if let Err(e) = checked {
            ctx.metrics.player_token_refused(e.as_str(), required);
            if required {
                tracing::info!(reason = e.as_str(), "player token refused");
                return Err(match e {
                    TokenError::Expired => CloseReason::TokenExpired,
                    _ => CloseReason::InvalidToken,
                }
                .into());
            }
            // Not required yet: the brand is trying tokens out; it sees the failures in the metrics.
            tracing::info!(
                reason = e.as_str(),
                "player token would be refused; the brand does not require one yet"
            );
        }
    }
    let key = PlayerKey::new(brand, player);
    if let Some(click) = attribution {
        let rules = settings.settings.capture_rules();
        let checked = crate::attribution::check(click, rules, ctx.clock.now_ms());
        let click = checked.map_err(|e| {
            tracing::info!(error = %e, "hello refused: a malformed capture");
            CloseReason::InvalidHello
        })?;
        if let Some(click) = click {
            // Stored before the welcome: a client forgets what it captured once welcomed. A store
            // that cannot take it now closes the session so the client comes back with it; a store
            // that refuses to grow (its disk at the floor) does not keep the player's pixels from them.
            match ctx.ledger.capture(&key, click, rules.touch).await {
                Ok(captured) => tracing::debug!(?captured, "browser capture offered"),
                Err(StoreError::Full(why)) => {
                    tracing::warn!(why, "browser capture not kept: the store is full");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let consent_needed = settings.settings.consent != ConsentMode::None;
    let welcome = ServerMessage::Welcome {
        v: PROTOCOL_VERSION,
        session_id: session,
        heartbeat_ms: ctx.limits.heartbeat.as_millis() as u64,
        iframe_sandbox: &settings.settings.iframe_sandbox,
        referrer_policy: &settings.settings.referrer_policy,
        consent: consent_needed.then(|| ConsentAsk {
            mode: settings.settings.consent,
            purposes: match settings.settings.consent {
                ConsentMode::Tcf => &settings.settings.consent_tcf_purposes,
                _ => &[],
            },
            timeout_ms: settings.settings.consent_timeout_ms,
        }),
    };
    Ok((key, welcome.to_json(), consent_needed))
}

/// Whether a page from `origin` may open sessions for a brand with this allowlist (empty allows any).
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    allowed.is_empty()
        || origin.is_some_and(|origin| allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)))
}

/// Gives up what the ended session held in the store: the player's lease (announced, so another
/// session takes the pixels in flight) and, on a shared store, its place in the player's count.
async fn let_go(ctx: &SessionContext, key: &PlayerKey, session: SessionId) {
    if let Err(e) = ctx.ledger.release(key, session).await {
        tracing::error!(error = %e, "could not release the lease; it frees when it runs out");
    }
    if ctx.ledger.shared()
        && let Err(e) = ctx.ledger.release_session(key, session).await
    {
        tracing::debug!(error = %e, "could not release the session's claim; it runs out by itself");
    }
}

/// Counts the session against the player's limit: in this process's hub, and on a shared store across
/// every process too. A shared store that is away lets the session in, uncounted across processes: it
/// can do nothing until the store is back.
async fn admit(
    ctx: &SessionContext,
    key: &PlayerKey,
    info: SessionInfo,
) -> Result<Registration, End> {
    let (session, max) = (info.session_id, ctx.limits.sessions_per_player);
    let shared = match ctx.ledger.shared() {
        true => Some(serde_json::to_string(&info).map_err(|_| CloseReason::InternalError)?),
        false => None,
    };
    let registration = ctx
        .hub
        .register(key.clone(), info, max)
        .ok_or(CloseReason::TooManySessions)?;
    let Some(info) = shared else {
        return Ok(registration);
    };
    match ctx.ledger.claim_session(key, session, &info, max).await {
        Ok(true) => Ok(registration),
        Ok(false) => Err(CloseReason::TooManySessions.into()),
        Err(StoreError::Unavailable(why)) => {
            tracing::debug!(%why, "the store is away; the session is not counted across processes");
            Ok(registration)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a session knows of its page's consent, for brands with a `consent` setting.
struct Consent {
    /// The brand asks for consent: nothing is sent before the page says it has it.
    needed: bool,
    /// What the page last said: it has consent, or not; `None` until it says.
    granted: Option<bool>,
    /// Pixels the page held back (no consent for their vendor): not sent to it again.
    withheld: Vec<PixelId>,
}

/// Most pixel ids a session remembers as held back by its page; older ones may be sent again (and
/// held back again).
const MAX_WITHHELD: usize = 1024;

impl Consent {
    fn new(needed: bool) -> Self {
        Consent {
            needed,
            granted: None,
            withheld: Vec::new(),
        }
    }

    /// Whether the page may be sent pixels.
    fn may_deliver(&self) -> bool {
        !self.needed || self.granted == Some(true)
    }
}

/// Live: sends what the store leases to this session, takes acks, keeps the heartbeat.
async fn live(
    conn: &mut Conn,
    ctx: &SessionContext,
    key: &PlayerKey,
    welcome: String,
    registration: &Registration,
    mut consent: Consent,
) -> End {
    let signal = registration.signal();
    if let Err(end) = conn.send(welcome).await {
        return end;
    }
    // Heartbeat ticks seen since the client last said anything.
    let mut silent_ticks = 0u8;
    // Acks the store could not take yet (it was unavailable): taken again before the next lease.
    let mut held: Vec<Ack> = Vec::new();
    loop {
        // Each step says whether the queue may have something for this session now.
        let step = tokio::select! {
            _ = ctx.shutdown.cancelled() => Err(CloseReason::Shutdown.into()),
            // Whatever woke us, the queue is looked at below, so a heartbeat also retries what a lost poke missed.
            _ = signal.notified() => {
                if signal.take() & wake::HEARTBEAT == 0 {
                    Ok(true)
                } else {
                    // Closed after two full intervals of silence: the third tick without a word.
                    silent_ticks += 1;
                    if silent_ticks > 2 {
                        return CloseReason::HeartbeatTimeout.into();
                    }
                    conn.send(ServerMessage::Ping.to_json()).await.map(|()| true)
                }
            }
            message = conn.recv() => {
                silent_ticks = 0;
                match message {
                    Ok(Message::Text(text)) => Box::pin(on_message(ctx, key, signal, text.as_str(), &mut held, &mut consent)).await,
                    Ok(_) => Ok(false),
                    Err(end) => Err(end),
                }
            }
        };
        match step {
            Err(end) => return end,
            // A pong changes nothing in the queue: asking the store after each would double an idle
            // hub's store calls.
            Ok(false) => continue,
            Ok(true) => {}
        }
        if let Err(end) = Box::pin(pump(conn, ctx, key, signal, &mut held, &consent)).await {
            return end;
        }
    }
}

/// Handles a client message; true when it may have made room for more pixels (an ack, consent given).
async fn on_message(
    ctx: &SessionContext,
    key: &PlayerKey,
    signal: &Signal,
    text: &str,
    held: &mut Vec<Ack>,
    consent: &mut Consent,
) -> Result<bool, End> {
    match ClientMessage::parse(text)? {
        ClientMessage::Ack { ids, results } => {
            if ids.len() > MAX_ACK_IDS || results.len() > MAX_ACK_IDS {
                return Err(CloseReason::UnexpectedMessage.into());
            }
            let parse = |id: &str| PixelId::parse(id).map_err(|_| CloseReason::BadMessage);
            let mut acks: Vec<Ack> = ids
                .iter()
                .map(|id| parse(id).map(Ack::fired))
                .collect::<Result<_, _>>()?;
            for result in &results {
                let id = parse(&result.id)?;
                let report = BrowserReport::new(
                    result.result == AckResult::Fired,
                    &result.reason,
                    result.message.as_deref(),
                );
                match acks.iter_mut().find(|ack| ack.id == id) {
                    Some(ack) => ack.report = Some(report),
                    None => acks.push(Ack {
                        id,
                        report: Some(report),
                    }),
                }
            }
            held.extend(acks);
            settle(ctx, key, signal, held).await
        }
        ClientMessage::Pong => Ok(false),
        ClientMessage::Hello { .. } => Err(CloseReason::UnexpectedMessage.into()),
        ClientMessage::Consent { granted } => {
            if !consent.needed || (!granted && consent.granted == Some(false)) {
                return Ok(false);
            }
            consent.granted = Some(granted);
            if granted {
                // Said again when the page's answer changed (a vendor's consent, say): what it held
                // back may now be fine to fire.
                consent.withheld.clear();
                return Ok(true);
            }
            // Acks the page sent first are for pixels it fired while it had consent.
            settle(ctx, key, signal, held).await?;
            withhold(ctx, key, signal, None).await?;
            signal.released();
            Ok(false)
        }
        ClientMessage::Withheld { ids } => {
            if ids.len() > MAX_ACK_IDS {
                return Err(CloseReason::UnexpectedMessage.into());
            }
            let ids: Vec<PixelId> = ids
                .iter()
                .map(|id| PixelId::parse(id).map_err(|_| CloseReason::BadMessage))
                .collect::<Result<_, _>>()?;
            if !consent.needed {
                // A brand that asks for no consent has nothing to wait for.
                return Ok(false);
            }
            consent.withheld.extend(ids.iter().cloned());
            if consent.withheld.len() > MAX_WITHHELD {
                consent
                    .withheld
                    .drain(..consent.withheld.len() - MAX_WITHHELD);
            }
            let waiting = withhold(ctx, key, signal, Some(ids)).await?;
            signal.acked(waiting);
            Ok(true)
        }
    }
}

/// Tells the store the page may not fire these pixels (`None`: any of the player's); returns how many
/// began waiting. A store that is unavailable leaves them as they are: the session sends nothing the
/// page refused, and a lease it holds runs out by itself.
async fn withhold(
    ctx: &SessionContext,
    key: &PlayerKey,
    signal: &Signal,
    only: Option<Vec<PixelId>>,
) -> Result<usize, End> {
    match ctx.ledger.withhold(key, signal.session, only).await {
        Ok(waiting) => {
            tracing::debug!(waiting, "pixels wait for consent");
            Ok(waiting)
        }
        Err(StoreError::Unavailable(why)) => {
            tracing::debug!(%why, "the store is unavailable; pixels held back stay as they are");
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// Passes the held acks to the store; true once it took them. A store that is unavailable (a shared
/// one that is down) keeps them held, to be passed again before the next lease, and the session stays
/// open: the browser has fired those pixels, and nothing it says is lost while the store is away.
async fn settle(
    ctx: &SessionContext,
    key: &PlayerKey,
    signal: &Signal,
    held: &mut Vec<Ack>,
) -> Result<bool, End> {
    if held.is_empty() {
        return Ok(true);
    }
    match ctx.ledger.acknowledge(key, held).await {
        Ok(removed) => {
            tracing::debug!(acked = held.len(), removed, "ack");
            signal.acked(held.len());
            held.clear();
            Ok(true)
        }
        Err(StoreError::Unavailable(why)) => {
            // A session holds at most its window in flight, so this stays small; past the bound, the
            // oldest go (their pixels stay in flight, and their redelivery is acked by the browser's
            // memory without a fire).
            if held.len() > MAX_ACK_IDS {
                held.drain(..held.len() - MAX_ACK_IDS);
            }
            tracing::debug!(%why, held = held.len(), "the store is unavailable; acks held");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends the next pixels the store leases to this session, if any, after passing on held acks; nothing
/// while the page has not said it has the consent the brand asks for. While the store is unavailable the
/// session waits (it is woken, or looks again at its heartbeat).
async fn pump(
    conn: &mut Conn,
    ctx: &SessionContext,
    key: &PlayerKey,
    signal: &Signal,
    held: &mut Vec<Ack>,
    consent: &Consent,
) -> Result<(), End> {
    if !settle(ctx, key, signal, held).await? || !consent.may_deliver() {
        return Ok(());
    }
    let pixels = match ctx
        .ledger
        .lease_for(key, signal.session, ctx.limits.window, &consent.withheld)
        .await
    {
        Ok(leased) => {
            signal.set_waiting(leased.held_elsewhere);
            leased.pixels
        }
        Err(StoreError::Unavailable(why)) => {
            tracing::debug!(%why, "the store is unavailable; delivery waits");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if pixels.is_empty() {
        return Ok(());
    }
    tracing::debug!(count = pixels.len(), "delivering");
    signal.sent(pixels.len());
    let message = ServerMessage::Deliver {
        pixels: pixels.iter().map(WirePixel::from).collect(),
    };
    conn.send(message.to_json()).await
}
#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: Future>(_: impl Fn(WebSocket, SessionContext) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle session is mostly this future, held ~19,000 times over: 1,632 bytes now, 3,240 before
    /// the brief steps were boxed (see [`run`]). Unboxing the handshake (1,832) or the close (2,352)
    /// fails here.
    #[test]
    fn a_session_future_stays_small() {
        let size = future_size(run);
        assert!(size <= 1750, "a session's future takes {size} bytes");
    }
}
