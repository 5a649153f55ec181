import pytest

from nattrav.lab.pytest_support import require_lab


@pytest.fixture
def need_lab():
    require_lab()
