"""Shared test set-up: hypothesis profiles and the actor safety net.

Profiles: ``dev`` (default, quick) and ``ci`` (more examples; selected by HYPOTHESIS_PROFILE=ci,
which .ci/run sets). Tests that need a minimum number of examples set it themselves.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
