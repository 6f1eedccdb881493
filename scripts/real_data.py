#!/usr/bin/env python3
"""gpuprep's registration options on a real two-photon recording, against its published motion correction.

The recording is the example movie that SIMA (the Losonczy lab's "Sequential IMaging Analysis" package,
`sima==1.3.2` on PyPI) ships as test data: `sima/tests/data/example.tif`, 20 frames of 128 × 256 uint16,
with the package's own motion correction beside it, `sima/tests/data/example.sima/displacements.pkl`:
the displacements of its hidden-Markov (line-by-line) correction, one (y, x) pair per scan row
(20 × 128 rows), non-negative offsets into a common canvas. The file is the expectation of SIMA's own
tests of `sima.motion.HiddenMarkov2D` on this movie (`sima/motion/tests/test_hmm.py`: `test_hmm_tmp`
requires all but 0.1 % of rows within 1 px of it; exact equality, `test_hmm`, is marked a known failure). A row's displacement d places its pixels at
canvas position p + d, so the shift that registers frame t onto frame r (scikit-image's
`phase_cross_correlation(reference, moving)`, gpuprep's `/shifts`) is d_t − d_r. Per frame the published
displacement is the median over the frame's rows (three frames move during their scan).

SIMA 1.3.2 does not build on Python ≥ 3.11 (its Cython-generated C includes `longintrepr.h`), so the
data come from its source distribution, fetched with pip as any package is, without building it:

    python -m pip download --no-deps sima==1.3.2 -d /tmp/sima
    python3 scripts/real_data.py --sdist /tmp/sima/sima-1.3.2.zip --gpuprep target/release/gpuprep

(without --sdist the script runs that pip download itself into a temporary directory; if `sima` is
importable, i.e. installed on an older Python, its installed data files are used instead). Needs numpy,
scipy, scikit-image, h5py and tifffile.

The movie is written to a temporary HDF5 file and run through the gpuprep CLI with its defaults
(scikit-image parity: 3×3 median, phase correlation against frame 0, integer precision) and with each
option; the option values are what a user would pick from the data: `--max-shift 0,12,12`, a little above
the largest motion in the movie (9 px), and `--smooth-sigma 0,1.15,1.15`, suite2p's default. For each run
it prints, per frame, the distance in pixels between gpuprep's (y, x) shift and the published one, the
number of frames within 2 px and the worst. Against a single reference frame r the published shift is
exactly d_t − d_r; against a mean reference (`--reference-mean`) the reference sits at no single frame's
position, so the published displacements' free constant is set to the median over frames of
shift − d_t. The first row, no registration (every shift 0, against frame 0), is the "before";
scikit-image's own `phase_cross_correlation` on the same median-filtered frames checks the default's parity.
"""

import argparse
import hashlib
import importlib.util
import io
import json
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile

import h5py
import numpy as np
import scipy.ndimage as ndi
import tifffile
from skimage.registration import phase_cross_correlation

SIMA = "sima==1.3.2"
MOVIE = "sima/tests/data/example.tif"
DISPLACEMENTS = "sima/tests/data/example.sima/displacements.pkl"
SHAPE = (20, 128, 256)
WITHIN = 2.0
MAX_SHIFT = "0,12,12"
SMOOTH = "0,1.15,1.15"

# (label, extra CLI flags, reference frame or None for a mean reference)
RUNS = [
    ("default (scikit-image)", [], 0),
    ("`--normalization none`", ["--normalization", "none"], 0),
    (f"`--max-shift {MAX_SHIFT}`", ["--max-shift", MAX_SHIFT], 0),
    (f"`--smooth-sigma {SMOOTH}`", ["--smooth-sigma", SMOOTH], 0),
    ("both", ["--max-shift", MAX_SHIFT, "--smooth-sigma", SMOOTH], 0),
    ("`--reference-mean 0:20`", ["--reference-mean", "0:20"], None),
    ("`--reference-mean 0:20 --reference-iterations 2`",
     ["--reference-mean", "0:20", "--reference-iterations", "2"], None),
    ("both, `--reference-mean 0:20 --reference-iterations 2`",
     ["--max-shift", MAX_SHIFT, "--smooth-sigma", SMOOTH, "--reference-mean", "0:20",
      "--reference-iterations", "2"], None),
]


class _ArraysOnly(pickle.Unpickler):
    """The displacements are a pickled list of numpy arrays: nothing else is let through."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{DISPLACEMENTS}: unexpected {module}.{name} in the pickle")
        return super().find_class(module, name)


def _files_from_sdist(sdist: pathlib.Path) -> tuple[bytes, bytes]:
    if not zipfile.is_zipfile(sdist):
        sys.exit(f"--sdist {sdist}: not a zip file (SIMA 1.3.2's sdist is sima-1.3.2.zip)")
    with zipfile.ZipFile(sdist) as z:
        names = {n.split("/", 1)[1]: n for n in z.namelist() if "/" in n}
        missing = [f for f in (MOVIE, DISPLACEMENTS) if f not in names]
        if missing:
            sys.exit(f"{sdist}: not SIMA 1.3.2's source distribution (no {', '.join(missing)})")
        return z.read(names[MOVIE]), z.read(names[DISPLACEMENTS])


def sima_files(sdist: pathlib.Path | None, tmp: pathlib.Path) -> tuple[bytes, bytes, str]:
    """The movie's and the displacements' bytes, and where they came from."""
    if sdist is None:
        spec = importlib.util.find_spec("sima")
        if spec is not None and spec.origin:
            root = pathlib.Path(spec.origin).parent.parent
            return (root / MOVIE).read_bytes(), (root / DISPLACEMENTS).read_bytes(), f"installed {root}"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        SIMA, "-d", str(tmp)], check=True)
        found = sorted(tmp.glob("sima-1.3.2.*"))
        if not found:
            sys.exit(f"pip download {SIMA} left no sdist in {tmp}")
        sdist = found[0]
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    movie, disp = _files_from_sdist(sdist)
    return movie, disp, f"{sdist.name} (sha256 {digest})"


def load(movie_bytes: bytes, disp_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The movie (t, y, x) and the published per-frame displacement (t, 2: y, x), the rows' median."""
    movie = tifffile.imread(io.BytesIO(movie_bytes))
    if movie.shape != SHAPE:
        sys.exit(f"{MOVIE}: shape {movie.shape}, expected {SHAPE}")
    arrays = _ArraysOnly(io.BytesIO(disp_bytes), encoding="latin1").load()
    rows = np.asarray(arrays[0], dtype=np.float64)
    if rows.shape != (SHAPE[0] * SHAPE[1], 2):
        sys.exit(f"{DISPLACEMENTS}: shape {rows.shape}, expected ({SHAPE[0] * SHAPE[1]}, 2): one (y, x) per row")
    return movie, np.median(rows.reshape(SHAPE[0], SHAPE[1], 2), axis=1)


