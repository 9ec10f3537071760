// A stand-in for Cloudflare D1's REST API on Cloudflare's own local D1 engine (workerd +
// miniflare's D1). SQL runs for real; the REST envelope, auth errors and faults are this
// file's. Adapted for d1-sync's tests from the shared d1peer: several databases (db0, db1, ...)
// so tests run in parallel, and scripted faults per database.
//
//   POST /client/v4/accounts/:account/d1/database/:db/query   {"sql","params"} | {"batch":[...]}
//   POST /__peer/faults/:db   {"plan": ["503", "429:2", "ok", ...], "random": {"rate": 0.2, "kinds": [...]}}
//   GET  /__peer/stats/:db    {"requests": n, "statements": n, "faults": {...}}
//
// Fault kinds: "ok"; "429[:retry-after-seconds]"; "500" (JSON, code 7500); "503" (HTML body);
// "403" (bad token); "after" (the SQL commits, then HTTP 500: a lost response);
// "hang:<ms>" (wait, then answer normally). A plan is used up one request at a time; the
// random faults apply once the plan is empty.

const ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/d1\/database\/([^/]+)\/(query|raw)\/?$/;
const plans = new Map();
const randoms = new Map();
const stats = new Map();

function statsOf(db) {
  if (!stats.has(db)) stats.set(db, { requests: 0, statements: 0, faults: {} });
  return stats.get(db);
}

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function cfError(status, code, message, extra = {}) {
  return json(status, { result: null, success: false, errors: [{ code, message, ...extra }], messages: [] });
}

function sqlError(message) {
  return json(400, { result: [], success: false, errors: [{ code: 7500, message }], messages: [] });
}

function restMessage(e) {
  const m = e && typeof e.message === "string" ? e.message : String(e);
  return m.replace(/^(D1_[A-Z_]+|Error):\s*/, "");
}

function nextFault(db) {
  const plan = plans.get(db);
  if (plan && plan.length) return plan.shift();
  const r = randoms.get(db);
  if (r && r.rate > 0 && Math.random() < r.rate) {
    return r.kinds[Math.floor(Math.random() * r.kinds.length)];
  }
  return "ok";
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const admin = url.pathname.match(/^\/__peer\/(faults|stats)\/([^/]+)$/);
    if (admin) {
      const [, what, db] = admin;
      if (what === "stats") return json(200, statsOf(db));
      const body = await request.json();
      plans.set(db, Array.isArray(body.plan) ? [...body.plan] : []);
      randoms.set(db, body.random || null);
      return json(200, { ok: true });
    }

    const m = url.pathname.match(ROUTE);
    if (!m) return cfError(404, 7003, `Could not route to ${url.pathname}`);
    if (request.method !== "POST") return cfError(405, 10405, "Method not allowed");
    const [, , databaseId, kind] = m;

    const auth = request.headers.get("authorization") || "";
    const bm = auth.match(/^Bearer ([A-Za-z0-9_\-.]+)$/);
    if (!bm) {
      return cfError(400, 6003, "Invalid request headers", {
        error_chain: [{ code: 6111, message: "Invalid format for Authorization header" }],
      });
    }
    if (bm[1] !== env.API_TOKEN) return cfError(403, 10000, "Authentication error");

    const dbm = databaseId.match(/^db(\d+)$/);
    const binding = dbm && env[`DB_${dbm[1]}`];
    if (!binding) return cfError(404, 7404, `The database ${databaseId} could not be found`);

    const st = statsOf(databaseId);
    st.requests++;
    const fault = nextFault(databaseId);
    if (fault !== "ok") st.faults[fault] = (st.faults[fault] || 0) + 1;

    if (fault.startsWith("429")) {
      const after = fault.split(":")[1] || "1";
      return json(
        429,
        { result: null, success: false, errors: [{ code: 971, message: "More than 1200 requests per 300 seconds reached. Please wait and consider throttling your request speed" }], messages: [] },
        { "retry-after": after },
      );
    }
    if (fault === "500") return cfError(500, 7500, "internal error; reference = d1peer-injected");
    if (fault === "503") {
      return new Response("<html><body>503 Service Unavailable</body></html>", {
        status: 503,
        headers: { "content-type": "text/html" },
      });
    }
    if (fault === "403") return cfError(403, 10000, "Authentication error");
    if (fault.startsWith("hang:")) {
      await new Promise((r) => setTimeout(r, Number(fault.split(":")[1])));
    }

    let body;
    try {
      body = await request.json();
    } catch {
      return cfError(400, 7400, "The request is malformed: failed to decode JSON body");
    }
    const list = body && Array.isArray(body.batch) ? body.batch : body && typeof body.sql === "string" ? [body] : null;
    if (!list || !list.every((q) => q && typeof q.sql === "string" && (q.params == null || Array.isArray(q.params)))) {
      return cfError(400, 7400, "The request is malformed: expected {sql, params?} or {batch:[{sql, params?}]}");
    }
    if (list.length === 0) return sqlError("No SQL statements detected.");
    st.statements += list.length;

    let results;
    try {
      const prepared = list.map((q) => {
        const p = binding.prepare(q.sql);
        return q.params && q.params.length ? p.bind(...q.params) : p;
      });
      results = prepared.length === 1 ? [await prepared[0].all()] : await binding.batch(prepared);
    } catch (e) {
      return sqlError(restMessage(e));
    }
    if (fault === "after") return cfError(500, 7500, "internal error; reference = d1peer-after-commit");

    const shaped = results.map((r) => {
      const rows = r.results ?? [];
      if (kind !== "raw") return { results: rows, success: r.success, meta: r.meta };
      const columns = rows.length ? Object.keys(rows[0]) : [];
      return { results: { columns, rows: rows.map((o) => columns.map((c) => o[c])) }, success: r.success, meta: r.meta };
    });
    return json(200, { result: shaped, success: true, errors: [], messages: [] });
  },
};
