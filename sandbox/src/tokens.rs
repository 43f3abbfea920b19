//! The OAuth token store shared by every provider: authorization codes, access tokens, refresh tokens.
//!
//! Providers mint the token *strings* in their own formats and decide the lifetimes and rotation
//! policy; this module owns the state machine and the per-account refresh counters:
//!
//! 1. An authorization code is redeemable once, before it expires, by the client it was issued to.
//! 2. An access token is valid until `expires_at` on the logical clock (or forever if it has none),
//!    unless it was revoked. An expired token still resolves to its account, so providers can answer
//!    with their "expired N seconds ago" bodies and the request log can name the account.
//! 3. A refresh token is active until revoked, rotated, idle for longer than its idle TTL or past its
//!    absolute expiry. Refreshing with rotation retires the old token atomically, so of two concurrent
//!    refreshes with the same rotating token exactly one succeeds.
//!
//! Invariant: every successful refresh increments the account's `token_refreshes` counter exactly
//! once, and every failed one increments `token_refresh_failures`, both under the store's lock.

use crate::clock::Millis;
use crate::config::ProviderKind;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The provider.
    pub provider: ProviderKind,
    /// The provider account (HubSpot hub id, Salesforce org id, ...), as text.
    pub account: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The user who approved the grant, if the provider has one.
    pub user_id: Option<String>,
}

/// An access token's record.
#[derive(Clone, Debug, Serialize)]
pub struct AccessToken {
    /// The opaque token string.
    pub token: String,
    /// Who it speaks for.
    pub grant: Grant,
    /// When it was issued.
    pub issued_at: Millis,
    /// When it expires; `None` never expires.
    pub expires_at: Option<Millis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Millis>,
    /// The refresh token it was minted with, if any.
    pub refresh_token: Option<String>,
}

/// The state of a refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshState {
    /// Usable.
    Active,
    /// Replaced by a newer token on a rotating refresh; unusable.
    Rotated,
    /// Revoked; unusable.
    Revoked,
}

/// A refresh token's record.
#[derive(Clone, Debug, Serialize)]
pub struct RefreshToken {
    /// The opaque token string.
    pub token: String,
    /// Who it speaks for.
    pub grant: Grant,
    /// When it was issued.
    pub issued_at: Millis,
    /// When it was last used to refresh (or issued).
    pub last_used_at: Millis,
    /// Absolute expiry, if any.
    pub expires_at: Option<Millis>,
    /// Expires when unused for this long, if set.
    pub idle_ttl_ms: Option<Millis>,
    /// Active, rotated or revoked.
    pub state: RefreshState,
    /// The token that replaced this one on rotation.
    pub replaced_by: Option<String>,
}

/// An authorization code waiting to be exchanged.
#[derive(Clone, Debug, Serialize)]
pub struct AuthCode {
    /// The code string.
    pub code: String,
    /// Who approved what.
    pub grant: Grant,
    /// The redirect URI the code was issued for (must match on exchange when the provider checks it).
    pub redirect_uri: Option<String>,
    /// PKCE challenge, if the authorize request carried one.
    pub code_challenge: Option<String>,
    /// PKCE method, `S256` or `plain`.
    pub code_challenge_method: Option<String>,
    /// Expiry.
    pub expires_at: Millis,
    /// Already exchanged.
    pub used: bool,
}

/// Result of checking an access token.
#[derive(Clone, Debug)]
pub enum AccessCheck {
    /// Valid now.
    Valid(AccessToken),
    /// Known but past expiry by this many milliseconds.
    Expired {
        /// The token record.
        token: AccessToken,
        /// How long ago it expired.
        expired_ms_ago: Millis,
    },
    /// Known but revoked.
    Revoked(AccessToken),
    /// Not a token this store issued.
    Unknown,
}

/// Why a refresh failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshError {
    /// Not a refresh token this store issued.
    Unknown,
    /// Issued to a different client.
    WrongClient,
    /// Already rotated away.
    Rotated,
    /// Revoked.
    Revoked,
    /// Past its absolute or idle expiry.
    Expired,
}

/// Why a code exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeError {
    /// Unknown code.
    Unknown,
    /// Already exchanged.
    Used,
    /// Past expiry.
    Expired,
    /// Issued to a different client.
    WrongClient,
    /// `redirect_uri` differs from the authorize request's.
    RedirectMismatch,
    /// PKCE verifier missing or wrong.
    BadVerifier,
}

/// What a provider passes to mint tokens.
#[derive(Clone, Debug)]
pub struct Mint {
    /// The new access token string.
    pub access_token: String,
    /// Its lifetime; `None` never expires.
    pub access_ttl_ms: Option<Millis>,
    /// A new refresh token string (on issue, or on a rotating refresh).
    pub refresh_token: Option<String>,
    /// Absolute lifetime of a new refresh token.
    pub refresh_ttl_ms: Option<Millis>,
    /// Idle lifetime of a new refresh token.
    pub refresh_idle_ttl_ms: Option<Millis>,
}

