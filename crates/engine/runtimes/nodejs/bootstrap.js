'use strict';
/*
 * Nimbus Node.js runtime shim.
 *
 * Hosts one SCF Node.js handler inside one instance process and talks to the
 * Nimbus engine over the control socket it inherits as fd 0.
 *
 * Protocol (every frame is a 4-byte big-endian length followed by JSON):
 *
 *     shim -> engine  {"ready": true}                       once, at start
 *     engine -> shim  {"request_id", "event", "context",    one per invocation
 *                      "time_limit_ms"}
 *     shim -> engine  {"ok": true, "ret_msg": "<json>"}     or
 *                     {"ok": false, "status_code": N, "err_msg": "<json>"}
 *
 * Before each reply the shim lets stdout and stderr drain and writes an end
 * marker (a per-instance secret token plus the request id) to stdout, so the
 * engine can cut the shared log pipe exactly at the end of the invocation.
 *
 * Set-up order matters: the control socket, stdout and stderr exist and
 * `process.stdin` is replaced by an empty stream before any user code runs,
 * so user code never reads the control socket through `process.stdin`.
 *
 * The handler module is loaded before the shim says it is ready (so loading
 * is bounded by the init timeout); a load failure is reported as the first
 * invocation's result and loading is retried by the next invocation, never in
 * a loop.
 *
 * A spare (started with _NIMBUS_SPARE=1 before any function claimed it) first
 * sends {"spare": true} and waits for {"assign": {"env"}}: by then the engine
 * has mounted the function's code and lowered the limits; the shim takes the
 * function's environment (NODE_PATH included) and code directory, then loads
 * the handler and goes on as above.
 *
 * How an invocation ends, first one wins:
 *   - the handler returns a promise: when it settles (the event loop is not
 *     waited for);
 *   - `callback(err, result)`: once the event loop is empty, or at once if
 *     `context.callbackWaitsForEmptyEventLoop` is false;
 *   - `context.done(err, result)`, `context.succeed(result)`,
 *     `context.fail(err)`: at once;
 *   - none of these: `null` once the event loop is empty (a plain return value
 *     of a non-async handler is ignored, as SCF does);
 *   - the handler throws, or an exception or a promise rejection goes
 *     unhandled while it runs: status 430 at once.
 *
 * "The event loop is empty" is approximated by polling: every few
 * milliseconds the shim compares `process.getActiveResourcesInfo()` (the
 * handles, requests, timers and immediates that keep the loop alive; on Node
 * before 16.14, `_getActiveHandles()` and `_getActiveRequests()`) with what it
 * held before user code was loaded (its own socket and stdio). Unreferenced
 * handles do not count, exactly as they would not keep Node running. A
 * handle the module opened when it was loaded (a database pool) counts too,
 * so such a handler must set callbackWaitsForEmptyEventLoop to false or run
 * into its timeout, as on SCF.
 *
 * Stack traces (in the error reply and the log) end at the user's outermost
 * frame: the shim's frames, the Node internals that called the shim, and the
 * module loader frames between the shim and the user's module are cut, as SCF
 * shows no frame of its runtime.
 *
 * Out of memory: a `RangeError: Array buffer allocation failed` (what Node
 * throws when RLIMIT_DATA refuses an allocation) is reported as status 434;
 * the engine then recycles the instance.
 *
 * The shim exits as soon as the control socket reaches end of file: the
 * engine is gone or wants it gone.
 *
 * Limitations: handlers are CommonJS modules (`require`), not ES modules
 * (`.mjs`, `"type": "module"`). Only console.log, info, debug, warn and error
 * get SCF's line prefix; console.dir, trace, table and direct writes to the
 * streams are logged as they are. fd 0 still is the control socket: user code
 * that reads it directly (`fs.readSync(0)`, `/dev/stdin`) steals frames and
 * breaks the instance (it then times out and is replaced).
 */

const fs = require('fs');
const net = require('net');
const path = require('path');
const stream = require('stream');
const util = require('util');

const HEADER_BYTES = 4;
const DRAIN_POLL_MS = 5;
const EXCEPTION_MESSAGE = 'user code exception caught';
/** A frame of a V8 stack trace (`    at fn (file:line:col)`). */
const FRAME_LINE = /^\s+at /;

// ---- Set-up, before any user code --------------------------------------------

