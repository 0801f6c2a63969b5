"""The execution engine's behaviour seen through the public API (issue 3): Node.js handler
styles and log format, a crashing instance, the concurrency limit, keep-alive expiry and LRU
eviction under the node's memory budget."""

import json
import re
import threading
import time

from api3_helpers import Api3, b64, node_zip
from helpers import py_zip, toolbox_zip, unique_name

NODE_STYLES = {
    "callback": "exports.main_handler = (event, context, callback) => { callback(null, {style: 'callback', n: event.n}); };",
    "async": "exports.main_handler = async (event) => ({style: 'async', n: event.n});",
    "promise": "exports.main_handler = (event) => Promise.resolve({style: 'promise', n: event.n});",
    "done": "exports.main_handler = (event, context) => { context.done(null, {style: 'done', n: event.n}); };",
}

CRASH = """
import os
def main_handler(event, context):
    if event.get("crash"):
        os._exit(3)
    return "alive"
"""


def create(sdk, name, code_zip, runtime="Python3.9", **params):
    sdk.call("CreateFunction", FunctionName=name, Code={"ZipFile": b64(code_zip)},
             Handler="index.main_handler", Runtime=runtime, **params)


def count_of(result):
    assert result["InvokeResult"] == 0, result
    return json.loads(result["RetMsg"])["count"]


def test_node_handler_styles_and_console_format(server):
    sdk = Api3.for_server(server)
    for style, source in NODE_STYLES.items():
        name = unique_name(f"node-{style}")
        create(sdk, name, node_zip(source), runtime="Nodejs18.15")
        result = sdk.invoke(name, {"n": 5})
        assert json.loads(result["RetMsg"]) == {"style": style, "n": 5}, result

    name = unique_name("node-log")
    create(sdk, name, node_zip("exports.main_handler = async (event) => { console.log(event); return 1; };"),
           runtime="Nodejs18.15")
    result = sdk.invoke(name, {"test": "value"}, LogType="Tail")
    line = rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z\t{result['FunctionRequestId']}\t{{ test: 'value' }}$"
    assert any(re.match(line, l) for l in result["Log"].splitlines()), result["Log"]


def test_a_crashed_instance_is_reported_and_replaced(server):
    sdk = Api3.for_server(server)
    name = unique_name("crash")
    create(sdk, name, py_zip(CRASH))
    assert json.loads(sdk.invoke(name, {})["RetMsg"]) == "alive"
    crashed = sdk.invoke(name, {"crash": True})
    assert crashed["InvokeResult"] == 439, crashed
    assert json.loads(crashed["ErrMsg"])["statusCode"] == 439
    assert json.loads(sdk.invoke(name, {})["RetMsg"]) == "alive"


def test_concurrency_limit_answers_432_at_once(server_factory, tmp_path):
    config = tmp_path / "nimbus.toml"
    config.write_text("[engine]\nconcurrency = 1\n")
    sdk = Api3.for_server(server_factory.start(extra_args=["--config", str(config)]))
    name = unique_name("limit")
    create(sdk, name, toolbox_zip(), Timeout=10)
    sdk.invoke(name, {})  # warm
    slow = threading.Thread(target=lambda: sdk.invoke(name, {"sleep": 2}))
    slow.start()
    time.sleep(0.5)
    started = time.monotonic()
    refused = sdk.invoke(name, {})
    took = time.monotonic() - started
    slow.join()
    assert refused["InvokeResult"] == 432, refused
    assert took < 1.5, f"the refused call waited {took:.2f} s"


WHOAMI = """
import os

def main_handler(event, context):
    return os.getuid()
"""


def test_functions_run_as_uids_of_the_configured_range(server_factory, tmp_path):
    # Servers sharing a host give each a range of its own.
    config = tmp_path / "nimbus.toml"
    config.write_text("[engine]\nfirst_uid = 2100000000\nuid_count = 1000\n")
    sdk = Api3.for_server(server_factory.start(extra_args=["--config", str(config)]))
    name = unique_name("whoami")
    create(sdk, name, py_zip(WHOAMI))
    uid = json.loads(sdk.invoke(name, {})["RetMsg"])
    assert 2_100_000_000 <= uid < 2_100_001_000, uid


