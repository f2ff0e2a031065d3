//! Player tokens: the brand's word that a page belongs to a player.
//!
//! Without one, a session is whoever its hello claims to be, and anyone who learns a player id could
//! receive that player's pixels (firing them elsewhere, or just using them up). The brand's back end, which
//! knows who is logged in, signs the player's id with the brand's signing secret and hands the token to the
//! page; the hub checks it at the hello. The format is simple enough to produce with one line of shell,
//! Node, PHP or Python (`docs/security.md` has each):
//!
//! ```text
//! token   = "v1." expires "." hex(HMAC-SHA256(key = secret, message))
//! message = "v1\n" brand_id "\n" player_id "\n" expires
//! expires = Unix time in seconds, in decimal
//! ```
//!
//! Ids cannot contain a newline, so the message names exactly one brand, player and expiry. The secret is
//! used as its text (the 48 hex characters the API shows), not decoded.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{BrandId, PlayerId};

/// Longest token looked at; a real one is about 80 characters.
pub const MAX_TOKEN_LEN: usize = 256;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The hello carried none.
    Missing,
    /// Not `v1.<expires>.<64 hex>`.
    Malformed,
    /// Not signed with the brand's secret for this brand and player: forged, or issued for someone else.
    BadSignature,
    /// Genuine, but its expiry has passed.
    Expired,
}

impl TokenError {
    /// Stable snake_case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
        }
    }
}

fn mac(secret: &str, brand: &BrandId, player: &PlayerId, expires: u64) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("v1\n{brand}\n{player}\n{expires}").as_bytes());
    mac
}

/// The token for `player` of `brand`, valid until `expires` (Unix seconds). The hub never needs to issue
/// one; this is the reference the documented recipes are tested against, and what tests and tools use.
pub fn sign(secret: &str, brand: &BrandId, player: &PlayerId, expires: u64) -> String {
    let signature = mac(secret, brand, player, expires).finalize().into_bytes();
    format!("v1.{expires}.{}", crate::ids::hex(&signature))
}

/// Checks `token` for `player` of `brand` against each of `secrets` (the brand's current one, and the
/// previous one during a rollover), at `now` (Unix seconds). The signature is compared in constant time,
/// and checked before the expiry, so `Expired` always means a genuine token.
pub fn verify<'a>(
    token: &str,
    brand: &BrandId,
    player: &PlayerId,
    secrets: impl IntoIterator<Item = &'a str>,
    now: u64,
) -> Result<(), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some("v1"), Some(expires), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if expires.is_empty() || expires.len() > 12 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let signature = decode_hex(signature).ok_or(TokenError::Malformed)?;
    let genuine = secrets.into_iter().any(|secret| {
        mac(secret, brand, player, expires)
            .verify_slice(&signature)
            .is_ok()
    });
    if !genuine {
        return Err(TokenError::BadSignature);
    }
    if expires <= now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// 32 bytes from 64 hex digits of either case.
fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(brand: &str, player: &str) -> (BrandId, PlayerId) {
        (
            BrandId::parse(brand).unwrap(),
            PlayerId::parse(player).unwrap(),
        )
    }

    const SECRET: &str = "5f2b6c1e9a7d4c3b8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b";

    #[test]
    fn a_signed_token_verifies_for_its_brand_and_player_only() {
        let (brand, player) = ids("12345", "p-42");
        let token = sign(SECRET, &brand, &player, 2_000_000_000);
        assert_eq!(
            verify(&token, &brand, &player, [SECRET], 1_900_000_000),
            Ok(())
        );

        let (other_brand, other_player) = ids("12346", "p-43");
        let bad = Err(TokenError::BadSignature);
        assert_eq!(verify(&token, &brand, &other_player, [SECRET], 0), bad);
        assert_eq!(verify(&token, &other_brand, &player, [SECRET], 0), bad);
        assert_eq!(verify(&token, &brand, &player, ["another secret"], 0), bad);
        // The expiry is signed: moving it forward breaks the signature.
        let stretched = token.replacen("2000000000", "2000000001", 1);
        assert_eq!(verify(&stretched, &brand, &player, [SECRET], 0), bad);
    }

    #[test]
    fn the_format_matches_the_documented_recipe() {
        // The value `printf 'v1\n12345\np-42\n2000000000' | openssl dgst -sha256 -hmac "$SECRET"` prints.
        let (brand, player) = ids("12345", "p-42");
        let token = sign(SECRET, &brand, &player, 2_000_000_000);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(b"v1\n12345\np-42\n2000000000");
        let expected = crate::ids::hex(&mac.finalize().into_bytes());
        assert_eq!(token, format!("v1.2000000000.{expected}"));
        assert_eq!(
            verify(
                &token.to_uppercase().replacen("V1", "v1", 1),
                &brand,
                &player,
                [SECRET],
                0
            ),
            Ok(()),
            "hex digits of either case"
        );
    }

    #[test]
    fn an_expired_token_is_refused_as_expired_only_when_genuine() {
        let (brand, player) = ids("b", "p");
        let token = sign(SECRET, &brand, &player, 1000);
        assert_eq!(verify(&token, &brand, &player, [SECRET], 999), Ok(()));
        assert_eq!(
            verify(&token, &brand, &player, [SECRET], 1000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&token, &brand, &player, ["x"], 5000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn either_active_secret_verifies() {
        let (brand, player) = ids("b", "p");
        let token = sign("old secret", &brand, &player, 10);
        assert_eq!(
            verify(&token, &brand, &player, ["new secret", "old secret"], 0),
            Ok(())
        );
    }

    #[test]
    fn malformed_tokens_are_named_so() {
        let (brand, player) = ids("b", "p");
        let good = sign(SECRET, &brand, &player, 10);
        let sig = good.rsplit('.').next().unwrap();
        for bad in [
            String::new(),
            "v1".into(),
            format!("v2.10.{sig}"),
            format!("v1.10.{sig}.x"),
            format!("v1..{sig}"),
            format!("v1.-10.{sig}"),
            format!("v1.1e3.{sig}"),
            format!("v1.10.{}", &sig[1..]),
            format!("v1.10.{}g", &sig[1..]),
            format!("v1.10.{}", "é".repeat(32)),
            "v1.10.".to_owned() + &"a".repeat(300),
        ] {
            assert_eq!(
                verify(&bad, &brand, &player, [SECRET], 0),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }
}
