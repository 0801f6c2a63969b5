"""Function CRUD on the legacy API: CreateFunction, UpdateFunction, GetFunction, ListFunctions,
DeleteFunction, with their validation rules. Every failed request must leave nothing behind."""

import os
import random
import string

import pytest

from helpers import (
    DATETIME_RE,
    ECHO,
    assert_error,
    assert_ok,
    b64,
    make_zip,
    py_zip,
    unique_name,
)

INVALID = "InvalidParameter"
MISSING = "MissingParameter"
NOT_FOUND = "ResourceNotFound.Function"


def env_pairs(environment):
    """{key: value} from a GetFunction `environment`, whichever casing the server uses."""
    if not environment:
        return {}
    if isinstance(environment, dict):
        lowered = {k.lower(): v for k, v in environment.items()}
        if "variables" in lowered:
            variables = lowered["variables"] or []
            if isinstance(variables, dict):
                return dict(variables)
            pairs = {}
            for item in variables:
                item = {k.lower(): v for k, v in item.items()}
                pairs[item["key"]] = item["value"]
            return pairs
        return dict(environment)
    raise AssertionError(f"unexpected environment shape: {environment!r}")


def env_param(**variables):
    return {"variables": [{"key": k, "value": v} for k, v in variables.items()]}


def total_functions(api):
    return assert_ok(api.list(limit=1))["data"]["total"]


# --------------------------------------------------------------------------------------------
# CreateFunction + GetFunction
# --------------------------------------------------------------------------------------------


def test_create_then_get_returns_the_configuration(api):
    name = unique_name()
    code = py_zip(ECHO)
    resp = assert_ok(
        api.create(
            name,
            code,
            description="first function",
            memorySize=256,
            timeout=10,
            runtime="Python3.9",
            environment=env_param(GREETING="hello", COLOUR="blue"),
        )
    )
    assert resp["codeDesc"] == "Success"

    data = assert_ok(api.get(name))["data"]
    assert data["functionName"] == name
    assert data["handler"] == "index.main_handler"
    assert data["runtime"] == "Python3.9"
    assert data["memorySize"] == 256
    assert data["timeout"] == 10
    assert data["description"] == "first function"
    assert isinstance(data["codeSize"], int) and data["codeSize"] > 0
    assert "version" in data
    assert DATETIME_RE.match(data["addTime"]), data
    assert DATETIME_RE.match(data["modTime"]), data
    assert data["modTime"] >= data["addTime"]
    assert data["triggers"] == []
    assert env_pairs(data["environment"]) == {"GREETING": "hello", "COLOUR": "blue"}
    assert data["namespace"] == "default"
    assert "status" in data
    assert "code" not in data or not data["code"]


def test_create_applies_defaults(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO)))
    data = assert_ok(api.get(name))["data"]
    assert data["memorySize"] == 128
    assert data["timeout"] == 3
    assert data["runtime"].lower().startswith("python3"), data["runtime"]
    assert data["namespace"] == "default"
    assert env_pairs(data["environment"]) == {}


def test_get_with_code_returns_the_handler_source(api):
    name = unique_name()
    source = "# marker-" + name + "\n" + ECHO
    assert_ok(api.create(name, py_zip(source, extra={"util.py": "X = 1\n"})))
    data = assert_ok(api.get(name, code=1))["data"]
    assert data["code"] == source
    assert data["codeResult"] == "success"
    assert data["codeError"] == ""


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("at_prefix", [True, False])
def test_code_is_accepted_with_or_without_at_prefix(server, method, at_prefix):
    client = server.legacy(method=method)
    name = unique_name()
    assert_ok(client.create(name, py_zip(ECHO), at_prefix=at_prefix))
    assert assert_ok(client.get(name, code=1))["data"]["code"] == ECHO


def test_create_in_default_namespace_explicitly(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), namespace="default"))
    assert assert_ok(api.get(name))["data"]["namespace"] == "default"


