//! Whatever a browser (or anyone) sends on the WebSocket: the parser must answer with a message or a
//! close reason, never panic, and a hello it accepts must carry ids (and a capture) the hub can validate
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelhub::protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Hello {
            brand_id,
            player_id,
            attribution,
            ..
        }) => {
            let _ = brand_id.to_brand_id();
            let _ = pixelhub::ids::PlayerId::parse(&player_id);
            if let Some(click) = attribution {
                // Whatever a page captured is bounded or refused, never a panic.
                let params = pixelhub::attribution::default_capture_params();
                let rules = pixelhub::attribution::CaptureRules {
                    params: &params,
                    touch: pixelhub::attribution::Touch::Last,
                    window_days: 30,
                };
                if let Ok(Some(kept)) = pixelhub::attribution::check(click, rules, 1 << 40) {
                    assert!(kept.params.len() <= pixelhub::attribution::MAX_CAPTURED_PARAMS);
                }
            }
        }
        Ok(ClientMessage::Withheld { ids }) => {
            for id in &ids {
                let _ = pixelhub::ids::PixelId::parse(id);
            }
        }
        Ok(ClientMessage::Consent { .. }) => {}
        Ok(ClientMessage::Ack { ids, results }) => {
            for id in &ids {
                let _ = pixelhub::ids::PixelId::parse(id);
            }
            for result in &results {
                let _ = pixelhub::ids::PixelId::parse(&result.id);
                let report = pixelhub::delivery::BrowserReport::new(
                    result.result == pixelhub::protocol::AckResult::Fired,
                    &result.reason,
                    result.message.as_deref(),
                );
                assert!(report.message.is_some_and(|m| m.chars().count() <= 200));
            }
        }
        Ok(ClientMessage::Pong) => {}
        // A refusal is always a final close: the same frame would be refused again.
        Err(reason) => assert!(!reason.should_reconnect(), "{reason:?}"),
    }
});
