//! The one end-to-end test binary: every scenario that crosses processes, against real
//! registries, a real kube-apiserver, real Terraform and real Helm. Each module is owned
//! by one area of the project.

mod cli;
mod controller;
mod engine;
mod helm;
mod terraform;
