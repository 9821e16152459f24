//! Basic authentication against the web config's bcrypt hashes, as exporter-toolkit does it, every outcome
//! remembered, so that a scraper with the right password costs one bcrypt in all. Each bcrypt costs tens of
//! milliseconds of CPU: the server runs at most one per core, and bounds how many requests may wait for one
//! (http/mod.rs); a flood of wrong guesses never evicts a right password from what is remembered.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;

/// What a request's `Authorization` header earned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
}

/// Outcomes remembered, at most this many of each kind (then forgotten all at once, as a bound, not a policy).
const REMEMBERED: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cost most of the users' hashes have (10, bcrypt's usual, if none can be read): an unknown user is checked
/// against a hash of that cost, so that the time of an answer does not tell a known user from an unknown one.
fn usual_cost(users: &BTreeMap<String, String>) -> u32 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for hash in users.values() {
        if let Ok(parts) = hash.parse::<bcrypt::HashParts>() {
            *counts.entry(parts.get_cost()).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map_or(10, |(cost, _)| cost)
}

pub struct Auth {
    users: BTreeMap<String, String>,
    /// A hash that matches no password, at the users' usual cost: made on first need.
    decoy: std::sync::OnceLock<String>,
    /// SHA-256 of (user, hash, password) that were allowed: no password is kept. Apart from the denied ones, so
    /// that guesses never push a right password out.
    allowed: Mutex<HashSet<[u8; 32]>>,
    /// The same, denied.
    denied: Mutex<HashSet<[u8; 32]>>,
}

impl Auth {
    pub fn new(users: BTreeMap<String, String>) -> Option<Arc<Auth>> {
        (!users.is_empty()).then(|| {
            Arc::new(Auth {
                users,
                decoy: std::sync::OnceLock::new(),
                allowed: Mutex::new(HashSet::new()),
                denied: Mutex::new(HashSet::new()),
            })
        })
    }

    /// The verdict if it is already known (no bcrypt needed); None when `check` must run.
    pub fn cached(&self, header: Option<&[u8]>) -> Option<Verdict> {
        let Some((user, password)) = header.and_then(credentials) else {
            return Some(Verdict::Denied);
        };
        let key = self.key(&user, &password);
        if lock(&self.allowed).contains(&key) {
            return Some(Verdict::Allowed);
        }
        lock(&self.denied).contains(&key).then_some(Verdict::Denied)
    }

    /// The verdict, running bcrypt if needed: blocking, so run it off the server's threads (as many at once as
    /// the server lets run: one per core).
    pub fn check(&self, header: Option<&[u8]>) -> Verdict {
        if let Some(v) = self.cached(header) {
            return v;
        }
        let (user, password) = header.and_then(credentials).expect("cached() handled a missing header");
        let key = self.key(&user, &password);
        let hash = self.users.get(&user);
        let decoy = || {
            self.decoy.get_or_init(|| {
                bcrypt::hash("blockjobinfo decoy", usual_cost(&self.users)).expect("bcrypt of a constant")
            })
        };
        let matched = bcrypt::verify(&password, hash.map_or_else(|| decoy().as_str(), String::as_str)).unwrap_or(false);
        let ok = hash.is_some() && matched;
        let mut known = lock(if ok { &self.allowed } else { &self.denied });
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert(key);
        if ok {
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }

    fn key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let hash = self.users.get(user).map_or("", String::as_str);
        for part in [user.as_bytes(), hash.as_bytes(), password] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, value) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    #[test]
    fn right_wrong_missing_and_unknown() {
        let users = BTreeMap::from([("prom".to_string(), bcrypt::hash("s3cret", 4).unwrap())]);
        let auth = Auth::new(users).unwrap();
        assert_eq!(auth.check(Some(&header("prom", "s3cret"))), Verdict::Allowed);
        assert_eq!(auth.cached(Some(&header("prom", "s3cret"))), Some(Verdict::Allowed));
        assert_eq!(auth.check(Some(&header("prom", "wrong"))), Verdict::Denied);
        assert_eq!(auth.cached(Some(&header("prom", "wrong"))), Some(Verdict::Denied));
        assert_eq!(auth.check(Some(&header("nobody", "s3cret"))), Verdict::Denied);
        assert_eq!(auth.check(None), Verdict::Denied);
        assert_eq!(auth.check(Some(b"Bearer abc")), Verdict::Denied);
        assert_eq!(auth.check(Some(b"Basic !!!")), Verdict::Denied);
    }

    #[test]
    fn an_unknown_user_costs_what_a_known_one_does() {
        let users = BTreeMap::from([
            ("a".to_string(), bcrypt::hash("x", 5).unwrap()),
            ("b".to_string(), bcrypt::hash("y", 5).unwrap()),
            ("c".to_string(), bcrypt::hash("z", 4).unwrap()),
        ]);
        assert_eq!(usual_cost(&users), 5);
        let auth = Auth::new(users).unwrap();
        assert_eq!(auth.check(Some(&header("nobody", "x"))), Verdict::Denied);
        let decoy: bcrypt::HashParts = auth.decoy.get().unwrap().parse().unwrap();
        assert_eq!(decoy.get_cost(), 5, "the decoy has the users' cost");
    }

    #[test]
    fn no_users_means_no_authentication() {
        assert!(Auth::new(BTreeMap::new()).is_none());
    }
}
