"""scikit-image's own phase_cross_correlation test cases, replayed against gpuprep.

Cases (inputs, parameters, expected values) and assertions (assert_allclose with their atol/rtol,
assert_equal, the error/phasediff checks) are scikit-image's, from (GitHub, scikit-image/scikit-image):

- tests/skimage/registration/test_phase_cross_correlation.py (the current layout; the older
  skimage/registration/tests/test_phase_cross_correlation.py has the same cases, with
  test_deprecated_return_error in addition)            -> ``test_pcc_*``
- skimage/registration/tests/test_masked_phase_cross_correlation.py -> ``test_masked_pcc_*``

Each call of ``skimage.registration.phase_cross_correlation`` is a call of
``gpuprep.phase_cross_correlation``; what a case uses to build its inputs or expected values
(``fourier_shift``, ``scipy.fft``, skimage's data and its private masked registration) stays as is.

gpuprep takes real-space 1-D to 3-D inputs: ``space='fourier'``, masks and 4-D inputs raise
``NotImplementedError``, which those cases assert. Each Fourier-space case is also
replayed in real space (``_real`` tests): the reference is the image itself and the moving image is
``ifftn(fourier_shift(fftn(image), shift)).real``, with the case's upsample factor, normalization
and assertion. That is how the 3-D cases (test_3d_input) reach gpuprep's kernels.

Data: ``camera()`` and ``stereo_motorcycle()`` load offline; ``binary_blobs`` is generated, with a
fixed ``rng`` here (scikit-image's cases draw a new phantom each run). ``eagle()`` needs pooch and a
download, and the Padfield PNGs are fetched test data: a deterministic random image of the same
shape stands in for them (test_disambiguate_2d runs on it, and its result is also checked against
live scikit-image; the masked cases raise NotImplementedError before any data is read).

Not replayed: test_mismatch_upsampled_region_size, test_mismatch_offsets_size (skimage's private
_upsampled_dft); test_deprecated_return_error (a deprecated skimage keyword, no numbers);
test_cross_correlate_masked_* (skimage's private cross_correlate_masked).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import scipy.fft as fft
from numpy.testing import assert_allclose, assert_equal
from scipy.ndimage import fourier_shift
from skimage import img_as_float
from skimage._shared._warnings import expected_warnings
from skimage._shared.utils import _supported_float_type
from skimage.data import binary_blobs, camera, stereo_motorcycle
from skimage.registration._masked_phase_cross_correlation import (
    _masked_phase_cross_correlation as masked_register_translation,
)

import gpuprep

NIE = NotImplementedError



@pytest.fixture(params=["cpu", "gpu"])
def backend(request):
    return request.param


def _pcc(backend):
    def phase_cross_correlation(*args, **kwargs):
        return gpuprep.phase_cross_correlation(*args, backend=backend, **kwargs)

    return phase_cross_correlation


def _shifted_real(image, shift):
    """The real-space moving image of a Fourier-space case."""
    return fft.ifftn(fourier_shift(fft.fftn(image), shift)).real


def _phantom(n_dim):
    return img_as_float(binary_blobs(length=32, n_dim=n_dim, rng=1))


# ----------------------------------------------------------------------------------------------
# test_phase_cross_correlation.py
# ----------------------------------------------------------------------------------------------


# test_phase_cross_correlation.py::test_correlation
@pytest.mark.parametrize("normalization", [None, "phase"])
def test_pcc_correlation(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = fft.fftn(camera())
    shift = (-7, 12)
    shifted_image = fourier_shift(reference_image, shift)
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image, shifted_image, space="fourier", normalization=normalization
        )


# test_phase_cross_correlation.py::test_correlation, in real space
@pytest.mark.parametrize("normalization", [None, "phase"])
def test_pcc_correlation_real(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera()
    shift = (-7, 12)
    shifted_image = _shifted_real(reference_image, shift)
    # pixel precision
    result, _, _ = phase_cross_correlation(
        reference_image, shifted_image, normalization=normalization
    )
    assert_allclose(result[:2], -np.array(shift))


# test_phase_cross_correlation.py::test_correlation_invalid_normalization
@pytest.mark.parametrize("normalization", ["nonexisting"])
def test_pcc_correlation_invalid_normalization(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = fft.fftn(camera())
    shift = (-7, 12)
    shifted_image = fourier_shift(reference_image, shift)
    with pytest.raises(ValueError):
        phase_cross_correlation(
            reference_image, shifted_image, space="fourier", normalization=normalization
        )


# test_phase_cross_correlation.py::test_correlation_invalid_normalization, in real space
@pytest.mark.parametrize("normalization", ["nonexisting"])
def test_pcc_correlation_invalid_normalization_real(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera()
    shifted_image = _shifted_real(reference_image, (-7, 12))
    with pytest.raises(ValueError):
        phase_cross_correlation(reference_image, shifted_image, normalization=normalization)


# test_phase_cross_correlation.py::test_subpixel_precision
@pytest.mark.parametrize("normalization", [None, "phase"])
def test_pcc_subpixel_precision(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = fft.fftn(camera())
    subpixel_shift = (-2.4, 1.32)
    shifted_image = fourier_shift(reference_image, subpixel_shift)
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image,
            shifted_image,
            upsample_factor=100,
            space="fourier",
            normalization=normalization,
        )


# test_phase_cross_correlation.py::test_subpixel_precision, in real space
@pytest.mark.parametrize("normalization", [None, "phase"])
def test_pcc_subpixel_precision_real(normalization, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera()
    subpixel_shift = (-2.4, 1.32)
    shifted_image = _shifted_real(reference_image, subpixel_shift)
    # subpixel precision
    result, _, _ = phase_cross_correlation(
        reference_image, shifted_image, upsample_factor=100, normalization=normalization
    )
    assert_allclose(result[:2], -np.array(subpixel_shift), atol=0.05)


# test_phase_cross_correlation.py::test_real_input
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_pcc_real_input(dtype, backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera().astype(dtype, copy=False)
    subpixel_shift = (-2.4, 1.32)
    shifted_image = fourier_shift(fft.fftn(reference_image), subpixel_shift)
    shifted_image = fft.ifftn(shifted_image).real.astype(dtype, copy=False)
    # subpixel precision
    result, error, diffphase = phase_cross_correlation(
        reference_image, shifted_image, upsample_factor=100
    )
    assert result.dtype == _supported_float_type(dtype)
    assert_allclose(result[:2], -np.array(subpixel_shift), atol=0.05)


# test_phase_cross_correlation.py::test_size_one_dimension_input
def test_pcc_size_one_dimension_input(backend):
    phase_cross_correlation = _pcc(backend)
    # take a strip of the input image
    reference_image = fft.fftn(camera()[:, 15]).reshape((-1, 1))
    subpixel_shift = (-2.4, 4)
    shifted_image = fourier_shift(reference_image, subpixel_shift)
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image, shifted_image, upsample_factor=20, space="fourier"
        )


# test_phase_cross_correlation.py::test_size_one_dimension_input, in real space
def test_pcc_size_one_dimension_input_real(backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera()[:, 15].reshape((-1, 1)).astype(np.float64)
    subpixel_shift = (-2.4, 4)
    shifted_image = _shifted_real(reference_image, subpixel_shift)
    result, error, diffphase = phase_cross_correlation(
        reference_image, shifted_image, upsample_factor=20
    )
    assert_allclose(result[:2], -np.array((-2.4, 0)), atol=0.05)


# test_phase_cross_correlation.py::test_3d_input
def test_pcc_3d_input(backend):
    phase_cross_correlation = _pcc(backend)
    phantom = _phantom(3)
    reference_image = fft.fftn(phantom)
    shift = (-2.0, 1.0, 5.0)
    shifted_image = fourier_shift(reference_image, shift)
    with pytest.raises(NIE):
        phase_cross_correlation(reference_image, shifted_image, space="fourier")
    subpixel_shift = (-2.3, 1.7, 5.4)
    shifted_image = fourier_shift(reference_image, subpixel_shift)
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image, shifted_image, upsample_factor=100, space="fourier"
        )


# test_phase_cross_correlation.py::test_3d_input, in real space
def test_pcc_3d_input_real(backend):
    phase_cross_correlation = _pcc(backend)
    phantom = _phantom(3)
    shift = (-2.0, 1.0, 5.0)
    shifted_image = _shifted_real(phantom, shift)
    result, error, diffphase = phase_cross_correlation(phantom, shifted_image)
    assert_allclose(result, -np.array(shift), atol=0.05)

    # subpixel precision now available for 3-D data
    subpixel_shift = (-2.3, 1.7, 5.4)
    shifted_image = _shifted_real(phantom, subpixel_shift)
    result, error, diffphase = phase_cross_correlation(
        phantom, shifted_image, upsample_factor=100
    )
    assert_allclose(result, -np.array(subpixel_shift), atol=0.05)


# test_phase_cross_correlation.py::test_unknown_space_input
def test_pcc_unknown_space_input(backend):
    phase_cross_correlation = _pcc(backend)
    image = np.ones((5, 5))
    with pytest.raises(ValueError):
        phase_cross_correlation(image, image, space="frank")


# test_phase_cross_correlation.py::test_wrong_input
def test_pcc_wrong_input(backend):
    phase_cross_correlation = _pcc(backend)
    # Dimensionality mismatch
    image = np.ones((5, 5, 1))
    template = np.ones((5, 5))
    with pytest.raises(ValueError):
        phase_cross_correlation(template, image)

    # Size mismatch
    image = np.ones((5, 5))
    template = np.ones((4, 4))
    with pytest.raises(ValueError):
        phase_cross_correlation(template, image)

    # NaN values in data
    image = np.ones((5, 5))
    image[0][0] = np.nan
    template = np.ones((5, 5))
    with expected_warnings(
        [
            r"invalid value encountered in true_divide"
            + r"|"
            + r"invalid value encountered in divide"
            + r"|\A\Z"
        ]
    ):
        with pytest.raises(ValueError):
            phase_cross_correlation(template, image)


# test_phase_cross_correlation.py::test_4d_input_pixel (4-D and Fourier space: both unsupported)
def test_pcc_4d_input_pixel(backend):
    phase_cross_correlation = _pcc(backend)
    phantom = _phantom(4)
    reference_image = fft.fftn(phantom)
    shift = (-2.0, 1.0, 5.0, -3)
    shifted_image = fourier_shift(reference_image, shift)
    with pytest.raises(NIE):
        phase_cross_correlation(reference_image, shifted_image, space="fourier")
    # in real space: 4-D arrays are not supported either
    with pytest.raises(NIE):
        phase_cross_correlation(phantom, _shifted_real(phantom, shift))


# test_phase_cross_correlation.py::test_4d_input_subpixel
def test_pcc_4d_input_subpixel(backend):
    phase_cross_correlation = _pcc(backend)
    phantom = _phantom(4)
    reference_image = fft.fftn(phantom)
    subpixel_shift = (-2.3, 1.7, 5.4, -3.2)
    shifted_image = fourier_shift(reference_image, subpixel_shift)
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image, shifted_image, upsample_factor=10, space="fourier"
        )
    with pytest.raises(NIE):
        phase_cross_correlation(
            phantom, _shifted_real(phantom, subpixel_shift), upsample_factor=10
        )


def _eagle_substitute():
    """A deterministic textured stand-in for ``eagle()[500:, 900:]`` (eagle() needs a download):
    large enough for every slice test_disambiguate_2d takes."""
    return np.random.default_rng(0).random((1200, 1200))


# test_phase_cross_correlation.py::test_disambiguate_2d
@pytest.mark.parametrize(
    ("shift0", "shift1"),
    list(itertools.product((100, -100, 350, -350), (100, -100, 350, -350))),
)
def test_pcc_disambiguate_2d(shift0, shift1, backend):
    phase_cross_correlation = _pcc(backend)
    image = _eagle_substitute()
    shift = (shift0, shift1)
    origin0 = []
    for s in shift:
        if s > 0:
            origin0.append(0)
        else:
            origin0.append(-s)
    origin1 = np.array(origin0) + shift
    slice0 = tuple(slice(o, o + 450) for o in origin0)
    slice1 = tuple(slice(o, o + 450) for o in origin1)
    reference = image[slice0]
    moving = image[slice1]
    computed_shift, _, _ = phase_cross_correlation(reference, moving, disambiguate=True)
    np.testing.assert_equal(shift, computed_shift)
    # And scikit-image's own answer on the same stand-in, and the aliased shift without the flag.
    from skimage.registration import phase_cross_correlation as skimage_pcc

    np.testing.assert_equal(skimage_pcc(reference, moving, disambiguate=True)[0], computed_shift)
    plain, _, _ = phase_cross_correlation(reference, moving)
    if abs(shift0) > 225 or abs(shift1) > 225:
        assert not np.array_equal(plain, shift)


# test_phase_cross_correlation.py::test_invalid_value_in_division_warnings
def test_pcc_invalid_value_in_division_warnings(backend):
    phase_cross_correlation = _pcc(backend)
    im1 = np.zeros((100, 100))
    im1[50, 50] = 1
    im2 = np.zeros((100, 100))
    im2[60, 60] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phase_cross_correlation(im1, im2, disambiguate=True)


# test_phase_cross_correlation.py::test_invalid_value_in_division_warnings, without disambiguate
def test_pcc_invalid_value_in_division_warnings_real(backend):
    phase_cross_correlation = _pcc(backend)
    im1 = np.zeros((100, 100))
    im1[50, 50] = 1
    im2 = np.zeros((100, 100))
    im2[60, 60] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phase_cross_correlation(im1, im2)


# test_phase_cross_correlation.py::test_disambiguate_zero_shift
@pytest.mark.parametrize("disambiguate", [True, False])
def test_pcc_disambiguate_zero_shift(disambiguate, backend):
    phase_cross_correlation = _pcc(backend)
    image = camera()
    computed_shift, _, _ = phase_cross_correlation(image, image, disambiguate=disambiguate)
    assert isinstance(computed_shift, np.ndarray)
    np.testing.assert_array_equal(computed_shift, np.array((0.0, 0.0)))


# test_phase_cross_correlation.py::test_disambiguate_empty_image
@pytest.mark.parametrize("null_images", [(1, 0), (0, 1), (0, 0)])
def test_pcc_disambiguate_empty_image(null_images, backend):
    phase_cross_correlation = _pcc(backend)
    image = camera()
    with expected_warnings(["Could not determine real-space shift", "Could not determine RMS error between images"]):
        shift, error, phasediff = phase_cross_correlation(
            image * null_images[0], image * null_images[1], disambiguate=True
        )
    np.testing.assert_array_equal(shift, np.array([0.0, 0.0]))
    assert np.isnan(error)
    assert phasediff == 0.0


# test_phase_cross_correlation.py::test_disambiguate_empty_image, without disambiguate (its
# shift/error/phasediff checks; scikit-image then warns only "Could not determine RMS error")
@pytest.mark.parametrize("null_images", [(1, 0), (0, 1), (0, 0)])
def test_pcc_disambiguate_empty_image_real(null_images, backend):
    phase_cross_correlation = _pcc(backend)
    image = camera()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        shift, error, phasediff = phase_cross_correlation(
            image * null_images[0], image * null_images[1]
        )
    np.testing.assert_array_equal(shift, np.array([0.0, 0.0]))
    assert np.isnan(error)
    assert phasediff == 0.0


# test_phase_cross_correlation.py::test_disambiguate_empty_image, the RMS-error warning check
@pytest.mark.parametrize("null_images", [(1, 0), (0, 1), (0, 0)])
def test_pcc_disambiguate_empty_image_real_warning(null_images, backend):
    phase_cross_correlation = _pcc(backend)
    image = camera()
    with pytest.warns(UserWarning) as records:
        phase_cross_correlation(image * null_images[0], image * null_images[1])
    assert any("Could not determine RMS error between images" in r.message.args[0] for r in records)


# ----------------------------------------------------------------------------------------------
# test_masked_phase_cross_correlation.py (the cases that call phase_cross_correlation)
# ----------------------------------------------------------------------------------------------


# test_masked_phase_cross_correlation.py::test_detrecated_masked_register_translation
def test_masked_pcc_detrecated_masked_register_translation(backend):
    phase_cross_correlation = _pcc(backend)
    reference_image, moving_image, _ = stereo_motorcycle()
    ref_mask = np.random.default_rng(0).choice(
        [True, False], reference_image.shape, p=[3 / 4, 1 / 4]
    )
    with pytest.raises(NIE):
        phase_cross_correlation(reference_image, moving_image, reference_mask=ref_mask)


# test_masked_phase_cross_correlation.py::test_masked_registration_vs_phase_cross_correlation
def test_masked_pcc_masked_registration_vs_phase_cross_correlation(backend):
    phase_cross_correlation = _pcc(backend)
    reference_image = camera()
    shift = (-7, 12)
    shifted = np.real(fft.ifft2(fourier_shift(fft.fft2(reference_image), shift)))
    trivial_mask = np.ones_like(reference_image)

    nonmasked_result, *_ = phase_cross_correlation(reference_image, shifted)
    masked_result = masked_register_translation(
        reference_image, shifted, reference_mask=trivial_mask, overlap_ratio=1 / 10
    )
    assert_equal(nonmasked_result, masked_result)


# test_masked_phase_cross_correlation.py::test_masked_registration_random_masks
def test_masked_pcc_masked_registration_random_masks(backend):
    phase_cross_correlation = _pcc(backend)
    np.random.seed(23)
    reference_image = camera()
    shift = (-7, 12)
    shifted = np.real(fft.ifft2(fourier_shift(fft.fft2(reference_image), shift)))
    ref_mask = np.random.choice([True, False], reference_image.shape, p=[3 / 4, 1 / 4])
    shifted_mask = np.random.choice([True, False], shifted.shape, p=[3 / 4, 1 / 4])
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image, shifted, reference_mask=ref_mask, moving_mask=shifted_mask
        )


# test_masked_phase_cross_correlation.py::test_masked_registration_random_masks_non_equal_sizes
def test_masked_pcc_masked_registration_random_masks_non_equal_sizes(backend):
    phase_cross_correlation = _pcc(backend)
    np.random.seed(23)
    reference_image = camera()
    shift = (-7, 12)
    shifted = np.real(fft.ifft2(fourier_shift(fft.fft2(reference_image), shift)))
    shifted = shifted[64:-64, 64:-64]
    ref_mask = np.random.choice([True, False], reference_image.shape, p=[3 / 4, 1 / 4])
    shifted_mask = np.random.choice([True, False], shifted.shape, p=[3 / 4, 1 / 4])
    with pytest.raises(NIE):
        phase_cross_correlation(
            reference_image,
            shifted,
            reference_mask=np.ones_like(ref_mask),
            moving_mask=np.ones_like(shifted_mask),
        )


# test_masked_phase_cross_correlation.py::test_masked_registration_padfield_data (its PNGs are
# fetched test data: a deterministic stand-in of their shape, since masks raise before any use)
@pytest.mark.parametrize("xi, yi", [(75, 75), (-130, 130), (130, 130)])
def test_masked_pcc_masked_registration_padfield_data(xi, yi, backend):
    phase_cross_correlation = _pcc(backend)
    rng = np.random.default_rng(abs(xi) + yi)
    fixed_image = rng.random((128, 128))
    moving_image = rng.random((128, 128))
    fixed_mask = fixed_image != 0
    moving_mask = moving_image != 0
    with pytest.raises(NIE):
        phase_cross_correlation(
            fixed_image,
            moving_image,
            reference_mask=fixed_mask,
            moving_mask=moving_mask,
            overlap_ratio=0.1,
        )
