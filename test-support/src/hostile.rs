//! A tally of hostile-input vectors. Each vector is tried, the reason it was refused with is
//! compared with the one expected, and a panic is caught and counted; [`Tally::finish`] writes
//! the surface's row of the summary table (`make test` prints the table) and fails the test,
//! listing every vector that was not refused as expected.

use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// What a vector did: refused with a reason, or accepted.
pub type Outcome = Option<String>;

/// The vectors of one surface (CRD YAML, SNI, peering messages…).
#[derive(Debug)]
pub struct Tally {
    surface: String,
    tried: usize,
    right: usize,
    panics: usize,
    wrong: Vec<String>,
}

impl Tally {
    pub fn new(surface: &str) -> Self {
        Self {
            surface: surface.to_owned(),
            tried: 0,
            right: 0,
            panics: 0,
            wrong: Vec::new(),
        }
    }

    /// Tries one vector: `f` answers the reason it was refused with (`None`: accepted).
    pub fn check(&mut self, vector: impl Display, expected: &str, f: impl FnOnce() -> Outcome) {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(got) => self.record(vector, expected, got.as_deref()),
            Err(_) => {
                self.tried += 1;
                self.panics += 1;
                self.wrong.push(format!("{vector}: panicked"));
            }
        }
    }

    /// Records a vector tried elsewhere (an async one): `got` is the reason it was refused
    /// with, `None` when it was accepted.
    pub fn record(&mut self, vector: impl Display, expected: &str, got: Option<&str>) {
        self.tried += 1;
        match got {
            Some(r) if r == expected => self.right += 1,
            Some(r) => self
                .wrong
                .push(format!("{vector}: expected {expected}, refused with {r}")),
            None => self
                .wrong
                .push(format!("{vector}: expected {expected}, accepted")),
        }
    }

    /// Records a vector whose task panicked (seen through a `JoinError`).
    pub fn record_panic(&mut self, vector: impl Display) {
        self.tried += 1;
        self.panics += 1;
        self.wrong.push(format!("{vector}: panicked"));
    }

    pub fn tried(&self) -> usize {
        self.tried
    }

    /// Writes the row `surface, tried, right reason, panics` to `<dir>/hostile/<surface>.tsv`
    /// (`dir`: the test's `env!("CARGO_TARGET_TMPDIR")`) and fails when any vector was not
    /// refused with its expected reason.
    ///
    /// # Panics
    /// When a vector was accepted, refused with another reason, or panicked; or when the row
    /// cannot be written.
    #[allow(clippy::panic, clippy::expect_used)]
    pub fn finish(self, dir: &str) {
        let folder = Path::new(dir).join("hostile");
        std::fs::create_dir_all(&folder).expect("create the hostile summary folder");
        let file = self
            .surface
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        std::fs::write(
            folder.join(format!("{file}.tsv")),
            format!(
                "{}\t{}\t{}\t{}\n",
                self.surface, self.tried, self.right, self.panics
            ),
        )
        .expect("write the hostile summary row");
        if !self.wrong.is_empty() {
            let shown: Vec<&str> = self.wrong.iter().take(40).map(String::as_str).collect();
            panic!(
                "{}: {} of {} vectors not refused as expected:\n{}",
                self.surface,
                self.wrong.len(),
                self.tried,
                shown.join("\n")
            );
        }
    }
}
