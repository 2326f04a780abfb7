//! Users from an htpasswd file (`--htpasswd`): bcrypt hashes only, parsed into a user table ([`parse`], pure),
//! held in a [`HtpasswdStore`] that swaps in a new table when the file changes (an invalid file keeps the last good
//! one and says why in `/readyz`), and verifies passwords: bcrypt off the async workers, a short-lived cache of
//! successful checks keyed by a hash of user and password, and a bcrypt verification for unknown users too, at the
//! cost of the file's own hashes, so that timing does not tell which users exist. Verifications wait a bounded time
//! for one of the per-CPU bcrypt slots and a client address has only a few in flight: a flood is told it is busy
//! instead of starving everyone's logins. Passwords bcrypt cannot check whole (over 72 bytes) are refused, never
//! truncated. [`HtpasswdStore::credential_of`] names a user's entry (a short hash of it) so that a token issued to
//! that user can be bound to the password it was issued for.
//!
//! Must not: log, return or put into an error a password or a hash.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::throttle::PerClient;
use crate::clock::SharedClock;

/// How often the file is checked for changes.
const FILE_POLL: Duration = Duration::from_millis(500);
/// How long a successful check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Successful checks remembered at most.
const CACHE_ENTRIES: usize = 4096;
/// Largest htpasswd file read (a bcrypt line is about 70 bytes: this is tens of thousands of users).
const MAX_FILE_BYTES: usize = 4 << 20;
/// The bcrypt cost of the hash verified for unknown users when the file has no hash to take it from (the cost
/// `htpasswd -B` uses by default).
const DEFAULT_COST: u32 = 5;
/// The longest password bcrypt reads; longer ones would be checked by their first 72 bytes only.
pub const MAX_PASSWORD_BYTES: usize = 72;
/// How long a verification waits for a bcrypt slot before the login is told to retry.
const SLOT_WAIT: Duration = Duration::from_secs(2);
/// bcrypt verifications in flight (waiting or running) from one client address at most.
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 4;
/// What a client told to retry is told to wait, in seconds.
pub const BUSY_RETRY_AFTER: u32 = 1;

/// bcrypt verifications that run at once: one per CPU, so a flood of logins queues instead of taking every
/// blocking thread and every core.
fn bcrypt_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why an htpasswd file was refused. Names the line and the user, never the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("htpasswd file {path}: {why}")]
    Read { path: String, why: String },
    /// The file named is invalid (the cause names the line and the user).
    #[error("htpasswd file {path}: {source}")]
    Invalid {
        path: String,
        #[source]
        source: Box<HtpasswdError>,
    },
    /// The file is larger than berth reads.
    #[error("htpasswd file of {0} bytes is larger than the {MAX_FILE_BYTES} accepted")]
    TooLarge(usize),
    /// A line without `user:hash`.
    #[error("line {line}: expected user:bcrypt-hash")]
    Malformed { line: usize },
    /// A hash that is not bcrypt (`$2y$`, `$2b$`, `$2a$`).
    #[error("line {line}: user {user:?} has a hash that is not bcrypt (only $2y$, $2b$ and $2a$ are accepted)")]
    NotBcrypt { line: usize, user: String },
    /// A user name with characters that cannot be a login name (control characters, whitespace).
    #[error("line {line}: user name {user:?} contains whitespace or control characters")]
    BadUser { line: usize, user: String },
    /// The same user twice.
    #[error("line {line}: user {user:?} appears again (first on line {first})")]
    Duplicate {
        line: usize,
        first: usize,
        user: String,
    },
}

/// The users of one htpasswd file: name → bcrypt hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users {
    hashes: BTreeMap<String, String>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.hashes.keys()).finish()
    }
}

