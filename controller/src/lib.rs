//! Kubernetes controller for ImageSync objects (in progress).
