//! The nonces of accepted calls, as a set: the replay check costs O(1) whatever the call rate,
//! and each nonce is forgotten once its call would be expired anyway.
//!
//! Used where one process holds the state (`extctl dev`). On Kubernetes the same rule is
//! applied to the `recentNonces` list in the control's status, which every replica shares
//! ([`super::report::apply`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use jiff::Timestamp;

use super::protocol::Rejection;

#[derive(Debug, Default)]
pub struct NonceSet {
    seen: HashSet<NonceKey>,
    /// The same nonces, soonest expiry first, to forget them in order.
    expiries: BinaryHeap<Reverse<(Timestamp, NonceKey)>>,
}

/// A nonce as a fixed 32 bytes, kept inline (no allocation, a compact set): the nonce itself
/// when it is 32 bytes long (every ASCII nonce the protocol admits), else its SHA-256.
type NonceKey = [u8; 32];

fn nonce_key(nonce: &str) -> NonceKey {
    match nonce.as_bytes().try_into() {
        Ok(bytes) => bytes,
        Err(_) => {
            use sha2::Digest;
            sha2::Sha256::digest(nonce.as_bytes()).into()
        }
    }
}

impl NonceSet {
    /// Records `nonce` until `expires_at`, or refuses it (`InvalidNonce`) when an accepted call
    /// used it and it has not expired by `now`.
    pub fn admit(
        &mut self,
        nonce: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        self.forget_expired(now);
        let key = nonce_key(nonce);
        if !self.seen.insert(key) {
            return Err(Rejection::InvalidNonce);
        }
        self.expiries.push(Reverse((expires_at, key)));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_expired(&mut self, now: Timestamp) {
        while let Some(Reverse((expires_at, _))) = self.expiries.peek() {
            if *expires_at > now {
                break;
            }
            if let Some(Reverse((_, key))) = self.expiries.pop() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    #[test]
    fn a_nonce_is_refused_until_it_expires_then_forgotten() {
        let mut set = NonceSet::default();
        set.admit("a", at(15), at(0)).unwrap();
        for second in [0, 1, 14] {
            assert_eq!(
                set.admit("a", at(second + 15), at(second)),
                Err(Rejection::InvalidNonce),
                "second {second}"
            );
        }
        // The same rule as `report::ensure_nonce_unused`: expired at exactly `expires_at`.
        set.admit("a", at(30), at(15)).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn nonces_of_any_length_are_told_apart() {
        let mut set = NonceSet::default();
        let thirty_two = "0123456789abcdef0123456789abcdef";
        let multibyte = "é123456789abcdef0123456789abcde";
        for nonce in [thirty_two, multibyte, "short", ""] {
            set.admit(nonce, at(15), at(0)).unwrap();
            assert_eq!(
                set.admit(nonce, at(15), at(1)),
                Err(Rejection::InvalidNonce)
            );
        }
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn expiries_out_of_order_are_all_forgotten_in_time() {
        let mut set = NonceSet::default();
        set.admit("late", at(20), at(0)).unwrap();
        set.admit("early", at(10), at(0)).unwrap();
        set.admit("mid", at(15), at(0)).unwrap();
        set.admit("x", at(30), at(12)).unwrap();
        assert_eq!(set.len(), 3, "early is forgotten");
        set.admit("y", at(40), at(25)).unwrap();
        assert_eq!(set.len(), 2, "only x and y remain");
        assert!(!set.is_empty());
    }
}
