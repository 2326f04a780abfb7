//! The storage contract as one test suite, run against every backend (the filesystem now, S3 later).

use bytes::Bytes;
use futures_util::StreamExt;

use super::{ByteRange, ByteStream, Storage, StoredManifest, UploadInfo};
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
    assert!(
        storage.upload_writer(&id).await.is_err(),
        "writer for a deleted upload"
    );
    storage
        .upload_delete(&id)
        .await
        .expect("deleting twice is fine");
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
