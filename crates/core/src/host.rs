//! What the host machine offers this process: the memory a run may take before it allocates.

use crate::error::{Error, Result};
use std::path::Path;

/// Overrides the available figure (bytes, or with a K/M/G/T suffix, powers of 1024): for tests and for
/// shared nodes where the machine's free memory is not this job's to take.
pub const LIMIT_ENV: &str = "GPUPREP_MEMORY_LIMIT";

/// Memory the machine offers this process, and where the figure comes from.
#[derive(Clone, Debug)]
pub struct Available {
    pub bytes: u128,
    pub source: String,
}

/// `GPUPREP_MEMORY_LIMIT` if set, else the smaller of MemAvailable and the cgroup's room (limit minus
/// usage not counting reclaimable file cache); `None` where neither can be read (the check is skipped).
pub fn available() -> Result<Option<Available>> {
    if let Some(raw) = std::env::var_os(LIMIT_ENV) {
        let s = raw.to_string_lossy();
        let bytes = parse_bytes(&s).ok_or_else(|| Error::InvalidParameter {
            name: LIMIT_ENV.into(),
            message: format!(
                "got {s:?}; expected a number of bytes, optionally with a K, M, G or T suffix (powers of 1024)"
            ),
        })?;
        return Ok(Some(Available {
            bytes,
            source: LIMIT_ENV.into(),
        }));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_available(&s))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable".into(),
        });
    let cgroup = cgroup_room().map(|bytes| Available {
        bytes,
        source: "room under the cgroup memory limit".into(),
    });
    Ok(match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    })
}

/// `123`, `64K`, `1.5G`, `2TiB`: bytes, the suffixes being powers of 1024.
pub fn parse_bytes(s: &str) -> Option<u128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let b = v * (1u64 << shift) as f64;
        return (0.0..1e30).contains(&b).then_some(b as u128);
    }
    num.parse::<u128>().ok()?.checked_mul(1 << shift)
}

fn mem_available(meminfo: &str) -> Option<u128> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let kb: u128 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page).
const NO_LIMIT: u128 = 1 << 60;

/// Bytes this process's cgroup (v2, or v1's memory controller) can still take: the smallest
/// `limit - (usage - inactive file cache)` over the cgroup and its ancestors; `None` without a limit.
fn cgroup_room() -> Option<u128> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: &Path| -> Option<u128> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let stat = |p: &Path, key: &str| -> u128 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    };
    let mut best: Option<u128> = None;
    let mut consider = |limit: Option<u128>, usage: Option<u128>, inactive: u128| {
        if let (Some(limit), Some(usage)) = (limit, usage) {
            if limit < NO_LIMIT {
                let room = limit.saturating_sub(usage.saturating_sub(inactive));
                best = Some(best.map_or(room, |b| b.min(room)));
            }
        }
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        // A namespaced container sees its own cgroup at the mount's root: try the path, then the root.
        let rel = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            let root = Path::new("/sys/fs/cgroup");
            let mut dirs: Vec<std::path::PathBuf> = Vec::new();
            let mut p = root.join(rel);
            while p.starts_with(root) {
                dirs.push(p.clone());
                if !p.pop() {
                    break;
                }
            }
            for d in dirs {
                let limit = std::fs::read_to_string(d.join("memory.max"))
                    .ok()
                    .map(|s| s.trim().parse::<u128>().unwrap_or(u128::MAX));
                consider(
                    limit,
                    read(&d.join("memory.current")),
                    stat(&d.join("memory.stat"), "inactive_file"),
                );
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let root = Path::new("/sys/fs/cgroup/memory");
            for d in [root.join(rel), root.to_path_buf()] {
                if d.join("memory.limit_in_bytes").exists() {
                    // `hierarchical_memory_limit` already takes the ancestors' limits into account.
                    let st = d.join("memory.stat");
                    let limit = read(&d.join("memory.limit_in_bytes")).map(|l| {
                        let h = stat(&st, "hierarchical_memory_limit");
                        if h > 0 {
                            l.min(h)
                        } else {
                            l
                        }
                    });
                    consider(
                        limit,
                        read(&d.join("memory.usage_in_bytes")),
                        stat(&st, "total_inactive_file"),
                    );
                    break;
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmt::fmt_bytes;

    #[test]
    fn byte_figures_parse() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("16G"), Some(16 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(
            mem_available("MemTotal: 100 kB\nMemAvailable:   22806712 kB\n"),
            Some(22806712 * 1024)
        );
        assert_eq!(fmt_bytes(1023), "1023 bytes");
        assert_eq!(fmt_bytes(54_000_000_000), "50.3 GiB");
    }
}
