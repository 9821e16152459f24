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

/// A hash in bcrypt's format, of `cost`, that matches no password: a real hash at cost 4 (about a millisecond)
/// relabelled with `cost`, so checking a password against it runs bcrypt at `cost` (its digest, made at 4, is
/// never the one cost `cost` gives: 184 bits would have to agree). Made at load for every cost configured,
/// however high: no hash of cost 31 (35 hours) is ever computed, and no checker waits for one to be made.
fn decoy(cost: u32) -> String {
    let salt: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ (cost as u8));
    let cheap = bcrypt::hash_with_salt("blockjobinfo decoy", 4, salt)
        .expect("bcrypt at cost 4 of a constant")
        .format_for_version(bcrypt::Version::TwoB);
    format!("$2b${cost:02}{}", &cheap[6..])
}

pub struct Auth {
    users: BTreeMap<String, String>,
    /// For each user in turn, a decoy of that user's cost: an unknown user is checked against the one its name
    /// picks (a keyed hash of the name, the same each time), so unknown names cost what known ones do, and in
    /// the same proportions.
    decoys: Vec<String>,
    /// The key of that pick, random for each process: which cost a name gets cannot be worked out beforehand.
    pick: std::collections::hash_map::RandomState,
    /// SHA-256 of (user, hash, password) that were allowed: no password is kept. Apart from the denied ones, so
    /// that guesses never push a right password out.
    allowed: Mutex<HashSet<[u8; 32]>>,
    /// The same, denied.
    denied: Mutex<HashSet<[u8; 32]>>,
}

impl Auth {
    /// `users`' hashes must parse, with a cost of 4 to 31 (the web config's checks).
    pub fn new(users: BTreeMap<String, String>) -> Option<Arc<Auth>> {
        (!users.is_empty()).then(|| {
            let decoys = users
                .values()
                .map(|hash| decoy(hash.parse::<bcrypt::HashParts>().map_or(10, |p| p.get_cost())))
                .collect();
            Arc::new(Auth {
                users,
                decoys,
                pick: std::collections::hash_map::RandomState::new(),
                allowed: Mutex::new(HashSet::new()),
                denied: Mutex::new(HashSet::new()),
            })
        })
    }

    /// The decoy an unknown `user` is checked against.
    fn decoy_for(&self, user: &str) -> &str {
        use std::hash::BuildHasher;
        &self.decoys[(self.pick.hash_one(user) % self.decoys.len() as u64) as usize]
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
        let against = hash.map_or_else(|| self.decoy_for(&user), String::as_str);
        let matched = bcrypt::verify(&password, against).unwrap_or(false);
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
        // Mixed costs, three of 4 for one of 5: unknown names are checked at 4 about three times in four, as the
        // known users are, and the median cost is the known users' median.
        let users = BTreeMap::from([
            ("a".to_string(), bcrypt::hash("x", 4).unwrap()),
            ("b".to_string(), bcrypt::hash("y", 4).unwrap()),
            ("c".to_string(), bcrypt::hash("z", 4).unwrap()),
            ("d".to_string(), bcrypt::hash("w", 5).unwrap()),
        ]);
        let auth = Auth::new(users).unwrap();
        let costs: Vec<u32> = (0..4000)
            .map(|i| {
                let decoy: bcrypt::HashParts = auth.decoy_for(&format!("nobody{i}")).parse().unwrap();
                decoy.get_cost()
            })
            .collect();
        let at_4 = costs.iter().filter(|c| **c == 4).count();
        assert!((2700..=3300).contains(&at_4), "{at_4} of 4000 unknown names at cost 4");
        assert_eq!(costs.iter().filter(|c| **c == 5).count(), 4000 - at_4);
        // A name gets the same decoy every time (a real user's cost does not change between tries).
        assert_eq!(auth.decoy_for("nobody"), auth.decoy_for("nobody"));
        assert_eq!(auth.check(Some(&header("nobody", "x"))), Verdict::Denied);
    }

    #[test]
    fn a_decoy_of_any_cost_is_made_at_once_and_matches_nothing() {
        // Up to 31: a decoy computed at its own cost would take 35 hours here, and the test would not end.
        for cost in 4..=31 {
            let parts: bcrypt::HashParts = decoy(cost).parse().unwrap();
            assert_eq!(parts.get_cost(), cost);
        }
        for password in ["blockjobinfo decoy", "", "x"] {
            assert!(!bcrypt::verify(password, &decoy(5)).unwrap(), "{password:?}");
        }
    }

    #[test]
    fn no_users_means_no_authentication() {
        assert!(Auth::new(BTreeMap::new()).is_none());
    }
}
