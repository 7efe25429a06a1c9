"""Packaging glue: four source roots, one `kommune` namespace, the board files as data.

Each top-level folder (protocols/, edge/, tools/, hil_tests/) shows one part of
the architecture and holds that part's package under `kommune/`, so the
install exposes only `kommune.*` and no generic top-level names.

firmware/ holds what boards run (node apps, board profiles), not CPython code;
it stays a top-level folder and ships as the data package `kommune.firmware`
(no __init__.py; which files, see package-data in pyproject.toml), so a wheel
carries it and `kommune.hil.paths` finds it in a checkout and in an install alike.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

SOURCE_ROOTS = ("protocols", "edge", "tools", "hil_tests")
#: Data packages: package -> folder in the source tree.
DATA_PACKAGES = {"kommune.firmware": "firmware"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in SOURCE_ROOTS:
    for name in find_namespace_packages(where=root, include=["kommune.*"]):
        if "__pycache__" in name:
            continue
        packages.append(name)
        package_dir[name] = str(Path(root, *name.split(".")))
for name, folder in DATA_PACKAGES.items():
    packages.append(name)
    package_dir[name] = folder

setup(packages=packages, package_dir=package_dir)
