"""Compiled Cython extensions, built at install from ``src_cython/``; :func:`not_built` says why one is missing."""
import os

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the fastconv folder in use


def source_tree():
    """The repository root when this fastconv is a source checkout (``setup.py`` and ``src_cython/``
    beside the package), else None."""
    root = os.path.dirname(PACKAGE)
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "src_cython")):
        return root
    return None


def installed_copy():
    """The folder of an installed fastconv other than the one in use (a regular install that a source
    tree first on ``sys.path`` hides), else None."""
    from importlib import metadata  # only when asked: it costs milliseconds at ``import fastconv``
    try:
        dist = metadata.distribution("fastconv")
    except metadata.PackageNotFoundError:
        return None
    folder = os.path.dirname(os.path.abspath(dist.locate_file(os.path.join("fastconv", "__init__.py"))))
    if os.path.isdir(folder) and not os.path.samefile(folder, PACKAGE):
        return folder
    return None


def not_built(error):
    """Why the extensions cannot be imported (``error``: the ImportError) and what to do, in words."""
    root = source_tree()
    if root is None:
        return (f"not built ({error}): reinstall fastconv with a C compiler available, e.g. "
                f"`pip install --no-build-isolation -e .`")
    other = installed_copy()
    elsewhere = f" (the installed fastconv, {other}, is hidden by it)" if other else ""
    return (f"not built: Python imported the source tree {root}{elsewhere}, whose extensions are not "
            f"compiled (a Python started in that folder finds it first); build them there with "
            f"`pip install -e .`, or run from another directory")
