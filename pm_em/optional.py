"""Optional dependencies, imported where they are needed, with an error that says what to install.

Chunked fits of in-memory data need nothing beyond pm_em's own dependencies; dask, zarr and
Dask distributed (the ``dask`` extra) are needed for out-of-core data and for clusters. The
error is raised, never swallowed: a missing package stops the fit that needs it.
"""

import importlib
from types import ModuleType

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'pm-em[dask]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise an ImportError that names ``purpose`` and the extra.

    Parameters
    ----------
    module : str
        E.g. ``"dask.array"``, ``"distributed"``, ``"zarr"``.
    purpose : str
        What needs it, for the message (e.g. ``"client="``).

    Returns
    -------
    module

    Raises
    ------
    ImportError
        When the package is not installed.

    Examples
    --------
    >>> require("numpy", "this example").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install pm_em's dask extra: {INSTALL_HINT}"
        ) from err