impl Users {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// The highest bcrypt cost of the file's hashes ([`DEFAULT_COST`] for an empty file): what an unknown user's
    /// verification must cost so that it takes as long as a known one's.
    pub fn max_cost(&self) -> u32 {
        self.hashes
            .values()
            .filter_map(|hash| hash.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(DEFAULT_COST)
    }
}

/// Parses htpasswd text: one `user:hash` a line; blank lines and lines starting with `#` are skipped. Pure.
pub fn parse(text: &str) -> Result<Users, HtpasswdError> {
    let mut hashes = BTreeMap::new();
    let mut first_line = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = trimmed.split_once(':') else {
            return Err(HtpasswdError::Malformed { line });
        };
        if user.is_empty() || hash.is_empty() {
            return Err(HtpasswdError::Malformed { line });
        }
        if user.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(HtpasswdError::BadUser {
                line,
                user: user.chars().filter(|c| !c.is_control()).collect(),
            });
        }
        let bcrypt =
            ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) && bcrypt_shape(hash);
        if !bcrypt {
            return Err(HtpasswdError::NotBcrypt {
                line,
                user: user.to_owned(),
            });
        }
        if let Some(first) = first_line.insert(user.to_owned(), line) {
            return Err(HtpasswdError::Duplicate {
                line,
                first,
                user: user.to_owned(),
            });
        }
        hashes.insert(user.to_owned(), hash.to_owned());
    }
    Ok(Users { hashes })
}

/// `$2?$NN$` and 53 characters of salt and hash.
fn bcrypt_shape(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    bytes.len() == 60
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/')
}

/// The answer to a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The user exists and the password is theirs.
    Valid,
    /// The user exists; the password is wrong.
    WrongPassword,
    /// No such user (a bcrypt verification was spent all the same).
    UnknownUser,
    /// The password is longer than bcrypt reads ([`MAX_PASSWORD_BYTES`]); refused without a check, whoever the
    /// user.
    TooLong,
    /// No bcrypt slot within the wait, or too many verifications in flight from the client's address: retry later.
    Busy,
}

/// A short, stable name of one user's htpasswd entry (the first 16 hex digits of sha256 of the hash string): it
/// changes when the password does. Not a secret, and it reveals nothing of the hash.
pub type CredentialTag = String;

fn credential_tag(hash: &str) -> CredentialTag {
    hex::encode(&Sha256::digest(hash.as_bytes())[..8])
}

struct Loaded {
    users: Users,
    /// A hash of nothing anyone knows at the file's highest cost, verified for unknown users.
    dummy: Arc<String>,
    /// Each user's [`CredentialTag`], made once per file (checked on every request with a user's token).
    tags: HashMap<String, CredentialTag>,
    source: String,
    digest: String,
    loaded_at: SystemTime,
}

/// Successful checks, keyed by sha256 of user and password, until a deadline.
struct Verified {
    entries: HashMap<[u8; 32], Instant>,
}

/// The users in force, reloaded from the file, with the cache of successful checks.
pub struct HtpasswdStore {
    path: PathBuf,
    loaded: ArcSwap<Loaded>,
    last_error: Mutex<Option<String>>,
    verified: Mutex<Verified>,
    bcrypt_slots: tokio::sync::Semaphore,
    slot_wait: Duration,
    /// Verifications in flight by client address.
    in_flight: PerClient,
    clock: SharedClock,
}

