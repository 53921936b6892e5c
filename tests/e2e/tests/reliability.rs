//! Reliability suite (issue 7): fault injection, registry variety, bad input and load,
//! bounded in time.
