//! End-to-end tests: helm.