def test_idle_instances_expire_after_the_keep_alive(server_factory, tmp_path):
    config = tmp_path / "nimbus.toml"
    config.write_text("[engine]\nkeep_alive_secs = 1\n")
    sdk = Api3.for_server(server_factory.start(extra_args=["--config", str(config)]))
    name = unique_name("idle")
    create(sdk, name, toolbox_zip())
    assert count_of(sdk.invoke(name, {"return": "count"})) == 1
    assert count_of(sdk.invoke(name, {"return": "count"})) == 2  # warm
    time.sleep(3)
    assert count_of(sdk.invoke(name, {"return": "count"})) == 1  # a fresh instance


def test_the_memory_budget_evicts_the_least_recently_used_idle_instance(server_factory, tmp_path):
    config = tmp_path / "nimbus.toml"
    config.write_text("[engine]\nmemory_budget_mb = 256\n")
    sdk = Api3.for_server(server_factory.start(extra_args=["--config", str(config)]))
    a, b, c = (unique_name(x) for x in "abc")
    for name in (a, b, c):
        create(sdk, name, toolbox_zip(), MemorySize=128)
    assert count_of(sdk.invoke(a, {"return": "count"})) == 1
    assert count_of(sdk.invoke(b, {"return": "count"})) == 1
    # The budget holds two 128 MB instances: starting c stops a, the least recently used.
    assert count_of(sdk.invoke(c, {"return": "count"})) == 1
    assert count_of(sdk.invoke(c, {"return": "count"})) == 2
    assert count_of(sdk.invoke(a, {"return": "count"})) == 1  # a started again (evicting b)
    assert count_of(sdk.invoke(c, {"return": "count"})) == 3  # c stayed warm


CONNECT = """
import socket
def main_handler(event, context):
    try:
        socket.create_connection(("127.0.0.1", event["port"]), timeout=3).close()
        return "connected"
    except OSError as error:
        return "refused: %s" % error
"""


def test_public_net_config_turns_the_host_network_on_and_off(server):
    sdk = Api3.for_server(server)
    name = unique_name("net")
    create(sdk, name, py_zip(CONNECT), Timeout=10)
    assert sdk.get(name)["PublicNetConfig"]["PublicNetStatus"] == "DISABLE"
    event = {"port": server.port}
    assert json.loads(sdk.invoke(name, event)["RetMsg"]).startswith("refused")

    sdk.call("UpdateFunctionConfiguration", FunctionName=name,
             PublicNetConfig={"PublicNetStatus": "ENABLE"})
    assert sdk.get(name)["PublicNetConfig"]["PublicNetStatus"] == "ENABLE"
    assert json.loads(sdk.invoke(name, event)["RetMsg"]) == "connected"

    sdk.call("UpdateFunctionConfiguration", FunctionName=name,
             PublicNetConfig={"PublicNetStatus": "DISABLE"})
    assert json.loads(sdk.invoke(name, event)["RetMsg"]).startswith("refused")


def test_init_timeout_is_stored_and_bounded(server):
    from api3_helpers import sdk_code

    sdk = Api3.for_server(server)
    name = unique_name("init")
    create(sdk, name, toolbox_zip(), InitTimeout=20)
    assert sdk.get(name)["InitTimeout"] == 20
    sdk.call("UpdateFunctionConfiguration", FunctionName=name, InitTimeout=30)
    assert sdk.get(name)["InitTimeout"] == 30
    error = sdk.error("UpdateFunctionConfiguration", FunctionName=name, InitTimeout=301)
    assert sdk_code(error) == "InvalidParameterValue.InitTimeout"
    assert sdk.get(name)["InitTimeout"] == 30
