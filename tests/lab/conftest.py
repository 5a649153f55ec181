import pytest

from nattrav.lab.pytest_support import require_lab


@pytest.fixture
def need_lab():
    require_lab()


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind():
    """After each module: no lab this process started is still registered or has namespaces."""
    yield
    import os

    from nattrav.lab import registry

    mine = [lid for lid, st in registry.all_states().items() if st.get("pid") == os.getpid()]
    leftovers = [n for lid in mine for n in registry.namespaces_of(lid)]
    assert not mine and not leftovers, f"labs left behind: {mine} {leftovers}"
