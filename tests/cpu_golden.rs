//! Integration tests: cpu_golden.
