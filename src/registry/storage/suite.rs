//! The storage contract as one test suite, run against every backend: each backend's tests call [`run`] on a fresh
//! store (`fs.rs` on a temporary directory, `memory.rs`; S3 later). Besides the common path it pins down the edges
//! where two backends could plausibly differ: missing uploads, truncating and reading past the end, conditional
//! tag deletes, what the upload listing shows after a delete or a commit.

use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteRange, ByteStream, Storage, StorageError, StoredManifest, UploadInfo};
use crate::registry::names::{Digest, RepoName, Tag, UploadId};

async fn collect(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).expect("valid name")
}

fn tag(name: &str) -> Tag {
    Tag::parse(name).expect("valid tag")
}

/// Uploads `content` in two appends and commits it; returns its digest.
async fn push_blob(storage: &dyn Storage, repo_name: &RepoName, content: &[u8]) -> Digest {
    let id = UploadId::new_random();
    let info = UploadInfo {
        repository: repo_name.to_string(),
        size: 0,
        started_unix: 1,
        monolithic: false,
    };
    storage
        .upload_create(&id, &info)
        .await
        .expect("create upload");
    let (first, second) = content.split_at(content.len() / 2);
    for part in [first, second] {
        let mut writer = storage.upload_writer(&id).await.expect("writer");
        writer
            .write(Bytes::copy_from_slice(part))
            .await
            .expect("write");
        writer.finish().await.expect("finish");
    }
    let digest = Digest::sha256_of(content);
    storage
        .upload_commit(&id, &digest, content.len() as u64)
        .await
        .expect("commit");
    storage.blob_link(repo_name, &digest).await.expect("link");
    digest
}

pub async fn run(storage: &dyn Storage) {
    uploads(storage).await;
    upload_edges(storage).await;
    missing_uploads(storage).await;
    blobs(storage).await;
    manifests_and_tags(storage).await;
    referrers(storage).await;
    repositories(storage).await;
    storage.check_writable().await.expect("writable");
}