/// Tokens returned by an issue or a refresh.
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    /// The access token.
    pub access: AccessToken,
    /// The refresh token to hand back (the same one on a non-rotating refresh), if any.
    pub refresh_token: Option<String>,
}

/// Refresh statistics per account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefreshStats {
    /// Successful refresh grants.
    pub token_refreshes: u64,
    /// Failed refresh grants (unknown, rotated, revoked, expired, wrong client).
    pub token_refresh_failures: u64,
    /// Authorization codes exchanged.
    pub code_exchanges: u64,
}

#[derive(Debug, Default)]
struct Inner {
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, AuthCode>,
    stats: BTreeMap<(ProviderKind, String), RefreshStats>,
}

/// The shared token store.
#[derive(Debug, Default)]
pub struct TokenStore {
    inner: Mutex<Inner>,
}

impl TokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every access token, refresh token and unredeemed authorization code string ever issued (live,
    /// expired or revoked): tests search logs for them to prove no secret leaks.
    pub fn issued_secrets(&self) -> Vec<String> {
        let inner = self.inner.lock();
        inner.access.keys().chain(inner.refresh.keys()).chain(inner.codes.keys()).cloned().collect()
    }

    /// Records new tokens for `grant` (a pre-issued pair, a client-credentials grant, ...).
    pub fn issue(&self, grant: Grant, mint: Mint, now: Millis) -> Issued {
        let mut g = self.inner.lock();
        Self::issue_locked(&mut g, grant, mint, now)
    }

    fn issue_locked(g: &mut Inner, grant: Grant, mint: Mint, now: Millis) -> Issued {
        if let Some(rt) = &mint.refresh_token {
            g.refresh.insert(
                rt.clone(),
                RefreshToken {
                    token: rt.clone(),
                    grant: grant.clone(),
                    issued_at: now,
                    last_used_at: now,
                    expires_at: mint.refresh_ttl_ms.map(|t| now + t),
                    idle_ttl_ms: mint.refresh_idle_ttl_ms,
                    state: RefreshState::Active,
                    replaced_by: None,
                },
            );
        }
        let access = AccessToken {
            token: mint.access_token.clone(),
            grant,
            issued_at: now,
            expires_at: mint.access_ttl_ms.map(|t| now + t),
            revoked_at: None,
            refresh_token: mint.refresh_token.clone(),
        };
        g.access.insert(access.token.clone(), access.clone());
        Issued { access, refresh_token: mint.refresh_token }
    }

    /// Checks an access token at `now`.
    pub fn check_access(&self, token: &str, now: Millis) -> AccessCheck {
        let g = self.inner.lock();
        match g.access.get(token) {
            None => AccessCheck::Unknown,
            Some(t) if t.revoked_at.is_some() => AccessCheck::Revoked(t.clone()),
            Some(t) => match t.expires_at {
                Some(exp) if now >= exp => {
                    AccessCheck::Expired { token: t.clone(), expired_ms_ago: now - exp }
                }
                _ => AccessCheck::Valid(t.clone()),
            },
        }
    }

    /// The account an access token belongs to, whatever its state (for logging and fault matching).
    pub fn account_of(&self, token: &str) -> Option<(ProviderKind, String)> {
        let g = self.inner.lock();
        g.access.get(token).map(|t| (t.grant.provider, t.grant.account.clone()))
    }

    /// Pushes an access token's expiry to `now + ttl` (Salesforce-style inactivity sessions).
    pub fn touch_access(&self, token: &str, now: Millis, ttl_ms: Millis) {
        let mut g = self.inner.lock();
        if let Some(t) = g.access.get_mut(token) {
            t.expires_at = Some(now + ttl_ms);
        }
    }

    /// An access token's record.
    pub fn access_info(&self, token: &str) -> Option<AccessToken> {
        self.inner.lock().access.get(token).cloned()
    }

    /// A refresh token's record.
    pub fn refresh_info(&self, token: &str) -> Option<RefreshToken> {
        self.inner.lock().refresh.get(token).cloned()
    }

    /// Runs the refresh grant: validates `refresh_token` for `client_id` at `now`, mints a new access
    /// token and, if `mint.refresh_token` is set, rotates (the old refresh token stops working).
    pub fn refresh(
        &self,
        refresh_token: &str,
        client_id: Option<&str>,
        mint: Mint,
        now: Millis,
    ) -> Result<Issued, (RefreshError, Option<Grant>)> {
        let mut g = self.inner.lock();
        let Some(rt) = g.refresh.get(refresh_token).cloned() else {
            return Err((RefreshError::Unknown, None));
        };
        let key = (rt.grant.provider, rt.grant.account.clone());
        let failure = if client_id.is_some_and(|c| c != rt.grant.client_id) {
            Some(RefreshError::WrongClient)
        } else {
            match rt.state {
                RefreshState::Rotated => Some(RefreshError::Rotated),
                RefreshState::Revoked => Some(RefreshError::Revoked),
                RefreshState::Active => {
                    let abs = rt.expires_at.is_some_and(|e| now >= e);
                    let idle = rt.idle_ttl_ms.is_some_and(|i| now - rt.last_used_at >= i);
                    (abs || idle).then_some(RefreshError::Expired)
                }
            }
        };
        if let Some(err) = failure {
            g.stats.entry(key).or_default().token_refresh_failures += 1;
            return Err((err, Some(rt.grant)));
        }
        let rotated_to = mint.refresh_token.clone();
        let issued = match &rotated_to {
            Some(new_rt) => {
                if let Some(old) = g.refresh.get_mut(refresh_token) {
                    old.state = RefreshState::Rotated;
                    old.replaced_by = Some(new_rt.clone());
                    old.last_used_at = now;
                }
                let mint = Mint {
                    refresh_ttl_ms: mint.refresh_ttl_ms.or(rt.expires_at.map(|e| e - rt.issued_at)),
                    refresh_idle_ttl_ms: mint.refresh_idle_ttl_ms.or(rt.idle_ttl_ms),
                    ..mint
                };
                Self::issue_locked(&mut g, rt.grant.clone(), mint, now)
            }
            None => {
                if let Some(old) = g.refresh.get_mut(refresh_token) {
                    old.last_used_at = now;
                }
                let mut issued =
                    Self::issue_locked(&mut g, rt.grant.clone(), Mint { refresh_token: None, ..mint }, now);
                issued.access.refresh_token = Some(refresh_token.to_owned());
                if let Some(a) = g.access.get_mut(&issued.access.token) {
                    a.refresh_token = Some(refresh_token.to_owned());
                }
                issued.refresh_token = Some(refresh_token.to_owned());
                issued
            }
        };
        g.stats.entry(key).or_default().token_refreshes += 1;
        Ok(issued)
    }

    /// Records that a refresh attempt failed before reaching the store (a provider-level check such as a
    /// per-token refresh cap), so the failure still shows in the account's counters.
    pub fn count_refresh_failure(&self, provider: ProviderKind, account: &str) {
        let mut g = self.inner.lock();
        g.stats.entry((provider, account.to_owned())).or_default().token_refresh_failures += 1;
    }

    /// Stores an authorization code.
    pub fn insert_code(&self, code: AuthCode) {
        self.inner.lock().codes.insert(code.code.clone(), code);
    }

    /// Exchanges an authorization code: checks it, marks it used, and returns it. `verifier` is checked
    /// against the PKCE challenge when the code has one.
    pub fn redeem_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
        now: Millis,
    ) -> Result<AuthCode, CodeError> {
        let mut g = self.inner.lock();
        let Some(c) = g.codes.get_mut(code) else {
            return Err(CodeError::Unknown);
        };
        if c.used {
            return Err(CodeError::Used);
        }
        if now >= c.expires_at {
            return Err(CodeError::Expired);
        }
        if c.grant.client_id != client_id {
            return Err(CodeError::WrongClient);
        }
        if let (Some(expected), Some(given)) = (&c.redirect_uri, redirect_uri)
            && expected != given
        {
            return Err(CodeError::RedirectMismatch);
        }
        if let Some(challenge) = &c.code_challenge {
            let Some(v) = verifier else {
                return Err(CodeError::BadVerifier);
            };
            let ok = match c.code_challenge_method.as_deref() {
                Some("plain") => v == challenge,
                _ => pkce_s256(v) == *challenge,
            };
            if !ok {
                return Err(CodeError::BadVerifier);
            }
        }
        c.used = true;
        let out = c.clone();
        let key = (out.grant.provider, out.grant.account.clone());
        g.stats.entry(key).or_default().code_exchanges += 1;
        Ok(out)
    }

    /// Revokes a refresh token. With `cascade`, its access tokens are revoked too (Salesforce); without,
    /// they keep working until they expire (HubSpot). Returns whether the token existed.
    pub fn revoke_refresh(&self, token: &str, cascade: bool, now: Millis) -> bool {
        let mut g = self.inner.lock();
        let Some(rt) = g.refresh.get_mut(token) else {
            return false;
        };
        rt.state = RefreshState::Revoked;
        if cascade {
            for a in g.access.values_mut() {
                if a.refresh_token.as_deref() == Some(token) && a.revoked_at.is_none() {
                    a.revoked_at = Some(now);
                }
            }
        }
        true
    }

    /// Revokes an access token. Returns whether it existed.
    pub fn revoke_access(&self, token: &str, now: Millis) -> bool {
        let mut g = self.inner.lock();
        match g.access.get_mut(token) {
            Some(a) => {
                a.revoked_at.get_or_insert(now);
                true
            }
            None => false,
        }
    }

    /// Revokes every access and refresh token of an account (the "token revocation" fault: the user
    /// disconnected the app). Returns how many tokens changed.
    pub fn revoke_account(&self, provider: ProviderKind, account: &str, now: Millis) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        for a in g.access.values_mut() {
            if a.grant.provider == provider && a.grant.account == account && a.revoked_at.is_none() {
                a.revoked_at = Some(now);
                n += 1;
            }
        }
        for r in g.refresh.values_mut() {
            if r.grant.provider == provider && r.grant.account == account && r.state == RefreshState::Active {
                r.state = RefreshState::Revoked;
                n += 1;
            }
        }
        n
    }

    /// Makes every unexpired access token of an account expire at `now` (tests of the expired-token path
    /// without moving the clock). Returns how many changed.
    pub fn expire_account(&self, provider: ProviderKind, account: &str, now: Millis) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        for a in g.access.values_mut() {
            if a.grant.provider == provider
                && a.grant.account == account
                && a.expires_at.is_none_or(|e| e > now)
            {
                a.expires_at = Some(now);
                n += 1;
            }
        }
        n
    }

    /// Refresh statistics of one account.
    pub fn stats(&self, provider: ProviderKind, account: &str) -> RefreshStats {
        self.inner.lock().stats.get(&(provider, account.to_owned())).copied().unwrap_or_default()
    }

    /// Clears the refresh statistics of one account (or all accounts when `account` is `None`).
    pub fn reset_stats(&self, provider: Option<ProviderKind>, account: Option<&str>) {
        let mut g = self.inner.lock();
        g.stats.retain(|(p, a), _| {
            let p_match = provider.is_none_or(|x| x == *p);
            let a_match = account.is_none_or(|x| x == a);
            !(p_match && a_match)
        });
    }
}

