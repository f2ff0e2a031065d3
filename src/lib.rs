//! pixelhub delivers affiliate conversion pixels to players' browsers, exactly once.
//!
//! A brand's back end (or its affiliate system) queues pixels for a player over HTTP; the queue is durable
//! before the call is answered. A small script on the brand's pages keeps a WebSocket open to the hub, which
//! pushes each pending pixel the moment the player is online: now, or at the next visit. The browser fires
//! the pixel, remembers that it did, and acknowledges it; only the acknowledgement removes it from the queue.
//!
//! # Layout
//! - [`player_token`]: the brand-signed proof that a page belongs to a player, checked at the hello.
//! - [`api_key`]: brand API keys, which act for one brand only; stored as hashes.
//! - [`clock`]: the wall clock as one injectable handle: what "now" is for expiry, retention and retries.
//! - [`config`]: every setting, from flags and environment, with its default.
//! - [`attribution`]: clicks the browser captured on landing pages, whether they become a player's
//!   attribution (the brand's own report wins), and the parameter names a brand has seen.
//! - [`brand`]: a brand's settings (kinds, origins, click-id params, qualification) and rotating secrets.
//! - [`ids`]: validated brand, player, pixel and session ids.
//! - [`input`]: the field reader and error shared by every JSON body the API validates.
//! - [`pixel`]: what a pixel is, and turning a caller's JSON into one.
//! - [`template`]: macro templates in the four syntaxes affiliates use, escaped for URLs, JavaScript or text.
//! - [`vocabulary`]: the affiliate platforms' names for event types, values and click ids, mapped to the hub's.
//! - [`definition`]: a brand's pixel definitions (trigger, scope, conditions, template), validated when saved.
//! - [`delivery`]: the delivery report's record of every pixel and postback: status, final URL, attempts.
//! - [`event`]: reported events, and [`event::plan`], the pure rule that turns one into pixels and postbacks.
//! - [`flat`]: events from flat name/value records (a query string, a CSV row), validated as JSON events are.
//! - [`inbound`]: events from an inbound GET postback URL, typed by its path or by Routy-style counters.
//! - [`import`]: events from uploaded Registrations and Sales CSV files, streamed row by row.
//! - [`ledger`]: every business rule, once (catalog, queues, leases, events, outbox, upkeep), over the
//!   engines' narrow traits: what the API, sessions and the sender ask.
//! - [`store`]: the engines, which persist and index and decide nothing: the [`store::catalog::Catalog`] and
//!   [`store::queues::Queues`] traits (and what is left of [`store::Store`]: report reads, stats), the
//!   embedded sled engine with group commit, the memory engine, and the contract every engine passes. The
//!   source of truth.
//! - [`egress`]: where the hub's own requests may go: public addresses, checked at connect time (SSRF).
//! - [`postback`]: the S2S sender: takes due postbacks from the store's outbox, sends, retries, records.
//! - [`hub`]: this process's live sessions, and the wake-ups (store announcements, heartbeats) that reach them.
//! - [`session`]: one WebSocket connection, from hello to close.
//! - [`protocol`]: the wire messages and close codes (see `docs/protocol.md`).
//! - [`api`]: the HTTP routes: admin API, client script, WebSocket upgrade, demo.
//! - [`limits`]: what one client may hold or send (rates, sessions, connections per address), and proxies.
//! - [`memory`]: gives the memory the store frees back to the operating system (glibc keeps it).
//! - [`net`]: the accept loop below HTTP: header timeouts, per-address caps, TLS with reload.
//! - [`server`]: start-up and orderly shutdown.
//! - [`cli`]: the binary's tools besides serving (`pixelhub import`), which talk to a hub over its API.
//!
//! The browser side lives in `js-client/aff-client-pixel.js`; the demo page in `static/`.

pub mod api;
pub mod api_key;
pub mod attribution;
pub mod brand;
pub mod cli;
pub mod clock;
pub mod config;
pub mod definition;
pub mod delivery;
pub mod egress;
pub mod event;
pub mod flat;
pub mod hub;
pub mod ids;
pub mod import;
pub mod inbound;
pub mod input;
pub mod ledger;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod pixel;
pub mod player_token;
pub mod postback;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod template;
pub mod vocabulary;

pub use config::Config;
pub use server::{Application, StartError};
