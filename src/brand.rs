//! A brand: the operator's settings for one casino or sportsbook, and its rotating secrets.
//!
//! Pure data with its defaults and the rules they imply for pixels and events; the ledger keeps brands in
//! the catalog, the API reads and writes them.

use serde::{Deserialize, Serialize};

use crate::ids::BrandId;
use crate::pixel::{PixelKind, PixelPolicy};

/// A brand, as stored and as returned by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Brand {
    /// The brand's id.
    pub id: BrandId,
    /// What the brand's operator set.
    #[serde(flatten)]
    pub settings: BrandSettings,
    /// Unix milliseconds of creation.
    pub created_at_ms: u64,
    /// Unix milliseconds of the last update.
    pub updated_at_ms: u64,
}

/// What an operator sets on a brand; a `PUT` replaces all of it. Every field has a default, so a brand
/// stored by an older version reads with the defaults of what it lacks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct BrandSettings {
    /// Display name for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Page origins (`https://casino.example`) allowed to open sessions for this brand; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Whether a session must present a player token signed with the brand's signing secret. Off, anyone
    /// who knows a player id can receive (and so use up) that player's pixels.
    pub require_player_token: bool,
    /// Pixel kinds the brand accepts. `script` and `js` run their author's code in the brand's pages, so
    /// they are off until the brand turns them on.
    pub allowed_kinds: Vec<PixelKind>,
    /// Whether image, iframe and script URLs must be `https`.
    pub https_only: bool,
    /// The `sandbox` attribute of iframe pixels: space-separated `allow-*` tokens, or empty for the
    /// strictest sandbox.
    pub iframe_sandbox: String,
    /// The `referrerpolicy` of image, iframe and script pixels: how much of the brand's page URL the
    /// affiliate sees.
    pub referrer_policy: String,
    /// Event params that carry an affiliate's click id, in the order they are looked for: a player with
    /// one was brought by an affiliate, and inbound calls that name no player find theirs by it.
    pub click_id_params: Vec<String>,
    /// URL query params the client script captures on landing pages (names, or `prefix*`), kept in the
    /// player's browser until the player is known: the affiliate's click id and sub ids, for brands that
    /// do not pass them in their registration events themselves. Empty captures nothing.
    pub capture_params: Vec<String>,
    /// Which click the browser keeps when a player lands more than once.
    pub capture_touch: crate::attribution::Touch,
    /// Days a captured click counts.
    pub capture_window_days: u32,
    /// Whose consent the client script asks before it fires anything: none (the brand handles consent
    /// itself), the page's IAB TCF CMP, Google consent mode, or a function the page gives `init`.
    pub consent: ConsentMode,
    /// TCF purposes the player must have consented to (`tcf`): by default 1 (store or access
    /// information on a device) and 7 (measure advertising performance).
    pub consent_tcf_purposes: Vec<u8>,
    /// How long the client waits for the page's answer about consent; no answer means no consent.
    pub consent_timeout_ms: u32,
    /// Rules by which the hub raises `qftd` and `qualified_registration` itself; none by default.
    #[serde(skip_serializing_if = "is_unset")]
    pub qualification: crate::event::Qualification,
}

fn is_unset(q: &crate::event::Qualification) -> bool {
    *q == crate::event::Qualification::default()
}

/// The click-id params of a brand that names none: every name the platforms in
/// [`crate::vocabulary::CLICK_ID_PARAMS`] use.
pub fn default_click_id_params() -> Vec<String> {
    crate::vocabulary::CLICK_ID_PARAMS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// Where the client script reads the player's consent to marketing pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMode {
    /// The client fires without asking: the brand loads the client only with consent, or needs none.
    #[default]
    None,
    /// IAB TCF v2.2: the page's `__tcfapi`, the brand's purposes, and the vendor of a pixel that names
    /// its `tcf_vendor_id`.
    Tcf,
    /// Google consent mode v2: `ad_storage` and `ad_user_data` granted in the page's `dataLayer`.
    Google,
    /// The page's own answer: `init({consent: () => boolean | Promise<boolean>})`.
    Callback,
}

