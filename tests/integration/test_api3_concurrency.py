"""Per-function concurrency through the real API 3.0 SDK (issue 3): SCF's reserved concurrency
(`PutReservedConcurrencyConfig`, in MB of instances' memory) caps a function's instances and
overrides the node-wide default; past it a synchronous call gets 432 at once."""

import threading

import pytest

from api3_helpers import Api3, sdk_code
from helpers import toolbox_zip, unique_name


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server)


def test_reserved_concurrency_caps_the_function_and_can_be_removed(sdk):
    name = unique_name("reserved")
    sdk.create(name, toolbox_zip(), MemorySize=128)
    assert sdk.call("GetReservedConcurrencyConfig", FunctionName=name)["ReservedMem"] is None

    sdk.call("PutReservedConcurrencyConfig", FunctionName=name, ReservedConcurrencyMem=128)
    assert sdk.call("GetReservedConcurrencyConfig", FunctionName=name)["ReservedMem"] == 128
    # ListFunctions' model carries it (GetFunction's answer has it too, which its model drops).
    listed = sdk.call("ListFunctions", SearchKey=name)["Functions"]
    assert [f["ReservedConcurrencyMem"] for f in listed] == [128], listed

    # One 128 MB instance: of two calls at once, one runs and the other is refused at once.
    assert sorted(r["InvokeResult"] for r in side_by_side(sdk, name, 2)) == [0, 432]
    refused = [r for r in side_by_side(sdk, name, 2) if r["InvokeResult"] == 432]
    assert len(refused) == 1
    assert "concurrency exceeded reserved quota 128 MB" in refused[0]["ErrMsg"], refused

    # Without a reservation the node default applies again: two calls run side by side.
    sdk.call("DeleteReservedConcurrencyConfig", FunctionName=name)
    assert sdk.call("GetReservedConcurrencyConfig", FunctionName=name)["ReservedMem"] is None
    assert [r["InvokeResult"] for r in side_by_side(sdk, name, 2)] == [0, 0]


def side_by_side(sdk, name, count):
    """`count` calls that each sleep a second, started together; their results."""
    results = []
    calls = [threading.Thread(target=lambda: results.append(sdk.invoke(name, {"sleep": 1})))
             for _ in range(count)]
    for call in calls:
        call.start()
    for call in calls:
        call.join()
    return results


def test_zero_reserved_stops_every_invocation(sdk):
    name = unique_name("closed")
    sdk.create(name, toolbox_zip())
    sdk.call("PutReservedConcurrencyConfig", FunctionName=name, ReservedConcurrencyMem=0)
    assert sdk.invoke(name, {})["InvokeResult"] == 432


def test_reservations_cannot_pass_the_node_budget(sdk):
    name = unique_name("greedy")
    sdk.create(name, toolbox_zip())
    exc = sdk.error("PutReservedConcurrencyConfig", FunctionName=name,
                    ReservedConcurrencyMem=10_000_000)
    assert sdk_code(exc) == "FailedOperation.ReservedExceedTotal"
    assert sdk.call("GetReservedConcurrencyConfig", FunctionName=name)["ReservedMem"] is None
    missing = sdk.error("PutReservedConcurrencyConfig", FunctionName=unique_name("nobody"),
                        ReservedConcurrencyMem=128)
    assert sdk_code(missing) == "ResourceNotFound.Function"
