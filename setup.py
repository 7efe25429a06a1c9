"""Packaging glue: four source roots, one `kommune` namespace.

Each top-level folder (protocols/, edge/, tools/, hil_tests/) shows one part of
the architecture and holds that part's package under `kommune/`, so the
install exposes only `kommune.*` and no generic top-level names.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

SOURCE_ROOTS = ("protocols", "edge", "tools", "hil_tests")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in SOURCE_ROOTS:
    for name in find_namespace_packages(where=root, include=["kommune.*"]):
        if "__pycache__" in name:
            continue
        packages.append(name)
        package_dir[name] = str(Path(root, *name.split(".")))

setup(packages=packages, package_dir=package_dir)
