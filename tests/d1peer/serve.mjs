// Starts the D1 REST peer (worker.js) on Cloudflare's local runtime with Miniflare's Node API.
// Run by d1-sync's test harness (tests/src/d1peer.rs), which installs miniflare into target/.
//
//   NODE_PATH=<dir>/node_modules node serve.mjs
//
// Env: D1PEER_PORT (0 = any free port), D1PEER_TOKEN (default test-token),
//      D1PEER_DATABASES (how many databases, ids db0..dbN-1; default 32),
//      D1PEER_PERSIST (directory for the SQLite files; unset = in memory).
// Prints "d1peer ready at <url>" once serving. Exits when its standard input closes, so a
// test binary that ends (or dies) never leaves it running.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(
  process.env.NODE_PATH ? path.join(process.env.NODE_PATH, "x.js") : import.meta.url,
);
const { Miniflare, Log, LogLevel } = require("miniflare");

const here = path.dirname(fileURLToPath(import.meta.url));
const count = Number(process.env.D1PEER_DATABASES || 32);
const d1Databases = {};
for (let i = 0; i < count; i++) d1Databases[`DB_${i}`] = `d1-sync-test-db${i}`;

const mf = new Miniflare({
  name: "d1peer",
  modules: true,
  scriptPath: path.join(here, "worker.js"),
  modulesRoot: here,
  compatibilityDate: "2026-04-26",
  host: "127.0.0.1",
  port: Number(process.env.D1PEER_PORT || 0),
  cf: false,
  d1Databases,
  d1Persist: process.env.D1PEER_PERSIST || false,
  bindings: { API_TOKEN: process.env.D1PEER_TOKEN || "test-token" },
  log: new Log(LogLevel.WARN),
});

const url = await mf.ready;
console.log(`d1peer ready at ${url.href}`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  try {
    await mf.dispose();
  } finally {
    process.exit(0);
  }
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();
