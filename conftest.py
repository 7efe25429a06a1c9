"""Suite-wide settings: hypothesis profiles (CI is thorough and deterministic), and the
rig's fixtures (rig, board, boards, make_board, air) for every test folder."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

pytest_plugins = ["hil_tests.testing.fixtures", "hil_tests.testing.mosquitto"]
