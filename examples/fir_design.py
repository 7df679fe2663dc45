"""Filter design by gradient descent: FIR coefficients for a target frequency response.

An FIR filter with taps h[0..L-1] has frequency response H(w) = sum_n h[n] exp(-i w n). We ask
for a linear-phase low-pass filter, D(w) = exp(-i w (L-1)/2) below the cutoff and 0 above,
and minimize the mean squared error |H(w) - D(w)|^2 over a grid of frequencies (written with
real arithmetic: Re H = C h, Im H = -S h with C = cos(w n), S = sin(w n)). The loss is
quadratic in h, so gradient descent converges to the least-squares solution, which we can
also write in closed form.

Run: python examples/fir_design.py
"""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import SGD


def design_problem(taps: int, grid: int, cutoff: float) -> dict:
    """Cosine/sine matrices over the frequency grid and the real/imaginary target response."""
    w = np.linspace(0, np.pi, grid)
    n = np.arange(taps)
    delay = (taps - 1) / 2
    passband = (w <= cutoff * np.pi).astype(float)
    return {"cos": np.cos(np.outer(w, n)), "sin": np.sin(np.outer(w, n)), "w": w,
            "target_re": passband * np.cos(w * delay), "target_im": -passband * np.sin(w * delay)}


def response_error(h, p):
    re = p["cos"] @ h - p["target_re"]
    im = -(p["sin"] @ h) - p["target_im"]
    return anp.mean(re * re + im * im)


def gradient_design(p: dict, steps: int = 100, lr: float = 0.5) -> tuple[np.ndarray, list]:
    """Plain gradient descent from h = 0; returns the taps and the loss history."""
    h = np.zeros(p["cos"].shape[1])
    loss_and_grad = compile_value_and_grad(response_error, h, p)
    optimizer = SGD(lr=lr)
    states = init_states(optimizer, h)
    history = []
    for _ in range(steps):
        loss, g = loss_and_grad(h, p)
        history.append(loss)
        h, states = apply_updates(optimizer, h, g, states)
    return h, history


def least_squares_design(p: dict) -> np.ndarray:
    """The closed form: minimize ||[C; -S] h - [Re D; Im D]||^2."""
    a = np.vstack([p["cos"], -p["sin"]])
    return np.linalg.lstsq(a, np.concatenate([p["target_re"], p["target_im"]]), rcond=None)[0]


def main(taps: int = 21, grid: int = 256, cutoff: float = 0.3, steps: int = 100) -> dict:
    p = design_problem(taps, grid, cutoff)
    h, history = gradient_design(p, steps)
    magnitude = np.abs(np.exp(-1j * np.outer(p["w"], np.arange(taps))) @ h)
    return {"problem": p, "taps": h, "least_squares": least_squares_design(p),
            "history": history, "magnitude": magnitude}


if __name__ == "__main__":
    out = main()
    h, ls = out["taps"], out["least_squares"]
    print(f"loss: {out['history'][0]:.4f} at h = 0 -> {out['history'][-1]:.6f}")
    print(f"max |h_gradient - h_least_squares| = {np.abs(h - ls).max():.2e}")
    print("taps:", np.round(h, 4))
    w, mag = out["problem"]["w"] / np.pi, out["magnitude"]
    passband, stopband = mag[w <= 0.25], mag[w >= 0.4]
    print(f"|H| in the passband (w <= 0.25 pi): {passband.min():.3f} .. {passband.max():.3f}; "
          f"in the stopband (w >= 0.4 pi): at most {stopband.max():.3f}")
