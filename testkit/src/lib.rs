//! Helpers for the project's tests (never used by the product binaries).
//!
//! - [`netns`]: run a closure in a private network namespace with `lo` up,
//!   so tests never touch the host's interfaces.
//! - [`proc`]: a child process whose stderr lines a test can wait for.
//! - [`skip`]: say why a test cannot run; fail instead when CI demands it.

pub mod netns;
pub mod proc;

/// Reports that a test cannot run here. Prints `skipped: <why>` so the skip
/// is never silent; panics instead when `TESTKIT_REQUIRE=1` (set by CI, where
/// every test must really run).
pub fn skip(why: &str) {
    if std::env::var("TESTKIT_REQUIRE").as_deref() == Ok("1") {
        panic!("cannot run, and TESTKIT_REQUIRE=1 forbids skipping: {why}");
    }
    eprintln!("skipped: {why}");
}