def test_creating_an_existing_function_is_refused(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), description="original"))
    before = total_functions(api)
    assert_error(api.create(name, py_zip(ECHO), description="second"), 5100, "ResourceInUse")
    assert assert_ok(api.get(name))["data"]["description"] == "original"
    assert total_functions(api) == before


def test_get_unknown_function(api):
    assert_error(api.get(unique_name("missing")), 5000, NOT_FOUND)


def test_get_without_function_name(api):
    assert_error(api.call("GetFunction"), 4000, MISSING)


@pytest.mark.parametrize(
    "name",
    [
        "1abc",  # must start with a letter
        "a",  # at least 2 characters
        "abc-",  # no trailing '-'
        "abc_",  # no trailing '_'
        "a" * 61,  # at most 60 characters
        "has space",
        "bad.name",
        "bad/name",
        "héllo",
        "-abc",
    ],
)
def test_invalid_function_names_are_refused(api, name):
    before = total_functions(api)
    assert_error(api.create(name, py_zip(ECHO)), 4000, INVALID)
    assert total_functions(api) == before


def test_function_name_boundaries_are_accepted(api):
    alphabet = string.ascii_letters + string.digits
    two = "q" + random.choice(alphabet)
    sixty = (unique_name("Long_Name") + "x" * 60)[:60]
    for name in (two, sixty, "A_" + unique_name()[3:]):
        assert_ok(api.create(name, py_zip(ECHO)))
        assert assert_ok(api.get(name))["data"]["functionName"] == name


@pytest.mark.parametrize(
    "params",
    [
        {"memorySize": 100},
        {"memorySize": 2000},
        {"memorySize": 0},
        {"memorySize": "big"},
        {"timeout": 0},
        {"timeout": 301},
        {"timeout": "long"},
        {"handler": "index"},
        {"handler": "index."},
        {"handler": ".main_handler"},
        {"runtime": "Cobol85"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_invalid_configuration_is_refused(api, params):
    name = unique_name()
    before = total_functions(api)
    params = dict(params)
    handler = params.pop("handler", "index.main_handler")
    assert_error(api.create(name, py_zip(ECHO), handler=handler, **params), 4000, INVALID)
    assert_error(api.get(name), 5000, NOT_FOUND)
    assert total_functions(api) == before


@pytest.mark.parametrize("memory, timeout", [(128, 1), (1536, 300), (512, 60)])
def test_configuration_limits_are_accepted(api, memory, timeout):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), memorySize=memory, timeout=timeout))
    data = assert_ok(api.get(name))["data"]
    assert (data["memorySize"], data["timeout"]) == (memory, timeout)


@pytest.mark.parametrize(
    "case",
    ["not-base64", "not-a-zip", "handler-file-missing", "parent-path", "absolute-path"],
)
def test_bad_code_is_refused_and_leaves_nothing(api, case):
    name = unique_name()
    codes = {
        "not-base64": "@!!!this is not base64!!!",
        "not-a-zip": "@" + b64(b"just some bytes, not a zip archive"),
        "handler-file-missing": "@" + b64(make_zip({"main.py": ECHO})),
        "parent-path": "@" + b64(make_zip({"index.py": ECHO, "../evil.py": "x = 1\n"})),
        "absolute-path": "@" + b64(make_zip({"index.py": ECHO, "/tmp/evil.py": "x = 1\n"})),
    }
    before = total_functions(api)
    resp = api.call(
        "CreateFunction", functionName=name, handler="index.main_handler", code=codes[case]
    )
    assert_error(resp, 4000, INVALID)
    assert_error(api.get(name), 5000, NOT_FOUND)
    assert total_functions(api) == before


@pytest.mark.parametrize("missing", ["functionName", "code", "handler"])
def test_create_without_required_parameter(api, missing):
    name = unique_name()
    params = {
        "functionName": name,
        "code": "@" + b64(py_zip(ECHO)),
        "handler": "index.main_handler",
    }
    del params[missing]
    before = total_functions(api)
    assert_error(api.call("CreateFunction", params), 4000, MISSING)
    assert total_functions(api) == before


