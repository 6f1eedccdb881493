//! HDF5 input sources and the output sink: every file the pipeline reads or writes goes through here.

pub mod cleanup;
pub mod sink;
pub mod source;

pub use sink::Sink;
pub use source::{Axes, Dtype, Source};

/// `(3, 4, 5)`, numpy's way of writing a shape, so messages read like the Python users' own tools.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
