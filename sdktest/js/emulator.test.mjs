// Drives a running gemini-emulator with the official @google/genai SDK at its default settings
// (API version v1), as a user's own tests would: inline and file batches, upload, download,
// embeddings, list with paging, cancel, delete, an image batch whose PNG is decoded, and JSON
// answers checked against their schema by a JSON-schema validator.
//
// GEMINI_EMULATOR_URL is the emulator's base URL; EMULATOR_IMAGE_BYTES its --image-bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GoogleGenAI, Type } from "@google/genai";
import AjvModule from "ajv";

const Ajv = AjvModule.default ?? AjvModule;
const baseUrl = process.env.GEMINI_EMULATOR_URL;
const imageBytes = Number(process.env.EMULATOR_IMAGE_BYTES ?? 1500000);
const model = "gemini-2.5-flash";

if (!baseUrl) {
  throw new Error("GEMINI_EMULATOR_URL is not set: start gemini-emulator and point this test at it (see sdktest/run)");
}

// Only the base URL is changed: the API version stays the SDK's default.
const ai = new GoogleGenAI({ apiKey: "emulator-key", httpOptions: { baseUrl } });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// wait polls a job until it is done, failing after a bounded time.
async function wait(name) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const job = await ai.batches.get({ name });
    if (["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"].includes(job.state)) {
      return job;
    }
    assert.ok(Date.now() < deadline, `${name} still ${job.state}`);
    await sleep(100);
  }
}

// textOf is the answer's text without thoughts (inline responses come as plain objects, without
// the SDK's .text getter).
const textOf = (response) =>
  response.candidates[0].content.parts.filter((p) => !p.thought && typeof p.text === "string").map((p) => p.text).join("");

const prompt = (text) => [{ role: "user", parts: [{ text }] }];

// OpenAPI-subset schemas (upper-case types, propertyOrdering) as JSON Schema, for the validator.
function asJSONSchema(s) {
  if (Array.isArray(s)) return s.map(asJSONSchema);
  if (s === null || typeof s !== "object") return s;
  const out = {};
  for (const [k, v] of Object.entries(s)) {
    if (k === "propertyOrdering" || k === "nullable") continue;
    if (k === "type") out.type = s.nullable ? [v.toLowerCase(), "null"] : v.toLowerCase();
    else if (k === "properties") out.properties = Object.fromEntries(Object.entries(v).map(([n, p]) => [n, asJSONSchema(p)]));
    else out[k] = asJSONSchema(v);
  }
  return out;
}

const ajv = new Ajv({ strict: false, allErrors: true });
function assertValid(schema, text, what) {
  const value = JSON.parse(text);
  const validate = ajv.compile(schema);
  assert.ok(validate(value), `${what} ${text} breaks its schema: ${ajv.errorsText(validate.errors)}`);
  return value;
}

