"""FIR design: gradient descent against an independent least-squares solve of the same design."""
import numpy as np
import pytest

import fir_design as ex


@pytest.mark.parametrize("taps,cutoff", [(11, 0.3), (16, 0.5)])
def test_gradient_descent_reaches_the_least_squares_filter(taps, cutoff):
    out = ex.main(taps=taps, grid=128, cutoff=cutoff, steps=80)
    w = np.linspace(0, np.pi, 128)
    d = np.where(w <= cutoff * np.pi, np.exp(-1j * w * (taps - 1) / 2), 0)
    e = np.exp(-1j * np.outer(w, np.arange(taps)))           # complex least squares
    a = np.vstack([e.real, e.imag])
    h_ls = np.linalg.lstsq(a, np.concatenate([d.real, d.imag]), rcond=None)[0]
    np.testing.assert_allclose(out["taps"], h_ls, atol=1e-8)
    np.testing.assert_allclose(out["taps"], out["taps"][::-1], atol=1e-8)   # linear phase
    best = np.mean(np.abs(e @ h_ls - d) ** 2)
    assert out["history"][-1] == pytest.approx(best, rel=1e-6)
    assert out["history"][0] == pytest.approx(np.mean(np.abs(d) ** 2), rel=1e-12)
    np.testing.assert_allclose(out["magnitude"], np.abs(e @ h_ls), atol=1e-8)
