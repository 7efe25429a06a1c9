"""Where the files the tools ship to boards live, in a checkout and in an installed wheel.

The firmware and the protocol files are shipped to boards as files, so the tools need
their paths, not just their import names. They are found through the installed
packages, never through the source tree, so a wheel works as a checkout does:

    firmware/                    -> kommune.firmware, data: node apps, board profiles
                                    (setup.py maps the folder; its files are package data)
    protocols/kommune/protocols  -> kommune.protocols (boards get its .py files)
    hil_tests/kommune/hil/board  -> kommune.hil.board (vmprocess finds it beside itself)

In a checkout (an editable install) these are the source folders themselves. Test data
(the golden vectors) and the repository exist only in a checkout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import kommune.protocols

#: kommune/protocols: its .py files are what a board gets under /lib/kommune/protocols/.
PROTOCOLS_PACKAGE = Path(kommune.protocols.__file__).resolve().parent
#: The directory holding `kommune/protocols`: protocols/ in a checkout, site-packages in
#: an install (a MicroPython VM with it on its path imports `kommune.protocols`).
PROTOCOLS_ROOT = PROTOCOLS_PACKAGE.parents[1]


def _checkout() -> Path | None:
    root = PROTOCOLS_ROOT.parent
    if PROTOCOLS_ROOT.name == "protocols" and (root / "setup.py").is_file():
        return root
    return None


def _firmware_root() -> Path:
    spec = importlib.util.find_spec("kommune.firmware")
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    for entry in locations:
        if Path(entry, "boards").is_dir():
            return Path(entry).resolve()
    raise ImportError(
        "kommune.firmware (the board profiles and node firmware) is not installed; "
        "reinstall smart-kommune-edge (in a checkout: ./run sets .venv up again)"
    )


#: The source checkout, or None when the project runs from an installed wheel.
CHECKOUT = _checkout()
#: The checkout; in an installed wheel the working directory (where `kommune bench`
#: puts bench/results/).
REPO_ROOT = CHECKOUT if CHECKOUT is not None else Path.cwd()
#: protocols/vectors: golden vectors, test data that exists only in a checkout.
VECTORS_DIR = PROTOCOLS_ROOT / "vectors"
#: firmware/ in a checkout, site-packages/kommune/firmware in an install.
FIRMWARE_ROOT = _firmware_root()
