//! Uploads on disk: `uploads/<id>/data` (its length is the upload's size) and `info.json`, the writer that appends
//! on the blocking pool, and the commit that fsyncs the data, checks its length against the verified size and
//! renames it into `blobs/`. Called by the `Storage` impl in `fs.rs`; never decides whether content is valid.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::layout::Layout;
use super::stream::file_stream;
use super::{blocking, io_err, not_found_is_none};
use crate::registry::names::{Digest, UploadId};
use crate::registry::storage::{ByteStream, Result, StorageError, UploadInfo, UploadWriter};

/// Appends to an upload. Each batch is written by one task on the blocking pool, which gives the file back when
/// done: no thread is held between batches, however slowly the client sends them.
struct FsUploadWriter {
    /// `None` only if a write task was lost (it panicked).
    file: Option<File>,
    what: String,
    /// The file's length after the last write (or when it was opened).
    written: u64,
}

impl FsUploadWriter {
    fn lost(&self) -> StorageError {
        StorageError::Io {
            what: self.what.clone(),
            source: io::Error::other("upload writer stopped"),
        }
    }
}

#[async_trait]
impl UploadWriter for FsUploadWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_batch(vec![chunk]).await
    }

    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(self.lost());
        };
        let written = tokio::task::spawn_blocking(move || {
            let result = chunks.iter().try_for_each(|chunk| file.write_all(chunk));
            // Asked on the pool while the file is at hand: one fstat per batch, so `written` needs no I/O.
            let len = file.metadata().map(|m| m.len());
            (file, result, len)
        })
        .await;
        match written {
            Ok((file, result, len)) => {
                self.file = Some(file);
                if let Ok(len) = len {
                    self.written = len;
                }
                result.map_err(io_err(self.what.clone()))
            }
            Err(_) => Err(self.lost()),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let Some(file) = self.file.take() else {
            return Err(self.lost());
        };
        let what = self.what.clone();
        blocking(move || file.metadata().map(|m| m.len()).map_err(io_err(what))).await
    }

    fn written(&self) -> u64 {
        self.written
    }
}

pub(super) async fn create(layout: Layout, id: &UploadId, info: &UploadInfo) -> Result<()> {
    let id = id.clone();
    let info = serde_json::to_vec(info).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    blocking(move || {
        let dir = layout.upload_dir(&id);
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let created = (|| {
            let data = layout.upload_data(&id);
            File::create(&data).map_err(io_err(format!("create {}", data.display())))?;
            layout.write_atomic(&layout.upload_info(&id), &info)
        })();
        if created.is_err() {
            // No data file without its info (a disk that is full fails the second write, not the first).
            let _ = fs::remove_dir_all(&dir);
        }
        created
    })
    .await
}

pub(super) async fn info(layout: Layout, id: &UploadId) -> Result<Option<UploadInfo>> {
    let id = id.clone();
    blocking(move || {
        let info_path = layout.upload_info(&id);
        let Some(raw) = not_found_is_none(fs::read(&info_path))
            .map_err(io_err(format!("read {}", info_path.display())))?
        else {
            return Ok(None);
        };
        let mut info: UploadInfo = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", info_path.display())))?;
        let data = layout.upload_data(&id);
        let Some(meta) = not_found_is_none(fs::metadata(&data))
            .map_err(io_err(format!("stat {}", data.display())))?
        else {
            return Ok(None);
        };
        info.size = meta.len();
        Ok(Some(info))
    })
    .await
}

pub(super) async fn writer(layout: Layout, id: &UploadId) -> Result<Box<dyn UploadWriter>> {
    let path = layout.upload_data(id);
    let what = format!("append to {}", path.display());
    let file = {
        let path = path.clone();
        let id = id.clone();
        blocking(move || {
            let what = format!("open {}", path.display());
            let file = match OpenOptions::new().append(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::UploadMissing(id))
                }
                Err(source) => return Err(StorageError::Io { what, source }),
            };
            let len = file.metadata().map_err(io_err(what))?.len();
            Ok((file, len))
        })
        .await?
    };
    let (file, written) = file;
    Ok(Box::new(FsUploadWriter {
        file: Some(file),
        what,
        written,
    }))
}