impl ConsentMode {
    /// Every mode, by the name settings use.
    pub const ALL: [(&'static str, ConsentMode); 4] = [
        ("none", ConsentMode::None),
        ("tcf", ConsentMode::Tcf),
        ("google", ConsentMode::Google),
        ("callback", ConsentMode::Callback),
    ];
}

/// The TCF purposes a brand's pixels need when it names none: 1, store or access information on a
/// device (cookies), and 7, measure advertising performance (a conversion pixel's purpose).
pub const DEFAULT_TCF_PURPOSES: [u8; 2] = [1, 7];
/// How long the client waits for a page's consent answer when the brand says nothing.
pub const DEFAULT_CONSENT_TIMEOUT_MS: u32 = 3000;

/// How long a captured click counts when the brand says nothing: the usual cookie window of affiliate
/// programs.
pub const DEFAULT_CAPTURE_WINDOW_DAYS: u32 = 30;

/// The iframe sandbox of a new brand: the pixel's scripts run (most iframe pixels need them) in the pixel's
/// own origin, but it cannot navigate the brand's page, open windows or submit forms.
pub const DEFAULT_IFRAME_SANDBOX: &str = "allow-scripts allow-same-origin";
/// The referrer policy of a new brand: affiliates see the brand's origin, never the page's path or query,
/// where player data often sits.
pub const DEFAULT_REFERRER_POLICY: &str = "strict-origin-when-cross-origin";

impl Default for BrandSettings {
    fn default() -> Self {
        Self {
            name: None,
            allowed_origins: Vec::new(),
            require_player_token: false,
            allowed_kinds: PixelKind::SAFE.to_vec(),
            https_only: false,
            iframe_sandbox: DEFAULT_IFRAME_SANDBOX.into(),
            referrer_policy: DEFAULT_REFERRER_POLICY.into(),
            click_id_params: default_click_id_params(),
            capture_params: crate::attribution::default_capture_params(),
            capture_touch: crate::attribution::Touch::Last,
            capture_window_days: DEFAULT_CAPTURE_WINDOW_DAYS,
            consent: ConsentMode::None,
            consent_tcf_purposes: DEFAULT_TCF_PURPOSES.to_vec(),
            consent_timeout_ms: DEFAULT_CONSENT_TIMEOUT_MS,
            qualification: Default::default(),
        }
    }
}

impl BrandSettings {
    /// The rules every pixel of the brand must meet.
    pub fn pixel_policy(&self) -> PixelPolicy<'_> {
        PixelPolicy {
            allowed_kinds: &self.allowed_kinds,
            https_only: self.https_only,
        }
    }

    /// What decides what the browser's captures keep.
    pub fn capture_rules(&self) -> crate::attribution::CaptureRules<'_> {
        crate::attribution::CaptureRules {
            params: &self.capture_params,
            touch: self.capture_touch,
            window_days: self.capture_window_days,
        }
    }

    /// What decides what the brand's events produce.
    pub fn rules(&self) -> crate::event::BrandRules<'_> {
        crate::event::BrandRules {
            policy: self.pixel_policy(),
            click_id_params: &self.click_id_params,
            qualification: &self.qualification,
        }
    }
}

/// Which of a brand's rotating secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretKind {
    /// The token in the brand's inbound postback URLs.
    Inbound,
    /// The key the brand's back end signs player tokens with (see [`crate::player_token`]).
    Signing,
}

/// A brand's rotating secret (see [`SecretKind`]), and the one it replaced while that is still honoured:
/// two are active at once during a rollover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrandSecret {
    /// The secret to use now.
    pub current: String,
    /// The previous secret, accepted until `previous_valid_until_ms` so back ends can be moved over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// See [`BrandSecret::previous`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until_ms: Option<u64>,
    /// Unix milliseconds of the last rotation (or creation).
    pub rotated_at_ms: u64,
}

impl BrandSecret {
    /// A new random secret made at `now`; `previous` is the one it replaces and until when that one is
    /// still honoured, if it is.
    pub fn new(previous: Option<(String, u64)>, now: u64) -> Self {
        let (previous, previous_valid_until_ms) = previous.unzip();
        BrandSecret {
            current: crate::ids::random_hex(24).expect("the OS random source works"),
            previous,
            previous_valid_until_ms,
            rotated_at_ms: now,
        }
    }

    /// Whether `presented` is a token the brand accepts at `now`, compared in constant time.
    pub fn accepts(&self, presented: &str, now: u64) -> bool {
        use subtle::ConstantTimeEq;
        let equal = |token: &str| bool::from(token.as_bytes().ct_eq(presented.as_bytes()));
        let previous_ok = match (&self.previous, self.previous_valid_until_ms) {
            (Some(previous), Some(until)) => now < until && equal(previous),
            _ => false,
        };
        equal(&self.current) | previous_ok
    }

    /// The secrets in force at `now`: the current one, then the previous one during its grace period.
    pub fn active(&self, now: u64) -> impl Iterator<Item = &str> {
        let previous = match (&self.previous, self.previous_valid_until_ms) {
            (Some(previous), Some(until)) if now < until => Some(previous.as_str()),
            _ => None,
        };
        std::iter::once(self.current.as_str()).chain(previous)
    }
}
