"""Inverse rendering: recover albedo, light intensity and ambient light from pixels.

A toy Lambertian renderer: a sphere with a textured albedo rho(p) in front of a white card
(albedo 1, normal facing the camera), lit by a distant light of intensity s from a known
direction l plus ambient light a:
    I(p) = rho(p) * (s * max(0, n(p) . l) + a).
Albedo and intensity only appear as a product, so one image cannot separate them; the card
with known albedo and a second photograph with the light elsewhere do. We render both images
with the current guess, compare with the noisy photographs and descend the gradient with
respect to the per-pixel log-albedo of the sphere, log s and log a.

Run: python examples/inverse_rendering.py
"""
from __future__ import annotations

import numpy as np

from autodiff import numpy as anp
from compiled import apply_updates, compile_value_and_grad, init_states
from executor.optim import Adam


def scene(size: int) -> dict:
    """Normals of a sphere of radius 0.8 on a card, the sphere mask, two light directions."""
    y, x = np.mgrid[1:-1:size * 1j, -1:1:size * 1j]
    inside = x * x + y * y < 0.64
    z = np.sqrt(np.clip(0.64 - x * x - y * y, 0, None)) / 0.8
    normals = np.where(inside[..., None], np.stack([x / 0.8, y / 0.8, z], axis=-1), [0, 0, 1])
    lights = np.array([[0.6, 0.3, 0.74], [-0.5, -0.4, 0.77]])
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    shading = np.maximum(0, np.einsum("hwc,kc->khw", normals, lights))    # (2, size, size)
    return {"mask": inside.astype(float), "shading": shading}


def render(params, scene):
    """Both images: rho * (s * shading + a), with rho = 1 on the card."""
    rho = scene["mask"] * anp.exp(params["log_albedo"]) + (1 - scene["mask"])
    return rho * (anp.exp(params["log_intensity"]) * scene["shading"]
                  + anp.exp(params["log_ambient"]))


def photo_error(params, scene, photos):
    r = render(params, scene) - photos
    return anp.mean(r * r)


def true_params(size: int) -> dict:
    """A checkerboard texture (albedo 0.3 / 0.8), light intensity 2.0, ambient 0.3."""
    y, x = np.mgrid[0:size, 0:size]
    albedo = np.where((x // 4 + y // 4) % 2 == 0, 0.8, 0.3)
    return {"log_albedo": np.log(albedo), "log_intensity": np.array(np.log(2.0)),
            "log_ambient": np.array(np.log(0.3))}


def recover(scene, photos, steps: int = 500, lr: float = 0.05) -> dict:
    """Adam from a grey guess (albedo 0.5, intensity 1, ambient 0.1)."""
    size = photos.shape[-1]
    params = {"log_albedo": np.full((size, size), np.log(0.5)),
              "log_intensity": np.array(0.0), "log_ambient": np.array(np.log(0.1))}
    loss_and_grad = compile_value_and_grad(photo_error, params, scene, photos)
    optimizer = Adam(lr=lr)
    states = init_states(optimizer, params)
    for _ in range(steps):
        _, grads = loss_and_grad(params, scene, photos)
        params, states = apply_updates(optimizer, params, grads, states)
    return params


def main(size: int = 24, noise: float = 0.01, steps: int = 500, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sc = scene(size)
    truth = true_params(size)
    photos = render(truth, sc) + noise * rng.normal(size=(2, size, size))
    got = recover(sc, photos, steps)
    return {"scene": sc, "truth": truth, "photos": photos, "recovered": got}


if __name__ == "__main__":
    out = main()
    got, truth, mask = out["recovered"], out["truth"], out["scene"]["mask"] > 0
    for name in ("log_intensity", "log_ambient"):
        print(f"{name[4:]:9s}: true {np.exp(truth[name]):.3f}, recovered {np.exp(got[name]):.3f}")
    err = np.abs(np.exp(got["log_albedo"]) - np.exp(truth["log_albedo"]))[mask]
    print(f"albedo on the sphere ({mask.sum()} pixels): mean abs error {err.mean():.4f}, "
          f"max {err.max():.4f}")