impl std::fmt::Debug for HtpasswdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtpasswdStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, HtpasswdError> {
    let bytes = std::fs::read(path).map_err(|e| HtpasswdError::Read {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(HtpasswdError::TooLarge(bytes.len()));
    }
    String::from_utf8(bytes).map_err(|_| HtpasswdError::Read {
        path: path.display().to_string(),
        why: "not UTF-8".into(),
    })
}

fn digest(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

fn tags_of(users: &Users) -> HashMap<String, CredentialTag> {
    users
        .hashes
        .iter()
        .map(|(user, hash)| (user.clone(), credential_tag(hash)))
        .collect()
}

/// A bcrypt hash of nothing anyone knows at `cost`, verified for unknown users: made once per cost and kept.
fn dummy_hash(cost: u32) -> Arc<String> {
    static DUMMIES: OnceLock<Mutex<HashMap<u32, Arc<String>>>> = OnceLock::new();
    let dummies = DUMMIES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut dummies = dummies
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    dummies
        .entry(cost)
        .or_insert_with(|| {
            let secret = uuid::Uuid::new_v4().to_string();
            // The costs come from hashes that parsed (two digits); bcrypt refuses only costs outside 4..=31,
            // and the lowest is used then.
            Arc::new(
                bcrypt::hash(&secret, cost)
                    .or_else(|_| bcrypt::hash(&secret, 4))
                    .unwrap_or_default(),
            )
        })
        .clone()
}

impl HtpasswdStore {
    /// Reads `path` (an invalid or unreadable file refuses the start).
    pub fn load(path: &Path, clock: SharedClock) -> Result<HtpasswdStore, HtpasswdError> {
        let text = read(path)?;
        let users = parse(&text).map_err(|e| HtpasswdError::Invalid {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        log::info!(
            "htpasswd file {} in force: {} users",
            path.display(),
            users.len()
        );
        let dummy = dummy_hash(users.max_cost());
        Ok(HtpasswdStore {
            path: path.to_owned(),
            loaded: ArcSwap::from_pointee(Loaded {
                tags: tags_of(&users),
                users,
                dummy,
                source: format!("file:{}", path.display()),
                digest: digest(&text),
                loaded_at: clock.system(),
            }),
            last_error: Mutex::new(None),
            verified: Mutex::new(Verified {
                entries: HashMap::new(),
            }),
            bcrypt_slots: tokio::sync::Semaphore::new(bcrypt_slots()),
            slot_wait: SLOT_WAIT,
            in_flight: PerClient::new(MAX_IN_FLIGHT_PER_CLIENT),
            clock,
        })
    }

    /// The same with `slots` bcrypt slots and a wait of `slot_wait` for one (tests).
    pub fn with_slots(mut self, slots: usize, slot_wait: Duration) -> HtpasswdStore {
        self.bcrypt_slots = tokio::sync::Semaphore::new(slots.max(1));
        self.slot_wait = slot_wait;
        self
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
    }

    fn forget_verified(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entries
            .clear();
    }

    /// Applies new file content: unchanged content is a no-op; an invalid one keeps the users in force and is
    /// recorded (logged, and shown by [`HtpasswdStore::status`]). Returns whether the users changed.
    pub fn apply(&self, text: &str) -> Result<bool, HtpasswdError> {
        let source = format!("file:{}", self.path.display());
        match parse(text) {
            Ok(users) => {
                self.set_error(None);
                let next_digest = digest(text);
                if self.loaded.load().digest == next_digest {
                    return Ok(false);
                }
                log::info!("htpasswd {source} reloaded: {} users", users.len());
                let dummy = dummy_hash(users.max_cost());
                self.loaded.store(Arc::new(Loaded {
                    tags: tags_of(&users),
                    users,
                    dummy,
                    source,
                    digest: next_digest,
                    loaded_at: self.clock.system(),
                }));
                // A removed user or a changed password must stop working now, not when the cache forgets it.
                self.forget_verified();
                Ok(true)
            }
            Err(e) => {
                let current = self.loaded.load();
                log::error!(
                    "htpasswd {source} not loaded, keeping the {} users of {}: {e}",
                    current.users.len(),
                    current.digest
                );
                self.set_error(Some(format!("{source}: {e}")));
                Err(e)
            }
        }
    }

    /// Whether `user` is in the file.
    pub fn has_user(&self, user: &str) -> bool {
        self.loaded.load().users.contains(user)
    }

    /// The tag of `user`'s entry in the file in force (None: no such user).
    pub fn credential_of(&self, user: &str) -> Option<CredentialTag> {
        self.loaded.load().tags.get(user).cloned()
    }

    /// Checks `password` for `user`: from the cache of successful checks, else with bcrypt on a blocking thread.
    pub async fn verify(&self, user: &str, password: &str) -> Verdict {
        self.verify_from(user, password, None).await.0
    }

    /// Checks `password` for `user` on behalf of `client` (its verifications in flight are capped), and answers with
    /// the tag of the entry it was checked against when valid (see [`HtpasswdStore::credential_of`]).
    /// Whether `user`'s `password` was verified recently against the users in force (a lookup, no bcrypt).
    pub fn is_verified(&self, user: &str, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_BYTES || !self.has_user(user) {
            return false;
        }
        let key = cache_key(user, password);
        let now = self.clock.instant();
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entries
            .get(&key)
            .is_some_and(|deadline| *deadline > now)
    }

    pub async fn verify_from(
        &self,
        user: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> (Verdict, Option<CredentialTag>) {
        // Before anything that depends on the user, so that it tells nothing about who exists.
        if password.len() > MAX_PASSWORD_BYTES {
            return (Verdict::TooLong, None);
        }
        let key = cache_key(user, password);
        let now = self.clock.instant();
        let loaded = self.loaded.load_full();
        let hash = loaded.users.hashes.get(user).cloned();
        {
            let verified = self
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let (true, Some(hash)) = (
                verified
                    .entries
                    .get(&key)
                    .is_some_and(|deadline| *deadline > now),
                &hash,
            ) {
                return (Verdict::Valid, Some(credential_tag(hash)));
            }
        }
        let _in_flight = match client {
            Some(client) => match self.in_flight.enter(client) {
                Some(guard) => Some(guard),
                None => return (Verdict::Busy, None),
            },
            None => None,
        };
        let known = hash.is_some();
        let tag = hash.as_deref().map(credential_tag);
        let password = password.to_owned();
        // The semaphore is never closed; a closed one would only mean no slot, and the login is told to retry.
        let _slot = match tokio::time::timeout(self.slot_wait, self.bcrypt_slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => return (Verdict::Busy, None),
        };
        let dummy = loaded.dummy.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or(dummy.as_str());
            // bcrypt compares its output with the stored hash in constant time. The length was checked above, so
            // bcrypt reads the whole password (`non_truncating_verify` would also refuse exactly 72 bytes, for
            // the terminating NUL it cuts, which `htpasswd -B` accepts).
            bcrypt::verify(password, hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        match (known, matched) {
            (false, _) => (Verdict::UnknownUser, None),
            (true, false) => (Verdict::WrongPassword, None),
            (true, true) => {
                // Remember it only if the users it was checked against are still the ones in force, compared under
                // the lock: a reload stores the new users and then clears the cache under it, so a check that saw
                // the old users cannot slip its entry in after the clearing.
                let mut verified = self
                    .verified
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if Arc::ptr_eq(&loaded, &self.loaded.load_full()) {
                    if verified.entries.len() >= CACHE_ENTRIES {
                        verified.entries.retain(|_, deadline| *deadline > now);
                        if verified.entries.len() >= CACHE_ENTRIES {
                            verified.entries.clear();
                        }
                    }
                    verified.entries.insert(key, now + CACHE_TTL);
                }
                (Verdict::Valid, tag)
            }
        }
    }

    /// What `/readyz` reports: the file, its digest, the number of users, when it was loaded, the last error.
    pub fn status(&self) -> serde_json::Value {
        let loaded = self.loaded.load();
        json!({
            "source": loaded.source,
            "digest": loaded.digest,
            "users": loaded.users.len(),
            "loadedAtUnix": loaded.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "lastError": self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        })
    }

    /// Polls the file and applies changes (content decides, not timestamps). Runs until the process ends.
    pub async fn watch(self: Arc<Self>) {
        let mut last_seen: Option<String> = None;
        loop {
            tokio::time::sleep(FILE_POLL).await;
            let path = self.path.clone();
            let text = match tokio::task::spawn_blocking(move || read(&path)).await {
                Ok(result) => result,
                Err(e) => Err(HtpasswdError::Read {
                    path: self.path.display().to_string(),
                    why: e.to_string(),
                }),
            };
            match text {
                Ok(text) => {
                    if last_seen.as_deref() == Some(text.as_str()) {
                        continue;
                    }
                    let _ = self.apply(&text);
                    last_seen = Some(text);
                }
                Err(e) => {
                    if last_seen.is_some() {
                        log::warn!("{e}; keeping the users in force");
                        self.set_error(Some(e.to_string()));
                        last_seen = None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// bcrypt at its lowest cost keeps the tests fast.
    fn hash(password: &str) -> String {
        bcrypt::hash(password, 4).expect("hash")
    }

    fn check(text: &str, expected: Result<Vec<&str>, HtpasswdError>) {
        let parsed = parse(text).map(|users| {
            users
                .hashes
                .keys()
                .map(String::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let expected = expected.map(|users| users.into_iter().map(str::to_owned).collect());
        assert_eq!(parsed, expected, "{text:?}");
    }

    #[test]
    fn files_parse_or_name_the_line_and_user() {
        let good = hash("pw");
        let b_variant = good.replacen("$2b$", "$2y$", 1);
        let a_variant = good.replacen("$2b$", "$2a$", 1);
        check("", Ok(vec![]));
        check(
            &format!("# users\n\nalice:{good}\nbob:{b_variant}\r\ncarol:{a_variant}\n"),
            Ok(vec!["alice", "bob", "carol"]),
        );
        check(
            &format!("alice:{good}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"),
            Err(HtpasswdError::NotBcrypt {
                line: 2,
                user: "bob".into(),
            }),
        );
        check(
            "eve:$apr1$abc$def\n",
            Err(HtpasswdError::NotBcrypt {
                line: 1,
                user: "eve".into(),
            }),
        );
        check(
            "eve:$2y$10$short\n",
            Err(HtpasswdError::NotBcrypt {
                line: 1,
                user: "eve".into(),
            }),
        );
        check("nocolon\n", Err(HtpasswdError::Malformed { line: 1 }));
        check(
            &format!(":{good}\n"),
            Err(HtpasswdError::Malformed { line: 1 }),
        );
        check(
            &format!("alice:{good}\nalice:{good}\n"),
            Err(HtpasswdError::Duplicate {
                line: 2,
                first: 1,
                user: "alice".into(),
            }),
        );
    }

    #[test]
    fn errors_never_show_the_hash() {
        let error = parse("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").expect_err("not bcrypt");
        assert!(!error.to_string().contains("W6ph5"), "{error}");
    }

    fn store_with(dir: &Path, text: &str) -> HtpasswdStore {
        let path = dir.join("htpasswd");
        std::fs::write(&path, text).expect("write");
        HtpasswdStore::load(&path, ManualClock::new()).expect("load")
    }

    #[test]
    fn an_invalid_file_at_start_is_refused_naming_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "alice:plain\n").expect("write");
        let error = HtpasswdStore::load(&path, ManualClock::new()).expect_err("invalid");
        let shown = error.to_string();
        assert!(
            shown.contains(&path.display().to_string()) && shown.contains("line 1"),
            "{shown}"
        );
        let missing =
            HtpasswdStore::load(&dir.path().join("nope"), ManualClock::new()).expect_err("missing");
        assert!(matches!(missing, HtpasswdError::Read { .. }), "{missing}");
    }

    #[tokio::test]
    async fn passwords_are_checked_and_unknown_users_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), &format!("alice:{}\n", hash("s3cret")));
        assert_eq!(store.verify("alice", "s3cret").await, Verdict::Valid);
        // Cached now; still right.
        assert_eq!(store.verify("alice", "s3cret").await, Verdict::Valid);
        assert_eq!(store.verify("alice", "wrong").await, Verdict::WrongPassword);
        assert_eq!(
            store.verify("mallory", "s3cret").await,
            Verdict::UnknownUser
        );
    }

    #[tokio::test]
    async fn a_change_takes_effect_at_once_and_a_bad_file_keeps_the_last_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), &format!("alice:{}\n", hash("old")));
        assert_eq!(store.verify("alice", "old").await, Verdict::Valid);
        assert_eq!(store.apply(&format!("alice:{}\n", hash("new"))), Ok(true));
        // The cached success of the old password is gone with the old file.
        assert_eq!(store.verify("alice", "old").await, Verdict::WrongPassword);
        assert_eq!(store.verify("alice", "new").await, Verdict::Valid);
        let error = store.apply("alice:plaintext\n").expect_err("invalid");
        assert_eq!(
            error,
            HtpasswdError::NotBcrypt {
                line: 1,
                user: "alice".into()
            }
        );
        assert_eq!(store.verify("alice", "new").await, Verdict::Valid);
        let status = store.status();
        assert_eq!(status["users"], 1);
        assert!(
            status["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("line 1") && e.contains("alice")),
            "{status}"
        );
    }

    #[test]
    fn unknown_users_cost_what_the_files_hashes_cost() {
        let check = |costs: &[u32], expected: u32| {
            let text: String = costs
                .iter()
                .enumerate()
                .map(|(i, cost)| format!("user{i}:{}\n", bcrypt::hash("pw", *cost).expect("hash")))
                .collect();
            let users = parse(&text).expect("parse");
            assert_eq!(users.max_cost(), expected, "{costs:?}");
        };
        check(&[], DEFAULT_COST);
        check(&[4], 4);
        check(&[4, 6, 5], 6);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(
            dir.path(),
            &format!("alice:{}\n", bcrypt::hash("pw", 6).expect("hash")),
        );
        assert_eq!(&store.loaded.load().dummy[..7], "$2b$06$");
        store
            .apply(&format!("alice:{}\n", hash("pw")))
            .expect("reload");
        assert_eq!(&store.loaded.load().dummy[..7], "$2b$04$");
    }

    #[tokio::test]
    async fn a_login_waits_a_bounded_time_for_bcrypt_and_one_address_has_few_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with(dir.path(), &format!("alice:{}\n", hash("pw")))
            .with_slots(1, Duration::from_millis(50));
        let held = store.bcrypt_slots.acquire().await.expect("slot");
        assert_eq!(store.verify("alice", "pw").await, Verdict::Busy);
        drop(held);
        let client: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let crowd: Vec<_> = (0..MAX_IN_FLIGHT_PER_CLIENT)
            .map(|_| store.in_flight.enter(client).expect("room"))
            .collect();
        assert_eq!(
            store.verify_from("alice", "pw", Some(client)).await.0,
            Verdict::Busy
        );
        let other: std::net::IpAddr = "10.0.0.2".parse().expect("ip");
        let (verdict, tag) = store.verify_from("alice", "pw", Some(other)).await;
        assert_eq!(
            (verdict, tag),
            (Verdict::Valid, store.credential_of("alice"))
        );
        drop(crowd);
        assert_eq!(
            store.verify_from("alice", "pw", Some(client)).await.0,
            Verdict::Valid
        );
        assert!(store.in_flight.is_idle());
    }

    #[tokio::test]
    async fn passwords_bcrypt_cannot_read_whole_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = format!("{}A", "x".repeat(MAX_PASSWORD_BYTES));
        let store = store_with(
            dir.path(),
            &format!("alice:{}\n", hash(&"x".repeat(MAX_PASSWORD_BYTES))),
        );
        assert_eq!(store.verify("alice", &long).await, Verdict::TooLong);
        assert_eq!(store.verify("nobody", &long).await, Verdict::TooLong);
        assert_eq!(
            store.verify("alice", &"x".repeat(MAX_PASSWORD_BYTES)).await,
            Verdict::Valid
        );
    }

    #[test]
    fn the_credential_tag_changes_with_the_password_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = hash("pw");
        let store = store_with(dir.path(), &format!("alice:{alice}\n"));
        let before = store.credential_of("alice").expect("alice");
        assert_eq!(before.len(), 16);
        store
            .apply(&format!("alice:{alice}\nbob:{}\n", hash("x")))
            .expect("bob added");
        assert_eq!(store.credential_of("alice"), Some(before.clone()));
        store
            .apply(&format!("alice:{}\n", hash("pw")))
            .expect("new salt");
        assert_ne!(store.credential_of("alice"), Some(before));
        assert_eq!(store.credential_of("bob"), None);
    }

    #[tokio::test]
    async fn the_watch_reloads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(store_with(dir.path(), &format!("alice:{}\n", hash("pw"))));
        let watch = tokio::spawn(store.clone().watch());
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("alice:{}\nbob:{}\n", hash("pw"), hash("pw2")),
        )
        .expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.has_user("bob") {
            assert!(Instant::now() < deadline, "bob never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watch.abort();
    }
}