test("inline batch with JSON answers valid against responseSchema and responseJsonSchema", async () => {
  const review = {
    type: Type.OBJECT,
    properties: {
      title: { type: Type.STRING },
      rating: { type: Type.INTEGER, minimum: 1, maximum: 5 },
      genre: { type: Type.STRING, enum: ["drama", "comedy", "poetry"] },
      tags: { type: Type.ARRAY, minItems: 3, items: { type: Type.STRING } },
      author: {
        type: Type.OBJECT,
        properties: { name: { type: Type.STRING }, country: { type: Type.STRING, nullable: true } },
        required: ["name"],
      },
    },
    required: ["title", "rating", "genre", "tags", "author"],
    propertyOrdering: ["title", "rating", "genre", "tags", "author"],
  };
  const plan = {
    $defs: {
      step: {
        type: "object",
        additionalProperties: false,
        properties: {
          n: { type: "integer", exclusiveMinimum: 0 },
          kind: { enum: ["read", "write"] },
          detail: { type: "object", properties: { why: { type: "string", minLength: 3 } }, required: ["why"] },
        },
        required: ["n", "kind", "detail"],
      },
    },
    type: "object",
    properties: { steps: { type: "array", minItems: 2, maxItems: 5, items: { $ref: "#/$defs/step" } }, done: { type: "boolean" } },
    required: ["steps", "done"],
  };
  const created = await ai.batches.create({
    model,
    src: [
      { contents: prompt("hello"), metadata: { key: "text" } },
      { contents: prompt("review a book"), metadata: { key: "review" }, config: { responseMimeType: "application/json", responseSchema: review } },
      { contents: prompt("make a plan"), metadata: { key: "plan" }, config: { responseMimeType: "application/json", responseJsonSchema: plan } },
      { contents: prompt("think"), metadata: { key: "think" }, config: { thinkingConfig: { thinkingBudget: 100, includeThoughts: true }, serviceTier: "flex" } },
    ],
    config: { displayName: "sdk-inline" },
  });
  assert.match(created.name, /^batches\/[a-z0-9]+$/);
  const job = await wait(created.name);
  assert.equal(job.state, "JOB_STATE_SUCCEEDED");
  const byKey = Object.fromEntries(job.dest.inlinedResponses.map((r) => [r.metadata.key, r]));
  assert.deepEqual(Object.keys(byKey).sort(), ["plan", "review", "text", "think"]);
  for (const r of Object.values(byKey)) assert.equal(r.error, undefined, JSON.stringify(r.error));

  assert.match(textOf(byKey.text.response), /^emulated: hello #[0-9a-f]{8}$/);
  const got = assertValid(asJSONSchema(review), textOf(byKey.review.response), "review");
  assert.ok(got.tags.length >= 3);
  assert.deepEqual(Object.keys(got).slice(0, 2), ["title", "rating"]);
  const steps = assertValid(plan, textOf(byKey.plan.response), "plan").steps;
  assert.ok(steps.length >= 2 && steps.length <= 5);

  const usage = byKey.think.response.usageMetadata;
  assert.equal(usage.thoughtsTokenCount, 100);
  assert.equal(usage.totalTokenCount, usage.promptTokenCount + usage.candidatesTokenCount + usage.thoughtsTokenCount);
  assert.equal(byKey.think.response.candidates[0].content.parts[0].thought, true);
});

test("file batch: upload, create from the file, download the results", async () => {
  const dir = await mkdtemp(join(tmpdir(), "sdktest-"));
  try {
    const lines = ["one", "two", "three"].map((t) => JSON.stringify({ key: t, request: { contents: prompt(t), cachedContent: "cachedContents/c1" } }));
    const input = join(dir, "input.jsonl");
    await writeFile(input, lines.join("\n") + "\n");
    const file = await ai.files.upload({ file: input, config: { mimeType: "jsonl", displayName: "sdk-input" } });
    assert.match(file.name, /^files\//);
    assert.equal(Number(file.sizeBytes), (await readFile(input)).length);

    const created = await ai.batches.create({ model, src: file.name, config: { displayName: "sdk-file" } });
    const job = await wait(created.name);
    assert.equal(job.state, "JOB_STATE_SUCCEEDED");
    assert.match(job.dest.fileName, /^files\/batch-/);

    const out = join(dir, "results.jsonl");
    await ai.files.download({ file: job.dest.fileName, downloadPath: out });
    const results = (await readFile(out, "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(results.map((r) => r.key), ["one", "two", "three"]);
    for (const r of results) {
      const u = r.response.usageMetadata;
      assert.equal(u.cachedContentTokenCount, 1024, JSON.stringify(u));
      assert.equal(u.totalTokenCount, u.promptTokenCount + u.candidatesTokenCount);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("embeddings batch", async () => {
  const created = await ai.batches.createEmbeddings({
    model: "gemini-embedding-001",
    src: { inlinedRequests: { contents: [{ parts: [{ text: "alpha" }] }, { parts: [{ text: "beta" }] }], config: { outputDimensionality: 8 } } },
    config: { displayName: "sdk-embed" },
  });
  const job = await wait(created.name);
  assert.equal(job.state, "JOB_STATE_SUCCEEDED");
  const answers = job.dest.inlinedEmbedContentResponses;
  assert.equal(answers.length, 2);
  for (const a of answers) {
    const values = a.response.embedding.values;
    assert.equal(values.length, 8);
    const norm = values.reduce((s, x) => s + x * x, 0);
    assert.ok(Math.abs(norm - 1) < 1e-4, `norm² ${norm}`);
  }
});

test("image batch: the answer is a PNG that decodes to the emulator's size", async () => {
  const created = await ai.batches.create({
    model: "gemini-2.5-flash-image",
    src: [{ contents: prompt("a lighthouse at dawn"), metadata: { key: "img" }, config: { responseModalities: ["TEXT", "IMAGE"] } }],
    config: { displayName: "sdk-image" },
  });
  const job = await wait(created.name);
  assert.equal(job.state, "JOB_STATE_SUCCEEDED");
  const parts = job.dest.inlinedResponses[0].response.candidates[0].content.parts;
  assert.ok(parts.some((p) => typeof p.text === "string"), "no text part though TEXT was asked");
  const image = parts.find((p) => p.inlineData);
  assert.ok(image, "no inlineData part");
  assert.equal(image.inlineData.mimeType, "image/png");
  const png = Buffer.from(image.inlineData.data, "base64");
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "PNG signature");
  assert.equal(png.toString("latin1", 12, 16), "IHDR");
  const side = Math.max(1, Math.round(Math.sqrt(imageBytes / 3)));
  assert.equal(png.readUInt32BE(16), side, "width");
  assert.equal(png.readUInt32BE(20), side, "height");
  assert.ok(Math.abs(png.length - imageBytes) / imageBytes < 0.01, `${png.length} bytes, want about ${imageBytes}`);
  assert.equal(png.toString("latin1", png.length - 8, png.length - 4), "IEND");
});

test("list pages newest first; cancel; delete removes a job from get and list", async () => {
  const names = [];
  for (const i of [0, 1, 2, 3, 4]) {
    const job = await ai.batches.create({ model, src: [{ contents: prompt(`list ${i}`) }], config: { displayName: `sdk-list-${i}` } });
    names.push(job.name);
  }
  const pager = await ai.batches.list({ config: { pageSize: 2 } });
  assert.ok(pager.page.length <= 2);
  const listed = [];
  for await (const job of pager) listed.push(job.name);
  const ours = listed.filter((n) => names.includes(n));
  assert.deepEqual(ours, [...names].reverse(), "newest first across pages");

  // The emulator runs with a job delay of seconds: a job just made is still PENDING.
  const victim = (await ai.batches.create({ model, src: [{ contents: prompt("cancel me") }], config: { displayName: "sdk-cancel" } })).name;
  await ai.batches.cancel({ name: victim });
  const cancelled = await ai.batches.get({ name: victim });
  assert.equal(cancelled.state, "JOB_STATE_CANCELLED");
  await ai.batches.delete({ name: victim });
  await assert.rejects(ai.batches.get({ name: victim }), (err) => err.status === 404 || /404/.test(String(err)));
  const after = [];
  for await (const job of await ai.batches.list({ config: { pageSize: 3 } })) after.push(job.name);
  assert.ok(!after.includes(victim), "a deleted job is still listed");
  assert.ok(after.includes(names[3]));
});
