//! Generated gRPC code (see `build.rs` and `proto/`).
#![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]

/// Plugin protocol 6 messages (shared with protocol 5) and the v6 service.
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// Plugin protocol 5 service.
pub mod tfplugin5 {
    tonic::include_proto!("tfplugin5");
}

/// go-plugin's controller, stdio and broker services.
pub mod plugin {
    tonic::include_proto!("plugin");
}
