"""The observed variables' data, read once and checked before anything is compiled."""

import numpy as np
import pymc as pm
from pytensor.graph.basic import Constant, Variable
from pytensor.scalar.basic import Cast
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.sharedvar import TensorSharedVariable

__all__ = ["check_observed", "observed_data"]


def observed_data(model: pm.Model, rv: Variable) -> np.ndarray | None:
    """Return the data of observed variable ``rv`` (constant or shared), else None.

    A cast is seen through: ``pm.Data`` stores integers as int32, and a discrete likelihood
    observes them as ``Cast{int64}`` of the shared variable.
    """
    value = model.rvs_to_values.get(rv)
    dtype = None
    while (
        value is not None
        and value.owner is not None
        and isinstance(value.owner.op, Elemwise)
        and isinstance(value.owner.op.scalar_op, Cast)
    ):
        dtype = dtype or value.dtype
        value = value.owner.inputs[0]
    if isinstance(value, Constant):
        data = np.asarray(value.data)
    elif isinstance(value, TensorSharedVariable):
        data = np.asarray(value.get_value())
    else:
        return None
    return data.astype(dtype) if dtype is not None else data


def check_observed(model: pm.Model) -> None:
    """Refuse a model without data, or data that are empty, NaN (not imputed) or infinite."""
    if not model.observed_RVs:
        raise ValueError(
            "The model has no observed variable: EM needs data. Pass `observed=` to the likelihood."
        )
    for rv in model.observed_RVs:
        data = observed_data(model, rv)
        if data is None or not np.issubdtype(data.dtype, np.number):
            continue
        if data.size == 0:
            raise ValueError(
                f"Observed variable '{rv.name}' has no data (an empty array). EM needs at "
                "least one observation: pass data or remove the variable."
            )
        if np.isnan(data).any():
            raise ValueError(
                f"Observed variable '{rv.name}' contains NaN that PyMC did not impute (NaN "
                "inside `pm.Data` is passed on as is). Pass the data as a plain or masked "
                "array to `observed=` so that PyMC imputes it, or drop the incomplete rows."
            )
        if np.isinf(data).any():
            raise ValueError(
                f"Observed variable '{rv.name}' contains infinite values. Remove or correct "
                "those entries; EM needs finite data."
            )
