//! End-to-end tests: controller.