/// The PKCE S256 transform: base64url (no padding) of SHA-256 of the verifier.
pub fn pkce_s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            provider: ProviderKind::HubSpot,
            account: "1".into(),
            client_id: "c".into(),
            scopes: vec![],
            user_id: None,
        }
    }

    fn mint(a: &str, r: Option<&str>) -> Mint {
        Mint {
            access_token: a.into(),
            access_ttl_ms: Some(1_000),
            refresh_token: r.map(Into::into),
            refresh_ttl_ms: None,
            refresh_idle_ttl_ms: None,
        }
    }

    #[test]
    fn access_tokens_expire_on_the_given_clock() {
        let s = TokenStore::new();
        s.issue(grant(), mint("a1", Some("r1")), 0);
        assert!(matches!(s.check_access("a1", 999), AccessCheck::Valid(_)));
        match s.check_access("a1", 4_000) {
            AccessCheck::Expired { expired_ms_ago, .. } => assert_eq!(expired_ms_ago, 3_000),
            other => panic!("expected expired, got {other:?}"),
        }
        assert!(matches!(s.check_access("nope", 0), AccessCheck::Unknown));
    }

    #[test]
    fn rotation_retires_the_old_refresh_token_and_counts_once() {
        let s = TokenStore::new();
        s.issue(grant(), mint("a1", Some("r1")), 0);
        let out = s.refresh("r1", Some("c"), mint("a2", Some("r2")), 10).expect("first refresh works");
        assert_eq!(out.refresh_token.as_deref(), Some("r2"));
        let err =
            s.refresh("r1", Some("c"), mint("a3", Some("r3")), 20).expect_err("rotated token must fail");
        assert_eq!(err.0, RefreshError::Rotated);
        let st = s.stats(ProviderKind::HubSpot, "1");
        assert_eq!(st.token_refreshes, 1);
        assert_eq!(st.token_refresh_failures, 1);
    }

    #[test]
    fn non_rotating_refresh_returns_the_same_token() {
        let s = TokenStore::new();
        s.issue(grant(), mint("a1", Some("r1")), 0);
        let out = s.refresh("r1", None, mint("a2", None), 10).expect("refresh works");
        assert_eq!(out.refresh_token.as_deref(), Some("r1"));
        assert!(s.refresh("r1", None, mint("a3", None), 20).is_ok());
        assert!(s.revoke_refresh("r1", false, 30));
        assert!(matches!(s.check_access("a3", 31), AccessCheck::Valid(_)));
        assert_eq!(
            s.refresh("r1", None, mint("a4", None), 40).expect_err("revoked").0,
            RefreshError::Revoked
        );
    }

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