const token = process.env._NIMBUS_LOG_TOKEN || '';
delete process.env._NIMBUS_LOG_TOKEN;
/** Waiting for a function (see the header); cleared once one is assigned. */
let spare = process.env._NIMBUS_SPARE === '1';
delete process.env._NIMBUS_SPARE;
let codeRoot = process.env.USER_CODE_ROOT || process.cwd();
let handlerSpec = process.env._HANDLER || '';
/** The host's version, for a function whose runtime the engine did not name (`Nodejs`). */
const hostRuntimeName = 'Nodejs' + process.versions.node.split('.').slice(0, 2).join('.');
function refineRuntimeName() {
  if ((process.env.SCF_RUNTIME || 'Nodejs') === 'Nodejs') {
    process.env.SCF_RUNTIME = hostRuntimeName;
  }
}
refineRuntimeName();

const control = new net.Socket({ fd: 0, readable: true, writable: true });
const stdout = process.stdout;
const stderr = process.stderr;
const writeOut = stdout.write.bind(stdout);
const writeErr = stderr.write.bind(stderr);
hideStdin();

/** Request id shown in console lines: `undefined` until the first invocation. */
let consoleRequestId;
installConsole();

const activeResources =
  typeof process.getActiveResourcesInfo === 'function'
    ? () => process.getActiveResourcesInfo()
    : () =>
        process
          ._getActiveHandles()
          .concat(process._getActiveRequests())
          .map((resource) => (resource && resource.constructor ? resource.constructor.name : '?'));
const ownResources = countByType(activeResources());

/** The invocation running now, if any. */
let current = null;

process.on('uncaughtException', (err) => unhandled(err));
process.on('unhandledRejection', (reason) => unhandled(reason));

function hideStdin() {
  let empty = null;
  Object.defineProperty(process, 'stdin', {
    configurable: true,
    enumerable: true,
    get() {
      if (empty === null) {
        empty = new stream.Readable({
          read() {
            this.push(null);
          },
        });
      }
      return empty;
    },
  });
}

function consoleLine(args) {
  return `${new Date().toISOString()}\t${consoleRequestId}\t${util.format(...args)}\n`;
}

function installConsole() {
  const toStdout = (...args) => {
    writeOut(consoleLine(args));
  };
  const toStderr = (...args) => {
    writeErr(consoleLine(args));
  };
  console.log = toStdout;
  console.info = toStdout;
  console.debug = toStdout;
  console.warn = toStderr;
  console.error = toStderr;
}

function countByType(names) {
  const counts = new Map();
  for (const name of names) {
    counts.set(name, (counts.get(name) || 0) + 1);
  }
  return counts;
}

/** Resources keeping the event loop alive beyond those the shim itself holds. */
function foreignResources() {
  let foreign = 0;
  for (const [name, count] of countByType(activeResources())) {
    foreign += Math.max(0, count - (ownResources.get(name) || 0));
  }
  return foreign;
}

// ---- Loading the handler -------------------------------------------------------

class LoadError extends Error {
  constructor(statusCode, message, stackTrace) {
    super(message);
    this.statusCode = statusCode;
    this.stackTrace = stackTrace;
  }
}

function load() {
  const dot = handlerSpec.lastIndexOf('.');
  if (dot <= 0 || dot === handlerSpec.length - 1) {
    throw new LoadError(437, `invalid handler '${handlerSpec}': expected <file>.<function>`);
  }
  const file = handlerSpec.slice(0, dot);
  const name = handlerSpec.slice(dot + 1);
  let resolved;
  try {
    resolved = require.resolve(path.resolve(codeRoot, file));
  } catch (err) {
    if (err && err.code === 'MODULE_NOT_FOUND') {
      throw new LoadError(
        437,
        `Handler not found: Cannot find module '${file}' (file ${file}.js is missing)`,
      );
    }
    throw loadFailure(err);
  }
  let exported;
  try {
    exported = require(resolved);
  } catch (err) {
    throw loadFailure(err);
  }
  const handler = exported === null || exported === undefined ? undefined : exported[name];
  if (handler === undefined) {
    throw new LoadError(437, `Handler not found: module '${file}' has no export '${name}'`);
  }
  if (typeof handler !== 'function') {
    throw new LoadError(437, `Handler not found: '${file}.${name}' is not a function`);
  }
  return handler;
}

function loadFailure(err) {
  const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return new LoadError(isOutOfMemory(err) ? 434 : 443, message, stackOf(err));
}

let handler = null;
/** Why loading failed at start; reported by the first invocation. */
let startFailure = null;

function loadAtStart() {
  try {
    handler = load();
  } catch (err) {
    startFailure = err;
  }
}

if (!spare) {
  loadAtStart();
}