def test_code_over_five_megabytes_is_refused(api):
    name = unique_name()
    big = make_zip({"index.py": ECHO, "blob.bin": os.urandom(6 * 1024 * 1024)})
    assert len(big) > 5 * 1024 * 1024
    before = total_functions(api)
    assert_error(api.create(name, big), 4000, INVALID)
    assert_error(api.get(name), 5000, NOT_FOUND)
    assert total_functions(api) == before


def test_code_of_three_megabytes_is_accepted(api):
    name = unique_name()
    code = make_zip({"index.py": ECHO, "blob.bin": os.urandom(3 * 1024 * 1024)})
    assert_ok(api.create(name, code))
    assert assert_ok(api.get(name))["data"]["codeSize"] > 0


# --------------------------------------------------------------------------------------------
# UpdateFunction
# --------------------------------------------------------------------------------------------


def test_update_configuration(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), description="before", memorySize=128, timeout=3))
    before = assert_ok(api.get(name))["data"]
    assert_ok(
        api.update(
            name,
            description="after",
            memorySize=512,
            timeout=30,
            environment=env_param(MODE="updated"),
        )
    )
    after = assert_ok(api.get(name))["data"]
    assert after["description"] == "after"
    assert after["memorySize"] == 512
    assert after["timeout"] == 30
    assert env_pairs(after["environment"]) == {"MODE": "updated"}
    assert after["addTime"] == before["addTime"]
    assert DATETIME_RE.match(after["modTime"])
    assert after["modTime"] >= before["modTime"]
    assert after["handler"] == before["handler"]


def test_update_code_and_handler(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO)))
    new_source = "def run(event, context):\n    return 'v2'\n"
    assert_ok(api.update(name, code_zip=py_zip(new_source, filename="app.py"), handler="app.run"))
    data = assert_ok(api.get(name, code=1))["data"]
    assert data["handler"] == "app.run"
    assert data["code"] == new_source


def test_update_unknown_function(api):
    assert_error(api.update(unique_name("missing"), description="x"), 5000, NOT_FOUND)


def test_update_without_function_name(api):
    assert_error(api.call("UpdateFunction", description="x"), 4000, MISSING)


@pytest.mark.parametrize(
    "params",
    [
        {"memorySize": 2000},
        {"timeout": 0},
        {"handler": "nodot"},
        {"runtime": "Cobol85"},
        {"code": "@" + b64(b"not a zip")},
        {"code": "@" + b64(make_zip({"other.py": ECHO}))},
    ],
    ids=["memory", "timeout", "handler", "runtime", "code-not-zip", "code-without-handler"],
)
def test_invalid_update_changes_nothing(api, params):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), description="keep", memorySize=256, timeout=5))
    before = assert_ok(api.get(name, code=1))["data"]
    assert_error(api.call("UpdateFunction", params, functionName=name), 4000, INVALID)
    after = assert_ok(api.get(name, code=1))["data"]
    for key in ("handler", "runtime", "memorySize", "timeout", "description", "code", "modTime"):
        assert after[key] == before[key], key


# --------------------------------------------------------------------------------------------
# ListFunctions
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(api):
    """Three functions sharing a unique prefix, created out of name order."""
    prefix = unique_name("lst")
    names = [f"{prefix}-b", f"{prefix}-c", f"{prefix}-a"]
    for i, name in enumerate(names):
        assert_ok(api.create(name, py_zip(ECHO), description=f"listed {i}"))
    return prefix, sorted(names)


def test_list_entries_have_the_documented_fields(api, listed):
    prefix, names = listed
    data = assert_ok(api.list(searchKey=prefix))["data"]
    assert data["total"] == 3
    assert sorted(f["functionName"] for f in data["functions"]) == names
    for entry in data["functions"]:
        assert DATETIME_RE.match(entry["addTime"]), entry
        assert DATETIME_RE.match(entry["modTime"]), entry
        assert entry["runtime"].lower().startswith("python3"), entry
        assert entry["description"].startswith("listed "), entry
        assert entry["namespace"] == "default", entry


