//! The one integration-test binary: the real hub over real HTTP and WebSocket, and real headless Chromium.

mod api;
mod attribution;
mod browser;
mod cdp;
mod consent;
mod crash;
mod delivery;
mod disk;
mod egress;
mod engines;
mod events;
mod growth;
mod helpers;
mod inbound;
mod limits;
mod openapi;
mod ops;
mod postbacks;
mod process;
mod receiver;
mod redis;
mod security;
mod seeds;
mod tls;
mod websocket;
