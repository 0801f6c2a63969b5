#!/usr/bin/env node
// Drives a Nimbus server's API 3.0 with the real tencentcloud-sdk-nodejs-scf client.
//
//   node run.js <port> <secretId> <secretKey> <scenario>   (JSON input on stdin)
//
// Prints one JSON line on stdout (the scenario's findings); exits 1 with details on stderr if a
// step that must succeed fails. tests/integration/test_api3_node.py asserts on the output.
//
// Scenarios:
//   call       {action, params, profile}  one call: {"ok": true, "response"} or
//                                          {"ok": false, "code", "message", "requestId"}
//   lifecycle  {name, zip, runtime, handler, event, profile}  create, wait Active, update,
//              invoke (sync, InvokeFunction, async), async status and list, logs, list, delete
"use strict";

const { Client } = require("tencentcloud-sdk-nodejs-scf").scf.v20180416;

const [port, secretId, secretKey, scenario] = process.argv.slice(2);
if (!port || !secretId || !secretKey || !scenario) {
  process.stderr.write("usage: node run.js <port> <secretId> <secretKey> <scenario>\n");
  process.exit(2);
}

const POLL_TIMEOUT_MS = 30000;
const POLL_INTERVAL_MS = 100;

function makeClient(profile = {}) {
  return new Client({
    credential: { secretId, secretKey },
    region: "ap-guangzhou",
    profile: {
      signMethod: profile.signMethod || "TC3-HMAC-SHA256",
      httpProfile: {
        protocol: "http://",
        endpoint: `127.0.0.1:${port}`,
        reqMethod: profile.reqMethod || "POST",
        reqTimeout: 120,
      },
    },
  });
}

async function callAction(client, action, params) {
  // The generated method when the SDK has one, the generic request otherwise (unknown actions).
  if (typeof client[action] === "function") {
    return client[action](params);
  }
  return client.request(action, params);
}

function errorInfo(err) {
  return {
    ok: false,
    code: err.code === undefined ? null : err.code,
    message: err.message,
    requestId: err.requestId === undefined ? null : err.requestId,
    httpCode: err.httpCode === undefined ? null : err.httpCode,
    isError: err instanceof Error,
  };
}

async function tryCall(client, action, params) {
  try {
    return { ok: true, response: await callAction(client, action, params) };
  } catch (err) {
    return errorInfo(err);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pollUntil(fetch, done, timeoutMs = POLL_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await fetch();
    if (done(result) || Date.now() >= deadline) {
      return result;
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    const info = errorInfo(err);
    process.stderr.write(`step ${name} failed: ${JSON.stringify(info)}\n${err.stack || err}\n`);
    process.exit(1);
  }
}

async function waitActive(client, name) {
  const statuses = [];
  const last = await pollUntil(
    async () => {
      const fn = await client.GetFunction({ FunctionName: name });
      if (statuses[statuses.length - 1] !== fn.Status) {
        statuses.push(fn.Status);
      }
      return fn;
    },
    (fn) => fn.Status !== "Creating" && fn.Status !== "Updating"
  );
  return { last, statuses };
}

async function lifecycle(input) {
  const client = makeClient(input.profile);
  const name = input.name;
  const out = { name };

  out.create = await step("CreateFunction", () =>
    client.CreateFunction({
      FunctionName: name,
      Code: { ZipFile: input.zip },
      Handler: input.handler || "index.main_handler",
      Runtime: input.runtime || "Python3.9",
      MemorySize: 256,
      Timeout: 10,
      Description: "created by the node sdk",
      Environment: { Variables: [{ Key: "GREETING", Value: "hello-from-node" }] },
    })
  );
  const created = await step("GetFunction (wait Active)", () => waitActive(client, name));
  out.statuses = created.statuses;
  out.getAfterCreate = created.last;

  out.updateConfig = await step("UpdateFunctionConfiguration", () =>
    client.UpdateFunctionConfiguration({
      FunctionName: name,
      MemorySize: 512,
      Description: "updated by the node sdk",
    })
  );
  out.getAfterUpdate = (await step("GetFunction (after update)", () => waitActive(client, name))).last;

  out.invoke = await step("Invoke", () =>
    client.Invoke({
      FunctionName: name,
      InvocationType: "RequestResponse",
      ClientContext: JSON.stringify(input.event),
      LogType: "Tail",
    })
  );
  out.invokeFunction = await step("InvokeFunction", () =>
    client.InvokeFunction({ FunctionName: name, Event: JSON.stringify({ via: "InvokeFunction" }) })
  );

  const started = Date.now();
  out.invokeAsync = await step("Invoke (Event)", () =>
    client.Invoke({
      FunctionName: name,
      InvocationType: "Event",
      ClientContext: JSON.stringify({ via: "async", sleep: 2 }),
    })
  );
  out.invokeAsyncMs = Date.now() - started;
  const asyncId = out.invokeAsync.Result.FunctionRequestId;
  out.asyncStatus = await step("GetAsyncEventStatus", () =>
    pollUntil(
      () => client.GetAsyncEventStatus({ InvokeRequestId: asyncId }),
      (r) => r.Result && r.Result.Status !== "RUNNING"
    )
  );
  out.listAsyncEvents = await step("ListAsyncEvents", () =>
    client.ListAsyncEvents({ FunctionName: name, InvokeRequestId: asyncId })
  );

  const syncId = out.invoke.Result.FunctionRequestId;
  out.logs = await step("GetFunctionLogs", () =>
    pollUntil(
      () => client.GetFunctionLogs({ FunctionName: name, FunctionRequestId: syncId }),
      (r) => r.TotalCount >= 1
    )
  );
  out.asyncLogs = await step("GetFunctionLogs (async)", () =>
    pollUntil(
      () => client.GetFunctionLogs({ FunctionName: name, FunctionRequestId: asyncId }),
      (r) => r.TotalCount >= 1 && r.Data[0].InvokeFinished === 1
    )
  );
  out.list = await step("ListFunctions", () => client.ListFunctions({ SearchKey: name }));

  out.getMissing = await tryCall(client, "GetFunction", { FunctionName: `${name}-missing` });
  out.delete = await step("DeleteFunction", () => client.DeleteFunction({ FunctionName: name }));
  out.getAfterDelete = await tryCall(client, "GetFunction", { FunctionName: name });
  return out;
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8").trim();
  const input = text ? JSON.parse(text) : {};

  let out;
  switch (scenario) {
    case "call":
      out = await tryCall(makeClient(input.profile), input.action, input.params || {});
      break;
    case "lifecycle":
      out = await lifecycle(input);
      break;
    default:
      process.stderr.write(`unknown scenario ${scenario}\n`);
      process.exit(2);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
