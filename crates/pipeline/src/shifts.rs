//! Given shifts (`--shifts FILE`): a gpuprep output's `/shifts`, or a CSV/TSV table with z, y, x
//! columns (and t, optional), loaded and checked against the input's timepoints.

use gpuprep_core::error::{Error, Result};
use std::path::Path;

fn err(path: &Path, message: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message,
    }
}

/// The shift (z, y, x) of each of the `n` timepoints from `path`: `/shifts` of a gpuprep output
/// (an HDF5 file or a Zarr store), or a delimited text table (comma, tab or whitespace) whose
/// header names the columns `z`, `y`, `x` (`z` may be missing: 0, for movies) and optionally `t`
/// (then every timepoint 0..n appears once, in any order).
pub fn load(path: &Path, n: usize) -> Result<Vec<[f64; 3]>> {
    let text_like = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "csv" | "tsv" | "txt"));
    let shifts = if text_like {
        load_table(path)?
    } else {
        let a = gpuprep_io::arrays::read_f64(path, "shifts")?;
        if a.ndim() != 2 || a.shape()[1] != 3 {
            return Err(err(
                path,
                format!(
                    "/shifts has shape {:?}; expected (timepoints, 3)",
                    a.shape()
                ),
            ));
        }
        (0..a.shape()[0])
            .map(|t| [a[[t, 0]], a[[t, 1]], a[[t, 2]]])
            .collect()
    };
    if shifts.len() != n {
        return Err(err(
            path,
            format!(
                "holds shifts for {} timepoints; the input has {n}",
                shifts.len()
            ),
        ));
    }
    if let Some(t) = shifts.iter().position(|s| s.iter().any(|v| !v.is_finite())) {
        return Err(err(
            path,
            format!("the shift of timepoint {t} is not finite"),
        ));
    }
    Ok(shifts)
}

fn load_table(path: &Path) -> Result<Vec<[f64; 3]>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err(path, format!("cannot be read ({e})")))?;
    let split = |line: &str| -> Vec<String> {
        line.split(|c: char| c == ',' || c == '\t' || c == ';' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .map(|f| f.trim().trim_matches('"').to_ascii_lowercase())
            .collect()
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Err(err(
            path,
            "is empty; expected a header with z,y,x (and t) columns".into(),
        ));
    };
    let header = split(header);
    let col = |name: &str| header.iter().position(|h| h == name);
    let (t, z, y, x) = (col("t"), col("z"), col("y"), col("x"));
    let (Some(y), Some(x)) = (y, x) else {
        return Err(err(
            path,
            format!("header {header:?} lacks y and x columns; expected t,z,y,x (t and z optional)"),
        ));
    };
    let mut rows: Vec<(usize, [f64; 3])> = Vec::new();
    for (i, line) in lines {
        let f = split(line);
        let value = |c: usize| -> Result<f64> {
            f.get(c).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| {
                err(
                    path,
                    format!(
                        "line {}: column {:?} is not a number: {line:?}",
                        i + 1,
                        header[c]
                    ),
                )
            })
        };
        let index = match t {
            Some(c) => {
                let v = value(c)?;
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(err(
                        path,
                        format!("line {}: t = {v} is not a timepoint", i + 1),
                    ));
                }
                v as usize
            }
            None => rows.len(),
        };
        let zv = match z {
            Some(c) => value(c)?,
            None => 0.0,
        };
        rows.push((index, [zv, value(y)?, value(x)?]));
    }
    rows.sort_by_key(|r| r.0);
    for (k, (t, _)) in rows.iter().enumerate() {
        if *t != k {
            return Err(err(
                path,
                format!(
                    "timepoint {k} is missing or repeated in column t (found {t} in its place)"
                ),
            ));
        }
    }
    Ok(rows.into_iter().map(|r| r.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_in_any_order_and_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        std::fs::write(&p, "t,z,y,x\n1,0,2.5,-1\n0,0.5,1,2\n").unwrap();
        assert_eq!(
            load(&p, 2).unwrap(),
            vec![[0.5, 1.0, 2.0], [0.0, 2.5, -1.0]]
        );
        let p = dir.path().join("s.tsv");
        std::fs::write(&p, "y\tx\n1\t2\n3\t4\n5\t6\n").unwrap();
        assert_eq!(load(&p, 3).unwrap()[2], [0.0, 5.0, 6.0]);
        let e = load(&p, 4).unwrap_err().to_string();
        assert!(
            e.contains("s.tsv") && e.contains("3 timepoints; the input has 4"),
            "{e}"
        );
        std::fs::write(&p, "t\ty\tx\n0\t1\t2\n0\t3\t4\n").unwrap();
        let e = load(&p, 2).unwrap_err().to_string();
        assert!(e.contains("missing or repeated"), "{e}");
        std::fs::write(&p, "a\tb\n").unwrap();
        assert!(load(&p, 0)
            .unwrap_err()
            .to_string()
            .contains("lacks y and x"));
        std::fs::write(&p, "y\tx\n1\tfoo\n").unwrap();
        assert!(load(&p, 1).unwrap_err().to_string().contains("line 2"));
    }
}
