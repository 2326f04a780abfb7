//! Uploads over time: at start, deleting what nobody can resume and counting the rest as sessions; while running,
//! expiring uploads nobody wrote to for too long. Each candidate is judged again under its session's lock, so a
//! sweep never deletes an upload a request is writing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Registry, SessionSlot};
use crate::registry::error::Result;

/// What [`Registry::recover_uploads`] did at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveredUploads {
    /// Resumable sessions kept.
    pub kept: usize,
    /// Interrupted monolithic uploads and incomplete upload directories deleted.
    pub deleted: usize,
}

impl Registry {
    /// At start: deletes uploads nobody can resume (monolithic pushes and proxy fetches interrupted by a crash,
    /// directories without their info) and counts the others as sessions.
    pub async fn recover_uploads(&self) -> Result<RecoveredUploads> {
        let mut recovered = RecoveredUploads::default();
        for (id, _) in self.storage.uploads().await? {
            let resumable = match self.storage.upload_info(&id).await {
                Ok(Some(info)) => !info.monolithic,
                Ok(None) => false,
                Err(e) => {
                    // Kept (and counted): an operator may want to look at it; it expires with its age.
                    log::warn!("upload {id}: {e}");
                    true
                }
            };
            if resumable {
                self.sessions().entry(id).or_default();
                recovered.kept += 1;
            } else {
                self.storage.upload_delete(&id).await?;
                recovered.deleted += 1;
            }
        }
        Ok(recovered)
    }

