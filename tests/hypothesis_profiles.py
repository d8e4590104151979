"""Hypothesis profiles for the fitter's property tests.

``default`` (what CI runs: the whole property file in well under two minutes
on two slow cores) and ``thorough`` (``HYPOTHESIS_PROFILE=thorough``: ten times
the examples, for a change to the fitter). The profiles are applied with an
explicit decorator rather than ``settings.load_profile`` so that importing this
module does not change the settings of anyone else's Hypothesis tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
PROFILES = {
    "default": settings(max_examples=12, **_COMMON),
    "thorough": settings(max_examples=150, **_COMMON),
}
for _name, _profile in PROFILES.items():
    settings.register_profile(f"mpt-fit-{_name}", _profile)

_SELECTED = os.environ.get("HYPOTHESIS_PROFILE", "default")
FIT_SETTINGS = PROFILES.get(_SELECTED, PROFILES["default"])
