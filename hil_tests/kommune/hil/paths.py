"""Where the project's parts live in the source tree.

The firmware and the protocol files are shipped to boards as files, so the
tools need their paths, not just their import names.
"""

from __future__ import annotations

from pathlib import Path

import kommune.protocols

#: protocols/kommune/protocols -> protocols/ (the source root holding `kommune/`)
PROTOCOLS_ROOT = Path(kommune.protocols.__file__).resolve().parents[2]
REPO_ROOT = PROTOCOLS_ROOT.parent
PROTOCOLS_PACKAGE = PROTOCOLS_ROOT / "kommune" / "protocols"
VECTORS_DIR = PROTOCOLS_ROOT / "vectors"
FIRMWARE_ROOT = REPO_ROOT / "firmware"
