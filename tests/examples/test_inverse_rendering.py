"""Inverse rendering: an independent numpy renderer, and the known true scene parameters."""
import numpy as np
import pytest

import inverse_rendering as ex

SIZE = 16


def _shading(size):
    """max(0, n . l) per pixel for both lights, from the sphere's geometry."""
    coords = np.linspace(-1, 1, size)
    lights = np.array([[0.6, 0.3, 0.74], [-0.5, -0.4, 0.77]])
    lights = lights / np.linalg.norm(lights, axis=1, keepdims=True)
    out = np.zeros((2, size, size))
    for r in range(size):
        for c in range(size):
            px, py = coords[c], coords[size - 1 - r]           # row 0 is the top (y = +1)
            if px * px + py * py < 0.64:
                n = np.array([px, py, np.sqrt(0.64 - px * px - py * py)]) / 0.8
            else:
                n = np.array([0.0, 0.0, 1.0])
            out[:, r, c] = np.maximum(0, lights @ n)
    return out


@pytest.fixture(scope="module")
def result():
    return ex.main(size=SIZE, steps=400, seed=2)


def test_scene_geometry(result):
    np.testing.assert_allclose(result["scene"]["shading"], _shading(SIZE), atol=1e-12)


def test_recovers_the_true_scene(result):
    got, mask = result["recovered"], result["scene"]["mask"] > 0
    assert np.exp(got["log_intensity"]) == pytest.approx(2.0, rel=0.02)
    assert np.exp(got["log_ambient"]) == pytest.approx(0.3, rel=0.03)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    checker = np.where((x // 4 + y // 4) % 2 == 0, 0.8, 0.3)
    err = np.abs(np.exp(got["log_albedo"]) - checker)[mask]
    assert err.mean() < 0.01 and err.max() < 0.05


def test_rendered_guess_explains_the_photos_to_the_noise_level(result):
    got, mask = result["recovered"], result["scene"]["mask"]
    rho = mask * np.exp(got["log_albedo"]) + (1 - mask)
    images = rho * (np.exp(got["log_intensity"]) * _shading(SIZE) + np.exp(got["log_ambient"]))
    rms = np.sqrt(np.mean((images - result["photos"]) ** 2))
    assert 0.005 < rms < 0.012                      # the photos carry noise of sd 0.01
