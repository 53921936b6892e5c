//! Crash safety and races (issue 7): SIGKILL at many points of a copy, two controllers
//! without leader election, two Terraform applies on one destination.
