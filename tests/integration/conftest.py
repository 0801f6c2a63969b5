"""Fixtures: a shared server per test module, a factory for tests that need their own server,
and SDK / raw clients bound to the shared server. Failing tests get the server logs attached."""

import pytest

from nimbus_server import LIVE_SERVERS, ServerFactory


@pytest.fixture
def server_factory():
    factory = ServerFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def server():
    factory = ServerFactory()
    yield factory.start()
    factory.close()


@pytest.fixture(scope="module")
def api(server):
    """The main client: SDK, POST, HmacSHA256 (recipe A of SCF-API.md §5.1)."""
    return server.legacy(method="POST", signature_method="HmacSHA256")


@pytest.fixture(scope="module")
def api_get(server):
    """The SDK's defaults: GET, HmacSHA1."""
    return server.legacy(method="GET", signature_method="HmacSHA1")


@pytest.fixture(scope="module")
def raw(server):
    return server.raw()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for server in list(LIVE_SERVERS):
            report.sections.append(
                (f"nimbus stderr ({server.log_path})", server.log_tail())
            )
