//! Integration tests: cpu_reference.
