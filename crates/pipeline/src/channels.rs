//! `--apply-to-channels`: the other channels of a multi-channel input (5-D OME-Zarr, TIFF
//! hyperstacks) written shifted as the registered one (`--channel`): each to its own output,
//! the main output's name with `_c<N>` before its extension, through `--shifts` of the main output.

use crate::driver::{run_with_progress, Progress, RunConfig, RunReport};
use gpuprep_core::backend::Backend;
use gpuprep_core::error::{Error, Result};
use gpuprep_io::source::OpenOptions;
use gpuprep_io::Source;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The channels `--apply-to-channels` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelSet {
    /// Every channel but the registered one.
    All,
    /// These channels.
    List(Vec<usize>),
}

impl FromStr for ChannelSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.trim() == "all" {
            return Ok(ChannelSet::All);
        }
        let list: std::result::Result<Vec<usize>, _> =
            s.split(',').map(|c| c.trim().parse::<usize>()).collect();
        match list {
            Ok(l) if !l.is_empty() => Ok(ChannelSet::List(l)),
            _ => Err(Error::InvalidParameter {
                name: "channels to apply to".into(),
                message: format!("got {s:?}; expected all or comma-separated channel numbers"),
            }),
        }
    }
}

/// The output of channel `c` beside `output`: `out.h5` → `out_c1.h5`, `out.ome.zarr` →
/// `out_c1.ome.zarr`.
pub fn channel_output(output: &Path, c: usize) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.find('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name.as_str(), ""),
    };
    output.with_file_name(format!("{stem}_c{c}{ext}"))
}

/// How many channels the input has (opening it channel by channel until one is refused).
fn channel_count(cfg: &RunConfig) -> Result<usize> {
    let open = |channel| {
        let opts = OpenOptions {
            axes: cfg.axes,
            format: cfg.format,
            channel,
        };
        Source::open_opts(&cfg.inputs, &cfg.dataset, opts)
    };
    open(cfg.channel)?;
    let mut n = 1;
    while n < 4096 && open(n).is_ok() {
        n += 1;
    }
    Ok(n)
}

/// The channels other than `cfg.channel` that `set` names, checked against the input.
pub fn other_channels(cfg: &RunConfig, set: &ChannelSet) -> Result<Vec<usize>> {
    let n = channel_count(cfg)?;
    let all: Vec<usize> = (0..n).filter(|&c| c != cfg.channel).collect();
    match set {
        ChannelSet::All => Ok(all),
        ChannelSet::List(l) => {
            if let Some(&c) = l.iter().find(|&&c| c >= n || c == cfg.channel) {
                return Err(Error::InvalidParameter {
                    name: "channels to apply to".into(),
                    message: if c == cfg.channel {
                        format!("channel {c} is the one registered (--channel)")
                    } else {
                        format!("channel {c} is out of range: the input has {n} channels")
                    },
                });
            }
            Ok(l.clone())
        }
    }
}

/// `run_with_progress`, then each channel of `cfg.apply_to_channels` with the shifts of that run;
/// the main report first.
pub fn run_channels(
    cfg: &RunConfig,
    backend: &mut dyn Backend,
    progress: &mut dyn Progress,
) -> Result<Vec<RunReport>> {
    let others = match &cfg.apply_to_channels {
        Some(set) => other_channels(cfg, set)?,
        None => Vec::new(),
    };
    let main = run_with_progress(cfg, backend, progress)?;
    let mut reports = Vec::new();
    for c in others {
        let cfg_c = RunConfig {
            channel: c,
            shifts_file: Some(main.output.clone()),
            output: channel_output(&cfg.output, c),
            apply_to_channels: None,
            ..cfg.clone()
        };
        reports.push(run_with_progress(&cfg_c, backend, progress)?);
    }
    reports.insert(0, main);
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sets() {
        assert_eq!(
            channel_output(Path::new("/d/out.ome.zarr"), 2),
            Path::new("/d/out_c2.ome.zarr")
        );
        assert_eq!(channel_output(Path::new("out"), 1), Path::new("out_c1"));
        assert_eq!("all".parse::<ChannelSet>().unwrap(), ChannelSet::All);
        assert_eq!(
            "1, 3".parse::<ChannelSet>().unwrap(),
            ChannelSet::List(vec![1, 3])
        );
        assert!("x".parse::<ChannelSet>().is_err());
    }
}
