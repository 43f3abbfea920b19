//! crm-fleet's cross-crate test and benchmark code. The benchmark binaries (`src/bin/`) are
//! thin: their code lives in [`bench`], shared between them. See `docs/benchmarks.md`.

pub mod bench;
