//! The process's allocator, and how a thread hands back the pages it no longer uses.

use std::time::{Duration, Instant};

/// mimalloc, unless built with `--features system-allocator`: the C library's allocator,
/// which heap profilers (heaptrack, valgrind) see, to account for every byte a
/// connection costs (BENCHMARKS.md, issue 17).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the kernel back the pages the calling thread's heap holds free. Called by the
/// threads that hold the connections' state (each shard at the end of a parking round,
/// the ingestor a second after a burst of work began, [`ReleaseAfterWork`]): mimalloc
/// purges a freed page only when its thread next
/// allocates, so a thread left quiet after a connect storm would keep the storm's
/// buffers and its tables' outgrown copies resident (BENCHMARKS.md, "Idle connections,
/// one shard").
pub fn release_free_memory() {
    // SAFETY: both only walk the allocator's own free lists; no pointer of ours is
    // involved.
    #[cfg(not(feature = "system-allocator"))]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(feature = "system-allocator")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// When a thread that works in bursts (the ingestor) gives its free pages back: a
/// second after a burst began, and not again until the next one, so that an idle thread
/// is not woken for it and a busy one does it once a second. Sans-IO: the thread's loop
/// reports its work and asks when to wake.
#[derive(Debug, Default)]
pub struct ReleaseAfterWork {
    due: Option<Instant>,
}

impl ReleaseAfterWork {
    /// How long after the first work of a burst the release comes.
    pub const DELAY: Duration = Duration::from_secs(1);

    /// The thread did some work at `now`.
    pub fn worked(&mut self, now: Instant) {
        self.due.get_or_insert(now + Self::DELAY);
    }

    /// When the next release is due, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Whether a release is due at `now`; if it is, it counts as done.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let due = self.due.is_some_and(|due| now >= due);
        if due {
            self.due = None;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_comes_a_second_after_a_burst_began_and_not_while_idle() {
        let start = Instant::now();
        let mut release = ReleaseAfterWork::default();
        assert_eq!(release.poll_timeout(), None, "idle: nothing to wake for");
        release.worked(start);
        release.worked(start + Duration::from_millis(600));
        assert_eq!(
            release.poll_timeout(),
            Some(start + ReleaseAfterWork::DELAY)
        );
        assert!(!release.handle_timeout(start + Duration::from_millis(999)));
        assert!(release.handle_timeout(start + ReleaseAfterWork::DELAY));
        assert!(
            !release.handle_timeout(start + Duration::from_secs(5)),
            "done once"
        );
        assert_eq!(release.poll_timeout(), None);
        release.worked(start + Duration::from_secs(7));
        assert_eq!(release.poll_timeout(), Some(start + Duration::from_secs(8)));
    }
}
