//! Basic auth against bcrypt hashes, as exporter-toolkit does it: an unknown user is
//! checked against a dummy hash of the same cost (a wrong user takes as long as a
//! wrong password), bcrypt compares in constant time, one bcrypt runs at a time (off
//! the reactor), and results are cached under an HMAC of the credentials with a key
//! made at start, so a scraper with the right password costs one bcrypt, not one per
//! scrape, and no password is kept in memory.

use parking_lot::Mutex;
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use axum::http::HeaderValue;
use base64::Engine as _;
use ring::{hmac, rand::SecureRandom as _};

/// Cached verdicts at most; the cache is emptied when full.
const CACHE_MAX: usize = 256;

pub struct Auth {
    users: BTreeMap<String, String>,
    /// A hash of a random password, at the highest cost among the users' hashes.
    dummy: String,
    key: hmac::Key,
    cache: Mutex<HashMap<Vec<u8>, bool>>,
    gate: tokio::sync::Mutex<()>,
}

impl Auth {
    /// `users`: user → bcrypt hash (checked by `web_config::parse`).
    pub fn new(users: BTreeMap<String, String>) -> Result<Self, String> {
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "basic_auth_users: no random numbers for the credential cache")?;
        let mut pw = [0u8; 24];
        rng.fill(&mut pw)
            .map_err(|_| "basic_auth_users: no random numbers for the dummy hash")?;
        let dummy = bcrypt::hash(pw, cost).map_err(|e| format!("basic_auth_users: {e}"))?;
        Ok(Self {
            users,
            dummy,
            key,
            cache: Mutex::new(HashMap::new()),
            gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether an `Authorization` header carries a known user with the right password.
    pub async fn check(self: &Arc<Self>, header: Option<&HeaderValue>) -> bool {
        let Some((user, pass)) = header.and_then(basic_credentials) else {
            return false;
        };
        let mut msg = user.as_bytes().to_vec();
        msg.push(b':');
        msg.extend_from_slice(&pass);
        let tag = hmac::sign(&self.key, &msg).as_ref().to_vec();
        if let Some(&ok) = self.cache().get(&tag) {
            return ok;
        }
        let _one_at_a_time = self.gate.lock().await;
        let me = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let (hash, known) = match me.users.get(&user) {
                Some(h) => (h.as_str(), true),
                None => (me.dummy.as_str(), false),
            };
            bcrypt::verify(&pass, hash).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false);
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(tag, ok);
        ok
    }

    fn cache(&self) -> parking_lot::MutexGuard<'_, HashMap<Vec<u8>, bool>> {
        self.cache.lock()
    }
}

/// (user, password) of `Basic <base64 of user:password>`.
fn basic_credentials(h: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let v = h.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(raw.get(..colon)?.to_vec()).ok()?;
    Some((user, raw.get(colon + 1..)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn basic(user_pass: &str) -> HeaderValue {
        header(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        ))
    }

    #[test]
    fn credentials() {
        assert_eq!(
            basic_credentials(&basic("alice:pa:ss")),
            Some(("alice".into(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            basic_credentials(&basic("alice:")),
            Some(("alice".into(), vec![]))
        );
        assert_eq!(basic_credentials(&basic("nocolon")), None);
        assert_eq!(basic_credentials(&header("Bearer abc")), None);
        assert_eq!(basic_credentials(&header("Basic !!!")), None);
        assert_eq!(basic_credentials(&header("Basic")), None);
    }

    #[tokio::test]
    async fn right_wrong_and_unknown() {
        let users = BTreeMap::from([("alice".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = Arc::new(Auth::new(users).unwrap());
        assert!(auth.dummy.starts_with("$2b$04$"), "{}", auth.dummy);
        assert!(auth.check(Some(&basic("alice:secret"))).await);
        // Twice: the second answer comes from the cache, and agrees.
        assert!(auth.check(Some(&basic("alice:secret"))).await);
        assert!(!auth.check(Some(&basic("alice:Secret"))).await);
        assert!(!auth.check(Some(&basic("alice:Secret"))).await);
        assert!(!auth.check(Some(&basic("bob:secret"))).await);
        assert!(!auth.check(None).await);
    }
}
