import os

import pytest


@pytest.fixture
def root_or_ci():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("lab test needs root and CI=true: it must run here")
        pytest.skip("LAB TEST SKIPPED: needs root for network namespaces (run as root, or in CI)")
