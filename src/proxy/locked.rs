//! A poisoned mutex is still used: the proxy's maps stay consistent between statements, so a panic elsewhere never
//! leaves one half-changed. A leaf.

use std::sync::{Mutex, MutexGuard};

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
