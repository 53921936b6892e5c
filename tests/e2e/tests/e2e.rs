//! The one end-to-end test binary: every scenario that crosses processes, against real
//! registries, a real kube-apiserver, real Terraform and real Helm. Each module is owned
//! by one area of the project.

// Test code may panic on broken fixtures; clippy's allow-*-in-tests covers only the
// `#[test]` functions themselves, not the helpers beside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod controller;
mod crash;
mod engine;
mod gcr;
mod helm;
mod hostile;
mod hostile_objects;
mod image;
mod imagesyncset;
mod ownership;
mod platforms;
mod platforms_frontends;
mod policy;
mod producers;
mod ranged;
mod referrers;
mod referrers_controller;
mod referrers_platforms;
mod reliability;
mod scripts;
mod shutdown;
mod tags_terraform;
mod terraform;
