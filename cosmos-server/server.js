#!/usr/bin/env node
// Test-only Cosmos DB server for agentstore: `node cosmos-server/server.js PORT [ADVERTISED_PORT]`.
//
// Runs @vercel/cosmosdb-server (pinned in package.json) on 127.0.0.1:PORT over HTTPS with
// keep-alive. We do not use the package's CLI: it answers `Connection: close`, so the Python SDK
// reconnects with TLS on every call (~15x slower).
//
// The package differs from real Cosmos DB in ways our tests would trip over; the fixes below make it
// answer like the real service, each with the reason next to it. Everything is in memory: a restart
// loses all data.
"use strict";

const crypto = require("crypto");

// Handlers are patched before the package builds its route table (lib/routes.js copies each
// handler's `default` export when it is first required), so patch first, then require the index.
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const documentsModule = require("@vercel/cosmosdb-server/lib/account/documents");
const accountModule = require("@vercel/cosmosdb-server/lib/account");
const jsonModule = require("@vercel/cosmosdb-server/lib/json");
const {
  parsePartitionKey,
  default: partitionFromHeader,
} = require("@vercel/cosmosdb-server/lib/utils/get-partition-from-header");

// The well-known key of Microsoft's Cosmos DB emulator. Like the emulator, we accept only it.
const EMULATOR_KEY =
  "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

const NOT_FOUND = {
  code: "NotFound",
  message: "Entity with the specified id does not exist in the system.",
};

// (a) Reading a missing item, or an item with the wrong partition key value, throws a TypeError
// inside the package (it dereferences the missing document) and answers 500; the SDK then retries
// for ~0.5 s before raising. Real Cosmos DB answers 404 NotFound at once, and our backend relies on
// 404 to mean "absent". Look the document up first and answer 404 ourselves.
const originalRead = readDocument.default;
readDocument.default = (account, req, res, params) => {
  const collection = account.database(params.dbId).collection(params.collId);
  if (collection.read()) {
    let partition;
    try {
      partition = parsePartitionKey(partitionFromHeader(req), params.docId);
    } catch (err) {
      partition = undefined; // a malformed header: let the package answer as it does
    }
    if (partition !== undefined && !collection.document(params.docId, partition).read()) {
      res.statusCode = 404;
      return { ...NOT_FOUND };
    }
  }
  return originalRead(account, req, res, params);
};

// (b) An item id that is not in the id index is looked up as a resource id (`_rid`) instead, so an
// item whose id happens to equal another item's `_rid` would read, conflict with or replace that
// other item. The Python SDK addresses items by name only, so documents never need the fallback.
const Documents = documentsModule.default;
Documents.prototype._toRid = function toRid(keyPath, value, partition) {
  return this._index.get(this._getId(keyPath, value, partition)) || `\u0000missing:${value}`;
};

// (e) In a transactional batch the package reads each operation's partition key from the
// operation itself (`partitionKey`); the Python SDK sends it once, in the request's
// x-ms-documentdb-partitionkey header, as real Cosmos DB expects (one batch, one logical
// partition). Without this every batch operation but `create` fails with 500. Still not atomic
// here, unlike on real Cosmos DB.
const originalJson = jsonModule.default;
jsonModule.default = async req => {
  const body = await originalJson(req);
  const header = partitionFromHeader(req);
  if (req.headers["x-ms-cosmos-is-batch-request"] && Array.isArray(body) && header) {
    for (const op of body) {
      if (op && op.partitionKey === undefined) op.partitionKey = header;
    }
  }
  return body;
};

// (f) The account record names the endpoint the SDK must use for every later request: the port
// the server listens on. A test that puts a proxy in front (to refuse connections for a while)
// passes the proxy's port as ADVERTISED_PORT, so the SDK keeps going through the proxy.
const advertisedPort = Number.parseInt(process.argv[3] || "", 10);
if (Number.isInteger(advertisedPort)) {
  const Account = accountModule.default;
  accountModule.default = class extends Account {
    constructor(host, port) {
      super(host, advertisedPort || port);
    }
  };
}

const { createHttpsServer } = require("@vercel/cosmosdb-server");