/** A spare becomes an instance of the function in `message.assign` (see the header). */
function takeAssignment(message) {
  const assignment = message.assign;
  for (const key of Object.keys(process.env)) {
    delete process.env[key];
  }
  Object.assign(process.env, assignment.env);
  delete process.env._NIMBUS_LOG_TOKEN;
  codeRoot = process.env.USER_CODE_ROOT || codeRoot;
  handlerSpec = process.env._HANDLER || '';
  refineRuntimeName();
  process.chdir(codeRoot); // the directory the code was mounted over
  require('module')._initPaths(); // the function's NODE_PATH
  spare = false;
  loadAtStart();
  sendFrame({ ready: true });
}

function loadedHandler() {
  if (handler !== null) {
    return handler;
  }
  if (startFailure !== null) {
    const failure = startFailure;
    startFailure = null;
    throw failure;
  }
  handler = load();
  return handler;
}

// ---- Replies ---------------------------------------------------------------------

function stackOf(err) {
  if (err instanceof Error || (err && typeof err.stack === 'string')) {
    return withoutShimFrames(String(err.stack));
  }
  return typeof err === 'string' ? err : util.inspect(err);
}

/**
 * `stack` cut at the shim's first frame: that frame, and every frame after it (Node internals
 * that called the shim), go; so do the `node:` frames right before it, the loader or plumbing
 * between the shim and the user's code. A stack without a shim frame is returned as it is.
 */
function withoutShimFrames(stack) {
  const lines = stack.split('\n');
  const shimFrame = (line) => FRAME_LINE.test(line) && line.includes(`${__filename}:`);
  let end = lines.findIndex(shimFrame);
  if (end < 0) {
    return stack;
  }
  while (end > 0 && FRAME_LINE.test(lines[end - 1]) && lines[end - 1].includes('(node:')) {
    end -= 1;
  }
  return lines.slice(0, end).join('\n');
}

function isOutOfMemory(err) {
  if (err === null || typeof err !== 'object') {
    return false;
  }
  const refused = err.name === 'RangeError' && err.message === 'Array buffer allocation failed';
  return refused || err.code === 'ERR_MEMORY_ALLOCATION_FAILED';
}

function errorReply(requestId, statusCode, message, stackTrace) {
  const body = { errorCode: -1, errorMessage: message, requestId };
  if (stackTrace !== undefined) {
    body.stackTrace = stackTrace;
  }
  body.statusCode = statusCode;
  return { ok: false, status_code: statusCode, err_msg: JSON.stringify(body) };
}

function successReply(invocation, value) {
  let text;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (err) {
    const message = `return value is not JSON serializable: ${err.message}`;
    writeErr(consoleLine([stackOf(err)]));
    return errorReply(invocation.requestId, 430, message, stackOf(err));
  }
  return { ok: true, ret_msg: text === undefined ? 'null' : text };
}

function failureReply(invocation, err) {
  const stackTrace = stackOf(err);
  writeErr(consoleLine([stackTrace]));
  const statusCode = isOutOfMemory(err) ? 434 : 430;
  return errorReply(invocation.requestId, statusCode, EXCEPTION_MESSAGE, stackTrace);
}

// ---- Invocations -----------------------------------------------------------------

function invoke(frame) {
  const invocation = {
    requestId: String(frame.request_id || ''),
    deadline: Date.now() + Number(frame.time_limit_ms || 0),
    waitsForEmptyLoop: true,
    outcome: null,
    draining: false,
    answered: false,
  };
  current = invocation;
  consoleRequestId = invocation.requestId;

  let fn;
  try {
    fn = loadedHandler();
  } catch (err) {
    if (!(err instanceof LoadError)) {
      throw err;
    }
    writeErr(consoleLine([err.stackTrace || err.message]));
    invocation.outcome = errorReply(
      invocation.requestId,
      err.statusCode,
      err.message,
      err.stackTrace,
    );
    answer(invocation);
    return;
  }

  let returned;
  try {
    const event = JSON.parse(frame.event);
    const context = makeContext(invocation, frame.context || {});
    const callback = (err, value) => {
      const mode = invocation.waitsForEmptyLoop ? 'drain' : 'now';
      settle(invocation, resultReply(invocation, err, value), mode);
    };
    returned = fn(event, context, callback);
  } catch (err) {
    fail(invocation, err);
    return;
  }
  if (returned !== null && typeof returned === 'object' && typeof returned.then === 'function') {
    returned.then(
      (value) => settle(invocation, successReply(invocation, value), 'now'),
      (err) => settle(invocation, failureReply(invocation, err), 'now'),
    );
  } else {
    // Callback style, or no result at all: `null` once the loop is empty.
    waitForEmptyLoop(invocation);
  }
}

