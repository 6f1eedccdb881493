"""Type stubs of the extension module: float32 (z, y, x) volumes and validated parameters. Use the
``gpuprep`` package's functions, which give these scipy's and scikit-image's signatures."""

from os import PathLike
from typing import Any, Callable, Optional

import numpy as np
import numpy.typing as npt

__version__: str

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

def backend_name(backend: str = "auto") -> str: ...
def median_filter(input: F32, size: list[int], mode: str, cval: float, backend: str) -> F32: ...
def shift(input: F32, shift: list[float], order: int, mode: str, cval: float, backend: str) -> F32: ...
def phase_cross_correlation(
    reference_image: F32, moving_image: F32, upsample_factor: int, normalization: str, backend: str
) -> tuple[tuple[float, float, float], float, float]: ...
def zscore(a: F32 | F64, ddof: int, constant_voxels: str, backend: str) -> tuple[F32 | F64, int]: ...
def normalize(block: F32, mean: F64, std: F64, constant_voxels: str, backend: str) -> F32: ...
def process_block(
    block: F32,
    reference: Optional[Reference],
    median: Optional[tuple[list[int], str, float]],
    order: int,
    shift_mode: str,
    shift_cval: float,
    register_raw: bool,
    backend: str,
) -> tuple[F32, F64, F64, F64]: ...
def preprocess(
    inputs: list[str],
    output: str | PathLike[str],
    *,
    dataset: str,
    axes: Optional[str],
    format: Optional[str],
    channel: int,
    force: bool,
    no_median: bool,
    median_size: list[int],
    median_mode: str,
    median_cval: float,
    no_register: bool,
    upsample_factor: int,
    normalization: str,
    reference: int,
    reference_mean: Optional[tuple[int, int]],
    register_raw: bool,
    order: int,
    shift_mode: str,
    shift_cval: float,
    no_zscore: bool,
    ddof: int,
    constant_voxels: str,
    nonfinite: str,
    compression: str,
    save: list[str],
    memory_budget: Optional[str],
    backend: str,
    progress: Optional[Callable[[str, int, int], Any]],
) -> dict[str, Any]: ...

class Reference:
    def __init__(
        self, volume: F32, upsample_factor: int = 1, normalization: str = "phase", backend: str = "auto"
    ) -> None: ...
    def register(self, volume: F32) -> tuple[tuple[float, float, float], float, float]: ...
    @property
    def volume(self) -> F32: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    @property
    def upsample_factor(self) -> int: ...
    @property
    def normalization(self) -> str: ...
    @property
    def backend(self) -> tuple[str, str]: ...

class Moments:
    """Per-voxel running mean and M2 in float64; ``merge`` by Chan et al.'s formula; picklable."""

    def __init__(self, shape: tuple[int, int, int]) -> None: ...
    def update(self, volumes: npt.NDArray[np.float32] | npt.NDArray[np.float64]) -> None: ...
    def merge(self, other: Moments) -> Moments: ...
    def copy(self) -> Moments: ...
    def finalize(self, ddof: int = 0) -> tuple[F64, F64]: ...
    @property
    def count(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    @property
    def mean(self) -> F64: ...
    @property
    def m2(self) -> F64: ...
    @staticmethod
    def from_parts(count: int, mean: F64, m2: F64) -> Moments: ...