async fn uploads(storage: &dyn Storage) {
    let id = UploadId::new_random();
    assert_eq!(storage.upload_info(&id).await.expect("info"), None);
    let info = UploadInfo {
        repository: "up/load".into(),
        size: 0,
        started_unix: 42,
        monolithic: false,
    };
    storage.upload_create(&id, &info).await.expect("create");
    assert_eq!(
        storage.upload_info(&id).await.expect("info"),
        Some(info.clone())
    );

    let mut writer = storage.upload_writer(&id).await.expect("writer");
    for chunk in [&b"hello "[..], b"world"] {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    assert_eq!(writer.written(), 11, "the size is known before finishing");
    assert_eq!(writer.finish().await.expect("finish"), 11);
    // A writer opened on a non-empty upload counts from the upload's size.
    let mut writer = storage.upload_writer(&id).await.expect("writer");
    assert_eq!(writer.written(), 11);
    writer.write(Bytes::from_static(b"!")).await.expect("write");
    assert_eq!(writer.written(), 12);
    drop(writer);
    storage.upload_truncate(&id, 11).await.expect("truncate");
    assert_eq!(
        storage
            .upload_info(&id)
            .await
            .expect("info")
            .map(|i| i.size),
        Some(11)
    );
    assert_eq!(
        collect(storage.upload_read(&id).await.expect("read")).await,
        b"hello world"
    );

    assert_eq!(
        storage.upload_read_at(&id, 6, 100).await.expect("read at"),
        Bytes::from_static(b"world")
    );
    assert_eq!(
        storage.upload_read_at(&id, 0, 5).await.expect("read at"),
        Bytes::from_static(b"hello")
    );
    assert!(storage
        .upload_read_at(&id, 11, 10)
        .await
        .expect("read at the end")
        .is_empty());
    storage.upload_truncate(&id, 5).await.expect("truncate");
    assert_eq!(
        collect(storage.upload_read(&id).await.expect("read")).await,
        b"hello"
    );
    assert!(storage
        .uploads()
        .await
        .expect("list")
        .iter()
        .any(|(listed, _)| listed == &id));

    storage.upload_delete(&id).await.expect("delete");
    assert_eq!(storage.upload_info(&id).await.expect("info"), None);
    let writer = storage.upload_writer(&id).await.map(|_| ());
    assert!(
        matches!(writer, Err(StorageError::UploadMissing(_))),
        "writer for a deleted upload: {writer:?}"
    );
    storage
        .upload_delete(&id)
        .await
        .expect("deleting twice is fine");
}

fn upload_info(repository: &str) -> UploadInfo {
    UploadInfo {
        repository: repository.into(),
        size: 0,
        started_unix: 7,
        monolithic: false,
    }
}

/// An upload holding `content`, written by one writer.
async fn upload_holding(storage: &dyn Storage, content: &[u8]) -> UploadId {
    let id = UploadId::new_random();
    storage
        .upload_create(&id, &upload_info("suite/edges"))
        .await
        .expect("create");
    let mut writer = storage.upload_writer(&id).await.expect("writer");
    writer
        .write(Bytes::copy_from_slice(content))
        .await
        .expect("write");
    writer.finish().await.expect("finish");
    id
}

async fn upload_bytes(storage: &dyn Storage, id: &UploadId) -> Vec<u8> {
    collect(storage.upload_read(id).await.expect("read")).await
}

/// The edges of one upload: what a writer reports before finishing, reads past the end, truncating beyond the
/// size, and the listing and lookups after a delete and after a commit.
async fn upload_edges(storage: &dyn Storage) {
    let id = upload_holding(storage, b"abcdef").await;

    // A writer reports the upload's total size, from its opening on, without finishing.
    let mut writer = storage.upload_writer(&id).await.expect("writer");
    assert_eq!(writer.written(), 6, "a new writer of a 6-byte upload");
    writer
        .write_batch(vec![Bytes::from_static(b"gh"), Bytes::from_static(b"ij")])
        .await
        .expect("write batch");
    assert_eq!(writer.written(), 10);
    writer.write(Bytes::new()).await.expect("empty write");
    assert_eq!(writer.written(), 10, "an empty write adds nothing");
    assert_eq!(writer.finish().await.expect("finish"), 10);

    // Reading at or past the end gives nothing; a read that runs over the end gives what there is.
    for offset in [10, 11, 1 << 40] {
        assert!(
            storage
                .upload_read_at(&id, offset, 4)
                .await
                .expect("read past the end")
                .is_empty(),
            "read at {offset} of a 10-byte upload"
        );
    }
    assert_eq!(
        storage.upload_read_at(&id, 8, 100).await.expect("read"),
        Bytes::from_static(b"ij")
    );
    assert_eq!(
        storage.upload_read_at(&id, 5, 3).await.expect("read"),
        Bytes::from_static(b"fgh"),
        "a read across two writes"
    );
    assert!(storage
        .upload_read_at(&id, 3, 0)
        .await
        .expect("read of nothing")
        .is_empty());

    // Truncating to the size changes nothing; beyond it pads with zeros, as a file's set_len does; back cuts.
    storage.upload_truncate(&id, 10).await.expect("truncate");
    assert_eq!(upload_bytes(storage, &id).await, b"abcdefghij");
    storage
        .upload_truncate(&id, 12)
        .await
        .expect("truncate beyond the size");
    assert_eq!(upload_bytes(storage, &id).await, b"abcdefghij\0\0");
    assert_eq!(
        storage
            .upload_info(&id)
            .await
            .expect("info")
            .map(|i| i.size),
        Some(12)
    );
    storage.upload_truncate(&id, 3).await.expect("truncate");
    assert_eq!(upload_bytes(storage, &id).await, b"abc");
    storage.upload_truncate(&id, 0).await.expect("truncate");
    assert_eq!(upload_bytes(storage, &id).await, b"");
    let mut writer = storage.upload_writer(&id).await.expect("writer");
    assert_eq!(writer.written(), 0);
    writer
        .write(Bytes::from_static(b"xyz"))
        .await
        .expect("write after truncating");
    assert_eq!(writer.finish().await.expect("finish"), 3);
    assert_eq!(upload_bytes(storage, &id).await, b"xyz");

    // A writer opened before a truncate appends at the new end (as a file opened for appending does).
    let mut writer = storage.upload_writer(&id).await.expect("writer");
    storage.upload_truncate(&id, 1).await.expect("truncate");
    writer
        .write(Bytes::from_static(b"!"))
        .await
        .expect("write after a truncate");
    assert_eq!(writer.written(), 2);
    assert_eq!(writer.finish().await.expect("finish"), 2);
    assert_eq!(upload_bytes(storage, &id).await, b"x!");

    // The listing and the lookup of its time agree, and both forget a deleted upload.
    let listed = storage.uploads().await.expect("list");
    let modified = listed
        .iter()
        .find_map(|(listed, modified)| (listed == &id).then_some(*modified))
        .expect("the upload is listed");
    assert_eq!(
        storage.upload_modified(&id).await.expect("modified"),
        Some(modified)
    );
    storage.upload_delete(&id).await.expect("delete");
    assert!(!storage
        .uploads()
        .await
        .expect("list")
        .iter()
        .any(|(listed, _)| listed == &id));
    assert_eq!(storage.upload_modified(&id).await.expect("modified"), None);
    assert_eq!(storage.upload_info(&id).await.expect("info"), None);

    // A commit of other than the verified number of bytes is refused and keeps the upload.
    let id = upload_holding(storage, b"goodEVIL").await;
    let good = Digest::sha256_of(b"good");
    let refused = storage.upload_commit(&id, &good, 4).await;
    assert!(
        matches!(refused, Err(StorageError::Corrupt(_))),
        "{refused:?}"
    );
    assert_eq!(storage.blob_size(&good).await.expect("size"), None);
    assert_eq!(
        storage
            .upload_info(&id)
            .await
            .expect("info")
            .map(|i| i.size),
        Some(8)
    );
    storage.upload_delete(&id).await.expect("delete");

    // A committed upload is gone from the listing too, and its bytes are the blob's.
    let id = upload_holding(storage, b"committed edge").await;
    let digest = Digest::sha256_of(b"committed edge");
    storage
        .upload_commit(&id, &digest, 14)
        .await
        .expect("commit");
    assert!(!storage
        .uploads()
        .await
        .expect("list")
        .iter()
        .any(|(listed, _)| listed == &id));
    assert_eq!(storage.upload_info(&id).await.expect("info"), None);
    assert_eq!(storage.blob_size(&digest).await.expect("size"), Some(14));

    // Committing content that is already stored only removes the upload (the stored blob stays as it was).
    let again = upload_holding(storage, b"committed edge").await;
    storage
        .upload_commit(&again, &digest, 14)
        .await
        .expect("commit of stored content");
    assert_eq!(storage.upload_info(&again).await.expect("info"), None);
    let whole = storage
        .blob_read(&digest, None)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(collect(whole.stream).await, b"committed edge");
    assert!(storage.blob_delete(&digest).await.expect("delete"));
}

/// Every operation on an upload that does not exist fails with `UploadMissing`, or answers "none".
async fn missing_uploads(storage: &dyn Storage) {
    let missing = UploadId::new_random();
    let is_missing = |what: &str, result: Result<(), StorageError>| {
        assert!(
            matches!(&result, Err(StorageError::UploadMissing(id)) if id == &missing),
            "{what} of a missing upload: {result:?}"
        );
    };
    is_missing("writer", storage.upload_writer(&missing).await.map(|_| ()));
    is_missing("read", storage.upload_read(&missing).await.map(|_| ()));
    is_missing(
        "read at",
        storage.upload_read_at(&missing, 0, 10).await.map(|_| ()),
    );
    is_missing("truncate", storage.upload_truncate(&missing, 0).await);
    let digest = Digest::sha256_of(b"never uploaded");
    is_missing("commit", storage.upload_commit(&missing, &digest, 14).await);
    assert_eq!(
        storage.blob_size(&digest).await.expect("size"),
        None,
        "a failed commit stores nothing"
    );
    // Also when the content is already stored: there is no upload to remove.
    let stored = push_blob(storage, &repo("suite/missing"), b"stored content").await;
    is_missing("commit", storage.upload_commit(&missing, &stored, 14).await);
    assert_eq!(storage.upload_info(&missing).await.expect("info"), None);
    assert_eq!(
        storage.upload_modified(&missing).await.expect("modified"),
        None
    );
    storage
        .upload_delete(&missing)
        .await
        .expect("deleting a missing upload is fine");
}

async fn blobs(storage: &dyn Storage) {
    let a = repo("suite/a");
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let digest = push_blob(storage, &a, &content).await;
    assert_eq!(
        storage.blob_size(&digest).await.expect("size"),
        Some(content.len() as u64)
    );
    let whole = storage
        .blob_read(&digest, None)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(whole.size, content.len() as u64);
    assert_eq!(collect(whole.stream).await, content);

    let range = ByteRange {
        first: 10,
        last: 300_009,
    };
    let part = storage
        .blob_read(&digest, Some(range))
        .await
        .expect("read")
        .expect("present");
    assert_eq!(collect(part.stream).await, &content[10..=300_009]);

    // Visibility is per repository; content is shared.
    let b = repo("suite/b");
    assert!(storage.blob_linked(&a, &digest).await.expect("linked"));
    assert!(!storage.blob_linked(&b, &digest).await.expect("linked"));
    storage.blob_link(&b, &digest).await.expect("link b");
    storage
        .blob_link(&b, &digest)
        .await
        .expect("linking twice is fine");
    assert!(storage.blob_unlink(&b, &digest).await.expect("unlink"));
    assert!(!storage
        .blob_unlink(&b, &digest)
        .await
        .expect("unlink again"));
    assert!(storage
        .blob_linked(&a, &digest)
        .await
        .expect("a still linked"));

    // Committing the same content twice keeps one intact copy.
    let again = push_blob(storage, &b, &content).await;
    assert_eq!(again, digest);
    let whole = storage
        .blob_read(&digest, None)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(collect(whole.stream).await, content);

    assert_eq!(
        storage.blobs_linked(&a).await.expect("linked"),
        vec![digest.clone()]
    );
    assert!(storage
        .blobs_linked(&repo("suite/none"))
        .await
        .expect("linked")
        .is_empty());
    let doomed = push_blob(storage, &repo("suite/doomed"), b"to be deleted").await;
    assert!(storage
        .blob_unlink(&repo("suite/doomed"), &doomed)
        .await
        .expect("unlink"));
    assert!(storage.blob_delete(&doomed).await.expect("delete"));
    assert!(!storage.blob_delete(&doomed).await.expect("delete again"));
    assert_eq!(storage.blob_size(&doomed).await.expect("size"), None);

    let missing = Digest::sha256_of(b"never stored");
    assert_eq!(storage.blob_size(&missing).await.expect("size"), None);
    assert!(storage
        .blob_read(&missing, None)
        .await
        .expect("read")
        .is_none());
}

async fn manifests_and_tags(storage: &dyn Storage) {
    let r = repo("suite/m");
    let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let digest = Digest::sha256_of(&bytes);
    let manifest = StoredManifest {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes,
    };
    assert_eq!(storage.manifest_get(&r, &digest).await.expect("get"), None);
    assert_eq!(
        storage.tags(&r).await.expect("tags"),
        None,
        "no repository before content"
    );
    storage
        .manifest_put(&r, &digest, &manifest)
        .await
        .expect("put");
    assert_eq!(
        storage.manifest_get(&r, &digest).await.expect("get"),
        Some(manifest.clone())
    );
    assert_eq!(storage.tags(&r).await.expect("tags"), Some(vec![]));

    for name in ["v2", "latest", "V1", "v10", "_x"] {
        storage.tag_set(&r, &tag(name), &digest).await.expect("tag");
    }
    let listed: Vec<String> = storage
        .tags(&r)
        .await
        .expect("tags")
        .unwrap_or_default()
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(listed, ["V1", "_x", "latest", "v10", "v2"]);
    assert_eq!(
        storage.tag_get(&r, &tag("latest")).await.expect("get"),
        Some(digest.clone())
    );

    let other = Digest::sha256_of(b"other");
    storage
        .tag_set(&r, &tag("latest"), &other)
        .await
        .expect("move tag");
    assert_eq!(
        storage.tag_get(&r, &tag("latest")).await.expect("get"),
        Some(other.clone())
    );
    assert!(storage
        .tag_delete(&r, &tag("latest"))
        .await
        .expect("delete"));
    assert!(!storage
        .tag_delete(&r, &tag("latest"))
        .await
        .expect("delete again"));

    // A conditional delete removes a tag only while it still names the given manifest.
    storage
        .tag_set(&r, &tag("moving"), &other)
        .await
        .expect("tag");
    assert!(!storage
        .tag_delete_if(&r, &tag("moving"), &digest)
        .await
        .expect("delete if it names another manifest"));
    assert_eq!(
        storage.tag_get(&r, &tag("moving")).await.expect("get"),
        Some(other.clone())
    );
    assert!(storage
        .tag_delete_if(&r, &tag("moving"), &other)
        .await
        .expect("delete if it names this manifest"));
    assert_eq!(
        storage.tag_get(&r, &tag("moving")).await.expect("get"),
        None
    );
    assert!(!storage
        .tag_delete_if(&r, &tag("moving"), &other)
        .await
        .expect("delete if absent"));
    assert!(!storage
        .tag_delete_if(&repo("suite/no-such-repository"), &tag("moving"), &other)
        .await
        .expect("delete if the repository does not exist"));
    // The manifest's bytes are stored as the blob of its digest.
    assert_eq!(
        storage.blob_size(&digest).await.expect("size"),
        Some(manifest.bytes.len() as u64)
    );
    assert_eq!(
        storage.tag_get(&r, &tag("latest")).await.expect("get"),
        None
    );

    assert!(storage.manifest_delete(&r, &digest).await.expect("delete"));
    assert!(!storage
        .manifest_delete(&r, &digest)
        .await
        .expect("delete again"));
    assert_eq!(storage.manifest_get(&r, &digest).await.expect("get"), None);
}

async fn referrers(storage: &dyn Storage) {
    let r = repo("suite/refs");
    let subject = Digest::sha256_of(b"subject");
    assert!(storage
        .referrers(&r, &subject)
        .await
        .expect("list")
        .is_empty());
    let one = Digest::sha256_of(b"one");
    let two = Digest::sha256_of(b"two");
    storage
        .referrer_add(&r, &subject, &one, b"{\"n\":1}")
        .await
        .expect("add");
    storage
        .referrer_add(&r, &subject, &two, b"{\"n\":2}")
        .await
        .expect("add");
    let mut listed = storage.referrers(&r, &subject).await.expect("list");
    listed.sort();
    assert_eq!(
        listed,
        vec![
            Bytes::from_static(b"{\"n\":1}"),
            Bytes::from_static(b"{\"n\":2}")
        ]
    );
    storage
        .referrer_remove(&r, &subject, &one)
        .await
        .expect("remove");
    assert_eq!(
        storage.referrers(&r, &subject).await.expect("list"),
        vec![Bytes::from_static(b"{\"n\":2}")]
    );
}

async fn repositories(storage: &dyn Storage) {
    let names: Vec<String> = storage
        .repositories()
        .await
        .expect("list")
        .iter()
        .map(|r| r.to_string())
        .collect();
    for expected in ["suite/a", "suite/b", "suite/m"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        !names.iter().any(|n| n == "suite"),
        "a parent directory is not a repository: {names:?}"
    );
}
