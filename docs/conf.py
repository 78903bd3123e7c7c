"""Sphinx configuration of the pm_em documentation site (built by ``./dev docs``).

The site is the package's docstrings (numpydoc, through autosummary) and tutorials written
as MyST notebooks that myst-nb executes at every build. The build runs offline and with
warnings as errors, which decides several settings below (each says why).

Environment variables:

- ``PM_EM_DOCS_EXECUTE``: myst-nb's execution mode, ``force`` (default: every tutorial
  runs), ``cache`` (jupyter-cache; reruns only changed notebooks) or ``off`` (layout work).
- ``PM_EM_DOCS_INTERSPHINX=1``: link to NumPy, SciPy, xarray, ArviZ and PyMC (needs the
  network: a failed inventory download is an untyped warning, fatal under ``-W``).
- ``PM_EM_DOCS_VALIDATE=1``: numpydoc's docstring checks, each failure a warning.
"""

import os

import pm_em

project = "pm_em"
author = "pm_em developers"
copyright = "2026, pm_em developers"
release = version = pm_em.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
]
if os.environ.get("PM_EM_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "xarray": ("https://docs.xarray.dev/en/stable", None),
        "arviz": ("https://python.arviz.org/en/stable", None),
        "pymc": ("https://www.pymc.io/projects/docs/en/stable", None),
    }
    intersphinx_timeout = 10

# data/ holds the tutorials' CSV files; install_chromium.sh etc. are not pages.
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "data"]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}

# `single backticks` in pm_em's docstrings are cross-references.
default_role = "py:obj"

# --- autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc's "Parameters" already gives the types
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = (
    {"all", "SA01", "EX01", "ES01"} if os.environ.get("PM_EM_DOCS_VALIDATE") == "1" else set()
)

# --- myst / myst-nb
# No "dollarmath": a page with math gets MathJax from a CDN, which the offline browser
# test reports as a failed request. Formulas are written in Unicode or code.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("PM_EM_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True  # a failing tutorial fails the build
nb_execution_timeout = 300
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_cache_path = "_build/.jupyter_cache"

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"pm_em {release}"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
}
# Without a default_mode the theme's JS logs console.error("Got invalid theme mode") on a
# fresh browser profile, which the browser test treats as a failure.
html_context = {"default_mode": "light"}
# Without a favicon the browser asks for /favicon.ico and logs a 404.
html_favicon = "_static/favicon.svg"
html_show_sourcelink = False