def test_list_search_key_matches_a_substring(api, listed):
    prefix, names = listed
    middle = prefix[4:12]  # inside the random part
    data = assert_ok(api.list(searchKey=middle))["data"]
    assert sorted(f["functionName"] for f in data["functions"]) == names
    assert data["total"] == 3
    only_c = assert_ok(api.list(searchKey=f"{prefix}-c"))["data"]
    assert [f["functionName"] for f in only_c["functions"]] == [f"{prefix}-c"]
    assert only_c["total"] == 1
    none = assert_ok(api.list(searchKey=unique_name("nothing")))["data"]
    assert (none["functions"], none["total"]) == ([], 0)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_orders_by_function_name(api, listed, order):
    prefix, names = listed
    data = assert_ok(api.list(searchKey=prefix, orderby="functionname", order=order))["data"]
    got = [f["functionName"] for f in data["functions"]]
    assert got == (names if order == "asc" else names[::-1])


@pytest.mark.parametrize("orderby, field", [("addtime", "addTime"), ("modtime", "modTime")])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_orders_by_time(api, listed, orderby, field, order):
    prefix, _ = listed
    data = assert_ok(api.list(searchKey=prefix, orderby=orderby, order=order))["data"]
    times = [f[field] for f in data["functions"]]
    assert len(times) == 3
    assert times == sorted(times, reverse=(order == "desc"))


def test_list_pages_with_offset_and_limit(api, listed):
    prefix, names = listed
    common = {"searchKey": prefix, "orderby": "functionname", "order": "asc"}
    first = assert_ok(api.list(offset=0, limit=2, **common))["data"]
    second = assert_ok(api.list(offset=2, limit=2, **common))["data"]
    beyond = assert_ok(api.list(offset=5, limit=2, **common))["data"]
    assert [f["functionName"] for f in first["functions"]] == names[:2]
    assert [f["functionName"] for f in second["functions"]] == names[2:]
    assert beyond["functions"] == []
    assert first["total"] == second["total"] == beyond["total"] == 3


def test_list_default_limit_is_twenty(api):
    prefix = unique_name("many")
    for i in range(21):
        assert_ok(api.create(f"{prefix}-{i:02d}", py_zip(ECHO)))
    data = assert_ok(api.list(searchKey=prefix))["data"]
    assert data["total"] == 21
    assert len(data["functions"]) == 20


@pytest.mark.parametrize(
    "params",
    [
        {"order": "sideways"},
        {"orderby": "size"},
        {"offset": -1},
        {"offset": "first"},
        {"limit": -5},
        {"limit": "many"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_list_invalid_parameters(api, params):
    assert_error(api.list(**params), 4000, INVALID)


# --------------------------------------------------------------------------------------------
# DeleteFunction
# --------------------------------------------------------------------------------------------


def test_delete_function(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO)))
    before = total_functions(api)
    assert_ok(api.delete(name))
    assert_error(api.get(name), 5000, NOT_FOUND)
    assert total_functions(api) == before - 1
    listed = assert_ok(api.list(searchKey=name))["data"]
    assert listed["functions"] == [] and listed["total"] == 0
    assert_error(api.invoke(name, {}), 5000, NOT_FOUND)
    assert_error(api.delete(name), 5000, NOT_FOUND)


def test_deleted_name_can_be_reused(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip(ECHO), description="one"))
    assert_ok(api.delete(name))
    assert_ok(api.create(name, py_zip(ECHO), description="two"))
    assert assert_ok(api.get(name))["data"]["description"] == "two"


def test_delete_without_function_name(api):
    assert_error(api.call("DeleteFunction"), 4000, MISSING)
