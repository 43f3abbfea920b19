//! Configuration problems, collected rather than raised one at a time: a binary validates its
//! whole configuration, then reports every problem at once and exits with code 64
//! (`EX_USAGE`), so an operator fixes a broken deployment in one round.

use std::fmt;

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A binary's arguments (flags and environment), or the exit: `--help` and `--version` print
/// and exit 0, anything clap refuses (an unknown flag, a value it cannot parse) prints its
/// message and exits [`EXIT_CONFIG`], like every other configuration error.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
        let _ = e.print();
        std::process::exit(code);
    })
}

/// Every problem found in a configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigProblems(Vec<String>);

impl ConfigProblems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem with the setting `name` (environment variable or flag).
    pub fn add(&mut self, name: &str, problem: impl fmt::Display) {
        self.0.push(format!("{name}: {problem}"));
    }

    /// Records a problem when `cond` is false.
    pub fn check(&mut self, cond: bool, name: &str, problem: impl fmt::Display) {
        if !cond {
            self.add(name, problem);
        }
    }

    /// Adds problems found elsewhere.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = String>) {
        self.0.extend(problems);
    }

    /// Ok when there are none.
    pub fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The problems.
    pub fn problems(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

/// Checks that `url` looks like a PostgreSQL URL.
pub fn check_database_url(problems: &mut ConfigProblems, name: &str, url: &str) {
    problems.check(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        name,
        format!("{url:?} is not a postgres:// URL"),
    );
}

/// Checks that `url` looks like a Redis URL (or a comma-separated list of cluster nodes).
pub fn check_redis_url(problems: &mut ConfigProblems, name: &str, url: &str) {
    let ok = !url.is_empty()
        && url.split(',').all(|u| {
            let u = u.trim();
            u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")
        });
    problems.check(ok, name, format!("{url:?} is not a redis:// URL (or a comma-separated list of them)"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed() {
        let mut p = ConfigProblems::new();
        check_database_url(&mut p, "DATABASE_URL", "mysql://x");
        check_redis_url(&mut p, "REDIS_URL", "http://x");
        check_redis_url(&mut p, "REDIS_URL", "redis://a:1,redis://b:2");
        let err = p.into_result().expect_err("two problems");
        assert_eq!(err.problems().len(), 2);
        let text = err.to_string();
        assert!(text.contains("DATABASE_URL") && text.contains("REDIS_URL"), "{text}");
    }
}
