//! `terraform-provider-imagesync`: the imagesync Terraform provider.
//!
//! - [`plugin`]: go-plugin handshake, AutoMTLS, side services.
//! - [`codec`]: `DynamicValue` msgpack/JSON, unknowns included.
//! - [`schema`]: provider and resource schemas.
//! - [`resource`]: plan/apply/read/import logic against a [`backend::Backend`].
//! - [`private`]: the private state (ownership of the tag, blobs uploaded).
//! - [`timeouts`]: the `timeouts` block, bounded durations.
//! - [`spec_fields`]: `platforms` and the Kubernetes-mode spec attributes, checked as the CRD does.
//! - [`backend`]: the [`backend::Direct`] backend over the imagesync engine.
//! - [`kube`]: the Kubernetes backend (`ImageSync` objects for the controller).
//! - [`config`]: the provider block.
//! - [`data`]: the `imagesync_image` and `imagesync_tags` data sources.
//! - [`provider`]: the tfplugin5/tfplugin6 gRPC services.
#![warn(missing_docs)]

pub mod backend;
pub mod codec;
pub mod config;
pub mod data;
pub mod diag;
pub mod kube;
pub mod plugin;
pub mod private;
pub mod proto;
pub mod provider;
pub mod resource;
pub mod schema;
pub mod spec_fields;
pub mod timeouts;