pub(super) async fn read(layout: Layout, id: &UploadId) -> Result<ByteStream> {
    let path = layout.upload_data(id);
    let id = id.clone();
    let (file, len) = blocking(move || {
        let what = format!("open {}", path.display());
        let file = not_found_is_none(File::open(&path)).map_err(io_err(what.clone()))?;
        let file = file.ok_or(StorageError::UploadMissing(id))?;
        let len = file.metadata().map_err(io_err(what))?.len();
        Ok((file, len))
    })
    .await?;
    Ok(file_stream(file, len))
}

pub(super) async fn read_at(
    layout: Layout,
    id: &UploadId,
    offset: u64,
    max: usize,
) -> Result<Bytes> {
    let path = layout.upload_data(id);
    let id = id.clone();
    blocking(move || {
        let what = format!("read {}", path.display());
        let file = not_found_is_none(File::open(&path)).map_err(io_err(what.clone()))?;
        let mut file = file.ok_or(StorageError::UploadMissing(id))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err(what.clone()))?;
        let mut buf = BytesMut::zeroed(max);
        let mut filled = 0;
        while filled < max {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(what)(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    })
    .await
}

pub(super) async fn truncate(layout: Layout, id: &UploadId, size: u64) -> Result<()> {
    let path = layout.upload_data(id);
    let id = id.clone();
    blocking(move || {
        let what = format!("truncate {}", path.display());
        let file = not_found_is_none(OpenOptions::new().write(true).open(&path))
            .map_err(io_err(what.clone()))?
            .ok_or(StorageError::UploadMissing(id))?;
        file.set_len(size).map_err(io_err(what))
    })
    .await
}

pub(super) async fn commit(
    layout: Layout,
    id: &UploadId,
    digest: &Digest,
    size: u64,
) -> Result<()> {
    let id = id.clone();
    let digest = digest.clone();
    blocking(move || {
        let data = layout.upload_data(&id);
        let target = layout.blob(&digest);
        let what = format!("commit upload {id} as {}", target.display());
        let dir = layout.upload_dir(&id);
        if !dir.exists() {
            return Err(StorageError::UploadMissing(id));
        }
        let present = fs::metadata(&target).is_ok();
        if !present {
            let file = not_found_is_none(File::open(&data))
                .map_err(io_err(what.clone()))?
                .ok_or_else(|| StorageError::UploadMissing(id.clone()))?;
            file.sync_all().map_err(io_err(what.clone()))?;
            let synced = file.metadata().map_err(io_err(what.clone()))?.len();
            if synced != size {
                return Err(StorageError::Corrupt(format!(
                    "upload {id} holds {synced} bytes, {size} were verified; not committed"
                )));
            }
            layout
                .rename_into_place(&data, &target)
                .map_err(io_err(what))?;
        }
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))
    })
    .await
}

pub(super) async fn delete(layout: Layout, id: &UploadId) -> Result<()> {
    let dir = layout.upload_dir(id);
    blocking(move || match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    })
    .await
}

pub(super) async fn list(layout: Layout) -> Result<Vec<(UploadId, SystemTime)>> {
    let dir = layout.root.join("uploads");
    blocking(move || {
        let mut found = Vec::new();
        let entries = fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))?;
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(UploadId::parse) else {
                continue;
            };
            let modified = entry
                .path()
                .join("data")
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH + Duration::ZERO);
            found.push((id, modified));
        }
        Ok(found)
    })
    .await
}

pub(super) async fn modified(layout: Layout, id: &UploadId) -> Result<Option<SystemTime>> {
    let id = id.clone();
    blocking(move || {
        let data = layout.upload_data(&id);
        let what = format!("stat {}", data.display());
        match not_found_is_none(fs::metadata(&data)).map_err(io_err(what.clone()))? {
            Some(meta) => Ok(Some(meta.modified().map_err(io_err(what))?)),
            // A directory without its data is as old as can be (like in `uploads`), so it expires.
            None => Ok(layout
                .upload_dir(&id)
                .exists()
                .then_some(SystemTime::UNIX_EPOCH)),
        }
    })
    .await
}
