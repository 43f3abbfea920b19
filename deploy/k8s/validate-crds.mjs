// Validates the custom resources of a rendered manifest stream against the CRD schemas that
// the npm packages @kubernetes-models/keda and @kubernetes-models/prometheus-operator ship
// (generated from the projects' CRDs):
//   1. the packages' compiled JSON-schema validators: types, required fields, enums, patterns;
//   2. unknown fields (what `kubectl apply --validate=strict` rejects), which the schemas
//      themselves allow: every key must be a property of the type that the packages' TypeScript
//      declarations (these two plus kubernetes-models and @kubernetes-models/apimachinery for
//      ObjectMeta, LabelSelector, HPA behavior, ...) give that position. Inline map types
//      (labels, trigger metadata) are not checked.
//
//   node deploy/k8s/validate-crds.mjs NODE_MODULES_DIR < manifests.json
//
// stdin: a JSON array of Kubernetes objects (deploy/validate.sh converts the kustomize output).
// Built-in kinds are ignored here (kubernetes-validate checks them). Exit 1 on any failure,
// or when a custom resource of an unknown kind shows up.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: validate-crds.mjs NODE_MODULES_DIR < manifests.json");
  process.exit(2);
}
const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PodMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
};
// Groups of built-in kinds (left to kubernetes-validate).
const BUILTIN = new Set(["v1", "apps/v1", "policy/v1", "batch/v1", "autoscaling/v2",
  "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"]);

// --- unknown-field check, from the .d.ts declarations -------------------------------------
// Interfaces are keyed by their fully qualified names (the `export type { IX as IFull }`
// aliases), which is how the declarations refer to each other across files and packages.
const IFACES = new Map(); // full name -> { ext: [full names], props: { name: typeText } }
function parseDts(path) {
  const text = readFileSync(path, "utf8");
  const full = new Map();
  for (const m of text.matchAll(/export type \{([^}]*)\}/g)) {
    for (const part of m[1].split(",")) {
      const [from, to] = part.split(" as ").map((x) => x.trim());
      if (from && to) full.set(from, to);
    }
  }
  for (const m of text.matchAll(/^export interface (\w+)(?: extends ([^{]+))? \{\n([\s\S]*?)^\}/gm)) {
    const props = {};
    // Top-level members only (4-space indent); `{` opens an inline type, which is not checked.
    for (const pm of m[3].matchAll(/^    "([^"]+)"\??: (.*?);?$/gm)) props[pm[1]] = pm[2];
    const ext = (m[2] ?? "").split(",").map((x) => x.trim()).filter((x) => x && x !== "TypeMeta");
    IFACES.set(full.get(m[1]) ?? m[1], { ext, props });
  }
  return full;
}
function scan(dir) {
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) { if (f !== "node_modules" && f !== "_schemas") scan(p); }
    else if (f.endsWith(".d.ts")) parseDts(p);
  }
}
for (const pkg of ["@kubernetes-models/keda", "@kubernetes-models/prometheus-operator",
  "@kubernetes-models/apimachinery", "kubernetes-models"]) {
  try { scan(join(modules, pkg)); } catch { /* optional package missing: fewer types checked */ }
}
function propsOf(name, seen = new Set()) {
  const i = IFACES.get(name);
  if (!i || seen.has(name)) return null;
  seen.add(name);
  const all = { ...i.props };
  for (const e of i.ext) Object.assign(all, propsOf(e, seen) ?? {});
  return all;
}
function unknownFields(value, typeText, path, out) {
  if (value === null || typeof value !== "object") return;
  let t = typeText.trim();
  const arr = t.match(/^Array<(\w+)>$/);
  if (Array.isArray(value)) {
    if (arr) value.forEach((v, i) => unknownFields(v, arr[1], `${path}/${i}`, out));
    return;
  }
  if (!/^\w+$/.test(t)) return; // inline, union or primitive type: not checked
  const props = propsOf(t);
  if (!props) return; // not declared in the scanned packages
  for (const [k, v] of Object.entries(value)) {
    if (!(k in props)) out.push(`${path || "/"}${path ? "/" : ""}${k}: unknown field (not in ${t.replace(/^I(IoK8s|ComGithub)\w*?(V\d\w*?)?(?=[A-Z][a-z])/, "")})`);
    else unknownFields(v, props[k], `${path}/${k}`, out);
  }
}

const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
let checked = 0;
for (const doc of docs) {
  if (!doc) continue;
  const id = `${doc.apiVersion}/${doc.kind}`;
  const name = `${doc.kind}/${doc.metadata?.name ?? "?"}`;
  if (BUILTIN.has(doc.apiVersion)) continue;
  const path = MODELS[id];
  if (!path) {
    console.error(`FAIL ${name}: no schema for ${id}`);
    failed++;
    continue;
  }
  const mod = await import(pathToFileURL(join(modules, path)).href);
  const Model = mod[doc.kind];
  const unknown = [];
  const root = parseDts(join(modules, path.replace(/\.js$/, ".d.ts"))).get(`I${doc.kind}`);
  unknownFields(doc, root ?? `I${doc.kind}`, "", unknown);
  if (unknown.length) {
    failed++;
    console.error(`FAIL ${name} (${doc.apiVersion}):`);
    for (const u of unknown) console.error(`     ${u}`);
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`ok   ${name} (${doc.apiVersion})`);
    checked++;
  } catch (e) {
    failed++;
    console.error(`FAIL ${name} (${doc.apiVersion}): ${e.message}`);
    for (const err of e.errors ?? []) console.error(`     ${err.instancePath || "/"} ${err.message}`);
  }
}
console.log(`${checked} custom resources valid, ${failed} failed`);
process.exit(failed ? 1 : 0);
