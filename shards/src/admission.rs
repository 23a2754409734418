//! Node-wide admission limits, shared by every shard: how many connections the node
//! holds, how fast one IP address may open them, and how many one user may hold.
//!
//! These are the only structures shards share, and they are touched once per
//! connection (on upgrade, identify and close), never per event, so a short mutex is
//! cheaper than anything cleverer. Slots and admitted users are guards: dropping one
//! gives its place back, so a connection that ends in any way cannot leak its place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::config::ShardConfig;
use crate::rate_limit::{Bucket, Rate};

/// Per-IP buckets kept at most; past this, full (idle) buckets are forgotten first.
const MAX_TRACKED_IPS: usize = 65_536;

/// Why a connection or a user was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the node holds its maximum of connections")]
    NodeFull,
    #[error("too many connection attempts from this address")]
    IpRate { retry_after: Duration },
    #[error("the user holds its maximum of connections")]
    UserLimit,
}

/// See the module docs.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    /// Attempts per second per address; `None`: no limit.
    ip_rate: Option<Rate>,
    max_connections_per_user: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, Bucket>>,
    per_user: Mutex<HashMap<Box<str>, usize>>,
}

impl Admission {
    pub fn new(config: &ShardConfig) -> Admission {
        Admission {
            max_connections: config.max_connections,
            ip_rate: (config.ip_connect_rate > 0).then(|| {
                Rate::new(
                    config.ip_connect_rate,
                    Duration::from_secs(1),
                    config.ip_connect_burst.max(config.ip_connect_rate),
                )
            }),
            max_connections_per_user: config.max_connections_per_user,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one more connection from `ip`: within the node's maximum and the
    /// address's attempt rate. Every attempt counts against the rate, admitted or not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnectionSlot, Denied> {
        if let Some(rate) = &self.ip_rate {
            self.take_ip_attempt(rate, ip, now)?;
        }
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot(self.clone());
        if self.max_connections > 0 && open >= self.max_connections {
            return Err(Denied::NodeFull); // `slot` gives the place back
        }
        Ok(slot)
    }

    fn take_ip_attempt(&self, rate: &Rate, ip: IpAddr, now: Instant) -> Result<(), Denied> {
        let mut per_ip = lock(&self.per_ip);
        if per_ip.len() >= MAX_TRACKED_IPS && !per_ip.contains_key(&ip) {
            per_ip.retain(|_, bucket| !bucket.is_full(rate, now));
            if per_ip.len() >= MAX_TRACKED_IPS {
                per_ip.clear();
            }
        }
        let bucket = per_ip.entry(ip).or_insert_with(|| Bucket::full(rate, now));
        if bucket.try_take(rate, now) {
            Ok(())
        } else {
            Err(Denied::IpRate {
                retry_after: bucket.retry_after(rate, now),
            })
        }
    }

    /// Admits `identity`'s connection: claims one of its user's places.
    pub fn claim_user(self: &Arc<Self>, identity: Identity) -> Result<AdmittedUser, Denied> {
        if self.max_connections_per_user == 0 {
            return Ok(AdmittedUser {
                identity,
                place_of: None,
            });
        }
        let mut per_user = lock(&self.per_user);
        let held = per_user.entry(identity.user_id.clone()).or_insert(0);
        if *held >= self.max_connections_per_user {
            return Err(Denied::UserLimit);
        }
        *held += 1;
        Ok(AdmittedUser {
            identity,
            place_of: Some(self.clone()),
        })
    }

    /// Gives back one of `user_id`'s places.
    fn release_user(&self, user_id: &str) {
        let mut per_user = lock(&self.per_user);
        if let Some(held) = per_user.get_mut(user_id) {
            *held -= 1;
            if *held == 0 {
                per_user.remove(user_id);
            }
        }
    }

    /// Connections admitted and not yet closed, node-wide.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A poisoned lock only means another shard panicked mid-update of a counter map;
/// the map is still usable, and refusing every connection would be worse.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection's place in the node's maximum; given back on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Admission>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An authenticated connection's user: who it runs as and, under a per-user maximum,
/// the place it holds among the user's connections, given back when this is dropped.
/// The place is keyed by the identity's user id, so the id is kept once per connection
/// and a refreshed identity must be the same user's.
#[derive(Debug)]
pub struct AdmittedUser {
    identity: Identity,
    /// Where the place is held; `None` when users have no maximum.
    place_of: Option<Arc<Admission>>,
}

impl AdmittedUser {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Runs as `identity` from now on (a refreshed token). The place stays the user's:
    /// another user's identity is refused and handed back.
    pub fn replace_identity(&mut self, identity: Identity) -> Result<(), Identity> {
        if identity.user_id != self.identity.user_id {
            return Err(identity);
        }
        self.identity = identity;
        Ok(())
    }
}

impl Drop for AdmittedUser {
    fn drop(&mut self) {
        if let Some(admission) = self.place_of.take() {
            admission.release_user(&self.identity.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn admission(edit: impl FnOnce(&mut ShardConfig)) -> Arc<Admission> {
        let mut config = ShardConfig::default();
        edit(&mut config);
        Arc::new(Admission::new(&config))
    }

    #[test]
    fn node_maximum_counts_open_slots_and_takes_them_back_on_drop() {
        let admission = admission(|c| c.max_connections = 2);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let now = Instant::now();
        let a = admission.admit(ip, now).unwrap();
        let _b = admission.admit(ip, now).unwrap();
        assert_eq!(admission.admit(ip, now).unwrap_err(), Denied::NodeFull);
        assert_eq!(admission.open_connections(), 2, "a refusal holds no place");
        drop(a);
        assert!(admission.admit(ip, now).is_ok());
    }

    #[test]
    fn each_address_has_its_own_attempt_rate() {
        let admission = admission(|c| {
            c.ip_connect_rate = 1;
            c.ip_connect_burst = 2;
        });
        let (one, two) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        let _held: Vec<_> = (0..2).map(|_| admission.admit(one, now).unwrap()).collect();
        let Err(Denied::IpRate { retry_after }) = admission.admit(one, now) else {
            panic!("the third attempt within the burst must be refused");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        assert!(
            admission.admit(two, now).is_ok(),
            "another address is not affected"
        );
        assert!(admission.admit(one, now + Duration::from_secs(1)).is_ok());
    }

    fn user(user_id: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            name: None,
            expires_at: 0,
            topics: Default::default(),
            extras: None,
        }
    }

    #[test]
    fn users_hold_at_most_their_maximum_and_get_places_back() {
        let admission = admission(|c| c.max_connections_per_user = 2);
        let a = admission.claim_user(user("alice")).unwrap();
        let _b = admission.claim_user(user("alice")).unwrap();
        assert_eq!(
            admission.claim_user(user("alice")).unwrap_err(),
            Denied::UserLimit
        );
        assert!(admission.claim_user(user("bob")).is_ok());
        drop(a);
        assert!(admission.claim_user(user("alice")).is_ok());
    }

    #[test]
    fn a_refreshed_identity_keeps_the_place_and_another_users_is_refused() {
        let admission = admission(|c| c.max_connections_per_user = 1);
        let mut alice = admission.claim_user(user("alice")).unwrap();
        let mut renewed = user("alice");
        renewed.expires_at = 99;
        assert!(alice.replace_identity(renewed).is_ok());
        assert_eq!(alice.identity().expires_at, 99);
        let refused = alice.replace_identity(user("bob")).unwrap_err();
        assert_eq!(&*refused.user_id, "bob");
        assert_eq!(&*alice.identity().user_id, "alice");
        assert!(admission.claim_user(user("alice")).is_err(), "still held");
        drop(alice);
        assert!(admission.claim_user(user("alice")).is_ok(), "given back");
        assert!(admission.claim_user(user("bob")).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let admission = admission(|c| {
            c.max_connections = 0;
            c.max_connections_per_user = 0;
            c.ip_connect_rate = 0;
        });
        let ip = IpAddr::from([127, 0, 0, 1]);
        let slots: Vec<_> = (0..100)
            .map(|_| admission.admit(ip, Instant::now()).unwrap())
            .collect();
        let users: Vec<_> = (0..100)
            .map(|_| admission.claim_user(user("u")).unwrap())
            .collect();
        assert_eq!(slots.len() + users.len(), 200);
    }
}
