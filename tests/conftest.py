"""Fixtures shared by the test files. ``backend`` runs a test once per fusedopt backend; the compiled one must
exist: a missing or broken extension fails the "cpu" cases instead of skipping them."""
import pytest

from helpers import require_backend

BACKEND_NAMES = ("reference", "cpu")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request) -> str:
    require_backend(request.param)
    return request.param