function resultReply(invocation, err, value) {
  if (err !== null && err !== undefined) {
    return failureReply(invocation, err);
  }
  return successReply(invocation, value);
}

function makeContext(invocation, fields) {
  const remaining = () => Math.max(0, invocation.deadline - Date.now());
  const context = Object.assign({ getRemainingTimeInMillis: remaining }, fields);
  const done = (err, value) => settle(invocation, resultReply(invocation, err, value), 'now');
  Object.defineProperties(context, {
    callbackWaitsForEmptyEventLoop: {
      get: () => invocation.waitsForEmptyLoop,
      set: (value) => {
        invocation.waitsForEmptyLoop = Boolean(value);
      },
    },
    done: { value: done },
    succeed: { value: (value) => done(null, value) },
    fail: { value: (err) => settle(invocation, failureReply(invocation, err), 'now') },
  });
  return context;
}

/** Records the invocation's result, if it has none yet, and answers now or once the loop drains. */
function settle(invocation, reply, mode) {
  if (invocation.answered || invocation.outcome !== null) {
    return;
  }
  invocation.outcome = reply;
  if (mode === 'now') {
    answer(invocation);
  } else {
    waitForEmptyLoop(invocation);
  }
}

/** Ends the invocation with an error at once, whatever result it had. */
function fail(invocation, err) {
  if (invocation.answered) {
    return;
  }
  invocation.outcome = failureReply(invocation, err);
  answer(invocation);
}

function unhandled(err) {
  if (current !== null) {
    fail(current, err);
  } else {
    writeErr(consoleLine([stackOf(err)]));
  }
}

function waitForEmptyLoop(invocation) {
  if (invocation.draining) {
    return;
  }
  invocation.draining = true;
  const check = () => {
    if (invocation.answered) {
      return;
    }
    const released = invocation.outcome !== null && !invocation.waitsForEmptyLoop;
    if (released || foreignResources() === 0) {
      if (invocation.outcome === null) {
        invocation.outcome = successReply(invocation, null);
      }
      answer(invocation);
    } else {
      setTimeout(check, DRAIN_POLL_MS).unref();
    }
  };
  // An immediate does not count itself while it runs; an unreferenced timer never counts.
  setImmediate(check);
}

function answer(invocation) {
  if (invocation.answered) {
    return;
  }
  invocation.answered = true;
  if (current === invocation) {
    current = null;
  }
  const marker = `\0nimbus-end ${token} ${invocation.requestId}\n`;
  afterStderrDrains(() => {
    // Queued behind everything written to stdout; sent once it has reached the pipe.
    writeOut(marker, () => sendFrame(invocation.outcome));
  });
}

function afterStderrDrains(next) {
  if (stderr.writableLength > 0 && !stderr.destroyed) {
    stderr.once('drain', () => afterStderrDrains(next));
  } else {
    next();
  }
}

// ---- Control channel -------------------------------------------------------------

function sendFrame(message) {
  const payload = Buffer.from(JSON.stringify(message), 'utf8');
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32BE(payload.length, 0);
  control.write(Buffer.concat([header, payload]));
}

const received = [];
let receivedBytes = 0;

function takeFrames(chunk) {
  received.push(chunk);
  receivedBytes += chunk.length;
  const frames = [];
  while (receivedBytes >= HEADER_BYTES) {
    const head = received[0].length >= HEADER_BYTES ? received[0] : joinReceived();
    const size = head.readUInt32BE(0);
    if (receivedBytes < HEADER_BYTES + size) {
      break;
    }
    const all = joinReceived();
    frames.push(all.subarray(HEADER_BYTES, HEADER_BYTES + size));
    const rest = all.subarray(HEADER_BYTES + size);
    received.length = 0;
    receivedBytes = rest.length;
    if (rest.length > 0) {
      received.push(rest);
    }
  }
  return frames;
}

function joinReceived() {
  if (received.length > 1) {
    const joined = Buffer.concat(received, receivedBytes);
    received.length = 0;
    received.push(joined);
  }
  return received[0];
}

function exitNow() {
  process.exit(0);
}

control.on('data', (chunk) => {
  for (const payload of takeFrames(chunk)) {
    const message = JSON.parse(payload.toString('utf8'));
    if (spare) {
      takeAssignment(message);
    } else {
      invoke(message);
    }
  }
});
control.on('end', exitNow);
control.on('error', exitNow);

sendFrame(spare ? { spare: true } : { ready: true });
