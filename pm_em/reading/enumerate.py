"""Enumerating a latent's support in a graph, and lining dependents up with its elements.

A latent's elements are independent given the parameters when each dependent's elementwise
log density splits into one term per latent element. These helpers set every element to each
support value at once (a leading axis of length K), and reduce a dependent's terms to one per
latent element: its axes equal the latent's ("same"), extend them ("leading": rows of a
multivariate dependent) or end with them ("trailing"); a scalar latent takes everything.
"""

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

__all__ = ["align", "axes_map", "element_of", "enumerated"]


def enumerated(zv, support: np.ndarray, z_shape: tuple[int, ...]) -> Variable:
    """Every element of z at support value k, for each k: shape (K, *z_shape)."""
    k_first = pt.as_tensor(support.reshape((-1,) + (1,) * len(z_shape)))
    return pt.broadcast_to(k_first, (support.size, *z_shape)).astype(zv.dtype)


def axes_map(shape, z_shape) -> str | None:
    """How a dependent's axes line up with the latent's: "same", "leading", "trailing"."""
    nz = len(z_shape)
    if shape == z_shape:
        return "same"
    if nz == 0:
        return "all"
    if len(shape) > nz and shape[:nz] == z_shape:
        return "leading"
    if len(shape) > nz and shape[-nz:] == z_shape:
        return "trailing"
    return None


def align(batched, shape, z_shape, dep_name, z_name):
    """Reduce a (K, *shape) log density to one term per latent element: (K, *z_shape)."""
    how = axes_map(shape, z_shape)
    nz, nd = len(z_shape), len(shape)
    if how == "same":
        return batched
    if how == "all":
        return batched.reshape((batched.shape[0], -1)).sum(axis=1)
    if how == "leading":
        return batched.sum(axis=tuple(range(1 + nz, 1 + nd)))
    if how == "trailing":
        return batched.sum(axis=tuple(range(1, 1 + nd - nz)))
    raise ValueError(
        f"The density of '{dep_name}' (elementwise shape {shape}) does not split into one term "
        f"per element of latent '{z_name}' (shape {z_shape}), so the latent's elements interact "
        "and enumerating each element on its own would be wrong. Give the dependent one entry "
        "(or one row) per latent element."
    )


def element_of(flat_positions: np.ndarray, shape, z_shape) -> np.ndarray:
    """Flat index of the latent element that each flat position of ``shape`` belongs to."""
    how = axes_map(tuple(shape), tuple(z_shape))
    n_z = max(int(np.prod(z_shape)), 1)
    if how == "same":
        return flat_positions
    if how == "all":
        return np.zeros_like(flat_positions)
    if how == "leading":
        return flat_positions // (int(np.prod(shape)) // n_z)
    return flat_positions % n_z  # trailing
