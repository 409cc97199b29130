"""Tolerances for floating-point comparisons, scaled to the numbers compared.

Two evaluations of one real number (another summation order, vector width, BLAS kernel, libm or
thread count) differ by a few rounding units of the magnitudes that went into them, never by a
fixed absolute amount. So a rounding tolerance here is ``size * magnitude(...)``: ``magnitude``
the largest |value| compared, at least 1 (numbers near zero come from order-one intermediates:
probabilities, entropies in nats, unit-variance noise), and ``size`` given with its reason where
it is used: ``k * F32`` for float32 results, a relative size such as ``1e-12`` (some 4500 float64
units, far above rounding and far below any modelling error) for float64 ones. Estimates with
sampling error are held to a multiple of their standard error instead.
"""

import numpy as np
import torch

#: float32 machine epsilon, 1.2e-7
F32 = float(np.finfo(np.float32).eps)


def magnitude(*values) -> float:
    """``max(1, largest finite |v|)`` over the numbers, arrays and tensors given."""
    out = 1.0
    for v in values:
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().double().numpy()
        a = np.abs(np.asarray(v, dtype=np.float64))
        a = a[np.isfinite(a)]
        if a.size:
            out = max(out, float(a.max()))
    return out
