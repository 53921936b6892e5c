//! End-to-end tests: terraform.
