//! Announcements across processes: a player whose queue may have work, postbacks added. Each is
//! published on a Redis channel and heard by every process's listener. Pub/sub is a hint: a message
//! lost (a listener reconnecting) costs latency, never a pixel, since every session looks at its queue
//! again at its next heartbeat.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;

use super::keys::{ANNOUNCE_CHANNEL, POSTBACKS_CHANNEL};
use super::{RedisStore, Shared, Target};
use crate::ids::{BrandId, PlayerId, PlayerKey};
use crate::store::Announcement;

/// Longest wait between two attempts to reconnect the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl RedisStore {
    /// Tells this process's sessions now, and every other process's through Redis.
    pub(super) fn publish_player(&self, key: &PlayerKey) {
        let _ = self.shared.announce.send(Announcement::Player(key.clone()));
        let message = format!(
            "{} {} {}",
            self.shared.origin,
            key.brand.as_str(),
            key.player.as_str()
        );
        self.publish(ANNOUNCE_CHANNEL, message);
    }

    /// Tells this process's postback sender now, and every other process's through Redis.
    pub(super) fn publish_postbacks(&self) {
        raise(&self.shared);
        self.publish(POSTBACKS_CHANNEL, self.shared.origin.clone());
    }

    /// Publishes in the background: a hint, which the caller does not wait for.
    fn publish(&self, channel: &'static str, message: String) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut conn = self.conn();
        tokio::spawn(async move {
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, channel, "an announcement was not published");
            }
        });
    }
}

/// Wakes the postback sender, waiting now or at its next look.
fn raise(shared: &Shared) {
    shared.postbacks.notify_waiters();
    shared.postbacks.notify_one();
}

/// Listens to both channels until the handle is gone, reconnecting after a failure (with a growing
/// pause, at most [`MAX_BACKOFF`]). On a cluster it listens on one node, the next one when that one
/// fails: a message published on any node of a cluster reaches every node's subscribers.
pub(super) async fn listen(target: Target, shared: Weak<Shared>) {
    let clients: Vec<redis::Client> = target
        .nodes()
        .iter()
        .filter_map(|url| redis::Client::open(url.as_str()).ok())
        .collect();
    if clients.is_empty() {
        return; // the URLs were checked when the engine connected
    }
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    let mut node = 0usize;
    loop {
        let client = &clients[node % clients.len()];
        node += 1;
        match subscribed(client).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                if !std::mem::take(&mut first) {
                    // Back after a loss: what was announced meanwhile was not heard, and calls made
                    // while Redis was away failed. Every session looks at its queue again.
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let _ = shared.announce.send(Announcement::Everyone);
                    raise(&shared);
                }
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                    hear(&shared, message.get_channel_name(), &payload);
                }
                tracing::warn!("lost the Redis announcement channel; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen to Redis announcements; retrying"),
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        drop(shared);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribed(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub
        .subscribe(&[ANNOUNCE_CHANNEL, POSTBACKS_CHANNEL])
        .await?;
    Ok(pubsub)
}

/// One message: passed on unless this handle sent it (it told its own already).
fn hear(shared: &Arc<Shared>, channel: &str, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let mut parts = text.split(' ');
    if parts.next() == Some(shared.origin.as_str()) {
        return;
    }
    if channel == POSTBACKS_CHANNEL {
        raise(shared);
        return;
    }
    let (Some(brand), Some(player)) = (parts.next(), parts.next()) else {
        return;
    };
    if let (Ok(brand), Ok(player)) = (BrandId::parse(brand), PlayerId::parse(player)) {
        let _ = shared
            .announce
            .send(Announcement::Player(PlayerKey::new(brand, player)));
    }
}