def run_gpuprep(gpuprep: str, movie_h5: pathlib.Path, out: pathlib.Path, flags: list[str],
                backend: str) -> np.ndarray:
    cmd = [gpuprep, "run", str(movie_h5), "-o", str(out), "--force", "-q", "--no-zscore",
           "--backend", backend, *flags]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"gpuprep failed: {' '.join(cmd)}")
    with h5py.File(out, "r") as f:
        return f["shifts"][()][:, 1:]


def distances(shifts: np.ndarray, published: np.ndarray, reference: int | None) -> np.ndarray:
    """Per frame, |shift − (d_t − offset)| in pixels (offset: d_ref, or fitted for a mean reference)."""
    offset = published[reference] if reference is not None else np.median(published - shifts, axis=0)
    return np.hypot(*(shifts - (published - offset)).T)


def skimage_default(movie: np.ndarray) -> np.ndarray:
    """scikit-image on what gpuprep's default registers: scipy's 3×3×3 reflect median of each (1, y, x) frame."""
    frames = [ndi.median_filter(f[None].astype(np.float32), size=3, mode="reflect")[0] for f in movie]
    return np.array([phase_cross_correlation(frames[0], f)[0] for f in frames])


def study(gpuprep: str, movie: np.ndarray, published: np.ndarray, backend: str,
          tmp: pathlib.Path) -> list[dict]:
    movie_h5 = tmp / "sima_example.h5"
    with h5py.File(movie_h5, "w") as f:
        f["default"] = movie
    # The "before": frames left where they are, against frame 0.
    results = [{"label": "no registration", "flags": None, "shifts": np.zeros_like(published).tolist(),
                "distance": distances(np.zeros_like(published), published, 0).tolist()}]
    for label, flags, ref in RUNS:
        shifts = run_gpuprep(gpuprep, movie_h5, tmp / "out.h5", flags, backend)
        results.append({"label": label, "flags": flags, "shifts": shifts.tolist(),
                        "distance": distances(shifts, published, ref).tolist()})
    sk = skimage_default(movie)
    results.append({"label": "scikit-image `phase_cross_correlation`", "flags": None, "shifts": sk.tolist(),
                    "distance": distances(sk, published, 0).tolist()})
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpuprep", default="target/release/gpuprep", help="the gpuprep CLI")
    ap.add_argument("--sdist", type=pathlib.Path, help="SIMA 1.3.2's sdist (sima-1.3.2.zip); default: pip download it")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--json", type=pathlib.Path, help="also write every run's shifts and distances here")
    args = ap.parse_args()
    if shutil.which(args.gpuprep) is None:
        sys.exit(f"--gpuprep {args.gpuprep}: no such executable (build it: cargo build --release)")
    if args.sdist is not None and not args.sdist.is_file():
        sys.exit(f"--sdist {args.sdist}: no such file (pip download --no-deps {SIMA} -d DIR fetches it)")

    with tempfile.TemporaryDirectory(prefix="gpuprep-real-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        movie_bytes, disp_bytes, source = sima_files(args.sdist, tmp)
        movie, published = load(movie_bytes, disp_bytes)
        results = study(args.gpuprep, movie, published, args.backend, tmp)

    rel = published - published[0]
    print(f"SIMA's example movie {movie.shape} {movie.dtype} from {source}")
    print("published shift onto frame 0 (y, x), rows' median: "
          + " ".join(f"{t}:({y:g},{x:g})" for t, (y, x) in enumerate(rel)))
    print(f"largest published motion: {np.abs(rel).max(axis=0).tolist()} px (y, x)\n")
    print("per-frame distance (px) to the published shift")
    print("t   " + " ".join(f"{t:>5}" for t in range(movie.shape[0])))
    for r in results:
        print(f"    {' '.join(f'{d:5.1f}' for d in r['distance'])}  {r['label']}")
    print(f"\n| registration | frames within {WITHIN:g} px | worst (px) |\n|---|---|---|")
    for r in results:
        d = np.array(r["distance"])
        still = " (every shift 0)" if r["flags"] and not np.any(r["shifts"]) else ""
        print(f"| {r['label']}{still} | {int((d <= WITHIN).sum())} / {d.size} | {d.max():.1f} |")
    sk, default = np.array(results[-1]["shifts"]), np.array(results[1]["shifts"])
    print(f"\ngpuprep default == scikit-image on every frame: {bool(np.array_equal(sk, default))}")
    if args.json:
        args.json.write_text(json.dumps({"source": source, "published": published.tolist(), "runs": results},
                                        indent=1))


if __name__ == "__main__":
    main()