    /// Deletes uploads untouched for longer than `max_age`; returns how many.
    ///
    /// Each candidate is judged again under its session's lock, since a request may have written to it after the
    /// listing: one a request holds is in use and skipped, one written since is kept. A delete that fails is
    /// logged and the sweep goes on (the next sweep retries it).
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let stale = |last_write: SystemTime| {
            self.clock
                .system()
                .duration_since(last_write)
                .unwrap_or_default()
                > max_age
        };
        let mut expired = 0;
        for (id, last_write) in self.storage.uploads().await? {
            if !stale(last_write) {
                continue;
            }
            // An upload without a session (a proxy fetch) gets one while it is judged, so that no request on it
            // runs meanwhile; it is taken out again if the upload stays.
            let (slot, added) = {
                let mut sessions = self.sessions();
                match sessions.get(&id) {
                    Some(slot) => (slot.clone(), false),
                    None => {
                        let slot = SessionSlot::default();
                        sessions.insert(id.clone(), slot.clone());
                        (slot, true)
                    }
                }
            };
            let Ok(session) = slot.clone().try_lock_owned() else {
                continue;
            };
            let delete = match self.storage.upload_modified(&id).await {
                Ok(Some(last_write)) => stale(last_write),
                Ok(None) => {
                    drop(session);
                    self.forget(&id);
                    continue;
                }
                Err(e) => {
                    log::warn!("expiring upload {id}: {e}");
                    false
                }
            };
            if delete {
                match self.storage.upload_delete(&id).await {
                    Ok(()) => {
                        drop(session);
                        self.forget(&id);
                        expired += 1;
                    }
                    Err(e) => log::warn!("expiring upload {id}: {e}"),
                }
            } else {
                drop(session);
                if added {
                    let mut sessions = self.sessions();
                    // Only when nobody else took hold of it meanwhile (the map's reference and ours).
                    if sessions.get(&id).is_some_and(|held| {
                        Arc::ptr_eq(held, &slot) && Arc::strong_count(held) == 2
                    }) {
                        sessions.remove(&id);
                    }
                }
            }
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{body, faulty_registry, memory_registry, repo, Faulty};
    use crate::clock::{Clock, ManualClock};
    use crate::registry::error::RegistryError;

    /// Issue 10: the sweep read the machine's clock, so ageing an upload took a sleep (tests/api.rs slept 1.5 s).
    /// On the registry's clock, moved by hand: an upload is kept while it is at most `max_age` old and expired once
    /// it is older, its age counted from its last write (from its start if it was never written).
    #[tokio::test]
    async fn an_upload_expires_once_untouched_for_longer_than_the_max_age() {
        let clock = ManualClock::new();
        let registry = memory_registry(clock.clone());
        let repo = repo("sweep/clock");
        let max_age = Duration::from_secs(3600);
        let idle = registry.upload_start(&repo).await.expect("start");
        let busy = registry.upload_start(&repo).await.expect("start");
        clock.advance(Duration::from_secs(3000));
        let location = format!("/v2/{repo}/blobs/uploads/{busy}");
        registry
            .upload_append(&repo, &busy, &location, None, body(&[b"data"]))
            .await
            .expect("PATCH");

        clock.advance(Duration::from_secs(600));
        let sweep = || registry.expire_uploads(max_age);
        assert_eq!(
            sweep().await.expect("sweep"),
            0,
            "both are at most an hour old"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(sweep().await.expect("sweep"), 1, "the idle one is older");
        assert!(matches!(
            registry.upload_size(&repo, &idle).await,
            Err(RegistryError::BlobUploadUnknown(_))
        ));
        assert_eq!(registry.upload_size(&repo, &busy).await.expect("kept"), 4);
        assert_eq!(registry.upload_sessions(), 1);

        clock.advance(Duration::from_secs(2999));
        assert_eq!(sweep().await.expect("sweep"), 0, "an hour since its write");
        clock.advance(Duration::from_secs(1));
        assert_eq!(sweep().await.expect("sweep"), 1, "more than an hour");
        assert!(matches!(
            registry.upload_size(&repo, &busy).await,
            Err(RegistryError::BlobUploadUnknown(_))
        ));
        assert_eq!(registry.upload_sessions(), 0);
    }

    /// The start time recorded with an upload is the registry's clock's.
    #[tokio::test]
    async fn an_upload_records_its_start_on_the_registry_clock() {
        let clock = ManualClock::new();
        let registry = memory_registry(clock.clone());
        clock.advance(Duration::from_secs(86_400 * 365));
        let id = registry
            .upload_start(&repo("sweep/started"))
            .await
            .expect("start");
        let expected = clock
            .system()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs();
        let info = registry
            .storage
            .upload_info(&id)
            .await
            .expect("info")
            .expect("the upload exists");
        assert_eq!(info.started_unix, expected);
    }
    use super::*;

    /// Review of issue 9: the sweeper judged an upload stale from a listing taken before it took the upload's lock,
    /// and deleted it even when a request had written to it since.
    #[tokio::test]
    async fn the_upload_sweeper_keeps_an_upload_written_after_its_listing() {
        let (_dir, _storage, registry) = faulty_registry(|root| Faulty {
            stale_listing: true,
            ..Faulty::new(root, Duration::ZERO)
        });
        let repo = repo("sweep/fresh");
        let id = registry.upload_start(&repo).await.expect("start");
        let location = format!("/v2/{repo}/blobs/uploads/{id}");
        registry
            .upload_append(&repo, &id, &location, None, body(&[b"fresh"]))
            .await
            .expect("PATCH");
        let expired = registry
            .expire_uploads(Duration::from_secs(3600))
            .await
            .expect("sweep");
        assert_eq!(expired, 0);
        assert_eq!(registry.upload_size(&repo, &id).await.expect("kept"), 5);
        assert_eq!(registry.upload_sessions(), 1);
    }

    /// Review of issue 9: one upload that could not be deleted stopped the sweep, so every stale upload listed
    /// after it stayed.
    #[tokio::test]
    async fn one_failed_delete_does_not_stop_the_upload_sweep() {
        let (dir, storage, registry) = faulty_registry(|root| Faulty::new(root, Duration::ZERO));
        let repo = repo("sweep/stale");
        let stuck = registry.upload_start(&repo).await.expect("start");
        let stale = registry.upload_start(&repo).await.expect("start");
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        for id in [&stuck, &stale] {
            std::fs::File::options()
                .append(true)
                .open(dir.path().join("uploads").join(id.as_str()).join("data"))
                .and_then(|data| data.set_modified(long_ago))
                .expect("age the upload");
        }
        *storage.undeletable.lock().expect("lock") = Some(stuck.clone());
        let expired = registry
            .expire_uploads(Duration::from_secs(3600))
            .await
            .expect("the sweep goes on past a failed delete");
        assert_eq!(expired, 1);
        assert!(
            registry.upload_size(&repo, &stale).await.is_err(),
            "expired"
        );
        assert!(registry.upload_size(&repo, &stuck).await.is_ok(), "kept");
        assert_eq!(registry.upload_sessions(), 1, "the kept upload's session");
    }
}