// (c) The package accepts any key. Real Cosmos DB (and the emulator) check the HMAC signature of
// each request and answer 401; we verify it too, so tests can exercise a wrong key.
const masterKey = Buffer.from(EMULATOR_KEY, "base64");

function resourceOf(pathname) {
  // `/dbs/db/colls/c/docs/id` -> ["docs", "dbs/db/colls/c/docs/id"]; a feed such as
  // `/dbs/db/colls/c/docs` -> ["docs", "dbs/db/colls/c"]; the account root -> ["", ""].
  const parts = pathname
    .split("/")
    .filter(Boolean)
    .map(part => decodeURIComponent(part));
  if (parts.length === 0) return ["", ""];
  if (parts.length % 2 === 1) return [parts[parts.length - 1], parts.slice(0, -1).join("/")];
  return [parts[parts.length - 2], parts.join("/")];
}

function authorized(req) {
  const header = req.headers.authorization;
  if (!header) return false;
  let token;
  try {
    token = new URLSearchParams(decodeURIComponent(header));
  } catch (err) {
    return false;
  }
  const sig = token.get("sig");
  if (token.get("type") !== "master" || !sig) return false;
  const pathname = new URL(req.url, "https://localhost").pathname;
  const [type, link] = resourceOf(pathname);
  const text =
    `${req.method.toLowerCase()}\n${type.toLowerCase()}\n${link}\n` +
    `${(req.headers["x-ms-date"] || "").toLowerCase()}\n${(req.headers.date || "").toLowerCase()}\n`;
  const expected = crypto.createHmac("sha256", masterKey).update(text, "utf8").digest();
  const given = Buffer.from(sig.replace(/ /g, "+"), "base64");
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

// (d) The package stores items of any size. Real Cosmos DB refuses a request whose item is over
// 2 MiB with 413; we refuse item writes over 2 MiB too, so a test proves our ~2 MB items fit.
const MAX_ITEM_BYTES = 2 * 1024 * 1024;
const DOCS_PATH = /^\/+dbs\/[^/]+\/colls\/[^/]+\/docs(\/[^/]+)?\/*$/;

function tooLarge(req) {
  if (!["POST", "PUT", "PATCH"].includes(req.method)) return false;
  if (req.headers["x-ms-documentdb-isquery"] || req.headers["x-ms-cosmos-is-batch-request"]) {
    return false;
  }
  const length = Number.parseInt(req.headers["content-length"] || "0", 10);
  return length > MAX_ITEM_BYTES && DOCS_PATH.test(new URL(req.url, "https://localhost").pathname);
}

function reject(req, res, status, code, message) {
  req.resume(); // drain the body so the keep-alive connection stays usable
  res.writeHead(status, {
    "content-type": "application/json",
    "x-ms-activity-id": crypto.randomUUID(),
    connection: "keep-alive",
  });
  res.end(JSON.stringify({ code, message }));
}

// The package charges every request "1" request unit; real Cosmos DB charges fractions
// ("5.71"). COSMOS_TEST_REQUEST_CHARGE sets the value every answer carries instead, so a test
// can tell a parsed and summed charge from a count of requests.
const CHARGE = process.env.COSMOS_TEST_REQUEST_CHARGE || "";

function main() {
  const port = Number.parseInt(process.argv[2], 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write("usage: node server.js PORT [ADVERTISED_PORT]\n");
    process.exit(2);
  }
  const server = createHttpsServer({ keepAlive: true });
  const [packageHandler] = server.listeners("request");
  server.removeAllListeners("request");
  server.on("request", (req, res) => {
    let ok = false;
    try {
      ok = authorized(req);
    } catch (err) {
      ok = false; // a malformed URL or header must not crash the server
    }
    if (!ok) {
      reject(req, res, 401, "Unauthorized",
        "The input authorization token can't serve the request. The wrong key is being used.");
    } else if (tooLarge(req)) {
      reject(req, res, 413, "RequestEntityTooLarge", "Request size is too large.");
    } else {
      if (CHARGE) {
        const setHeader = res.setHeader.bind(res);
        res.setHeader = (name, value) =>
          setHeader(name, name.toLowerCase() === "x-ms-request-charge" ? CHARGE : value);
      }
      packageHandler(req, res);
    }
  });

  server.listen(port, "127.0.0.1", () => {
    process.stdout.write(`listening ${server.address().port}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
