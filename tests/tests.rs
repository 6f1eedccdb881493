//! One integration-test binary (ripgrep's layout): each module owns one area.

mod cli;
mod cpu_golden;
mod cpu_reference;
mod formats;
mod gpu;
mod io;
mod pipeline;
mod registration;
mod reliability_cli;
mod reliability_input;
mod reliability_median;
mod reliability_numeric;
mod reliability_output;
mod report;
mod shaders;
mod support;
mod zscore_f32;
