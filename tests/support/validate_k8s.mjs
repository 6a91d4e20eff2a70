// Validates Kubernetes objects against the schemas of the npm model packages
// (kubernetes-models, @kubernetes-models/flux-cd, @kubernetes-models/argo-cd).
//
// stdin: YAML or JSON, one or more documents ("---"); a document may also be a list of
// objects. Each object is looked up by apiVersion and kind; one that no package knows
// is an error unless its apiVersion is given with --skip (e.g. kustomize.config.k8s.io/v1beta1,
// a file kustomize reads, not an API object). Prints one JSON line per object
// ({"object", "status": "valid"|"skipped"|"invalid", "error"}) and exits 1 naming the
// first invalid object, 2 on unreadable input.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = process.env.EDGEFLEET_NODE_MODULES || join(here, "..", "..", "deps", "npm", "node_modules");
const require = createRequire(join(modules, "noop.js"));
const YAML = await import(pathToFileURL(require.resolve("yaml")).href);

const skip = new Set();
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === "--skip") skip.add(process.argv[++i]);
}

// The package that holds a group's models, and where under it a version's files are.
function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group.endsWith(".fluxcd.io")) return join(modules, "@kubernetes-models/flux-cd", group, version, `${kind}.js`);
  if (group === "argoproj.io") return join(modules, "@kubernetes-models/argo-cd", group, version, `${kind}.js`);
  return join(modules, "kubernetes-models", group === "" ? "" : group, version, `${kind}.js`);
}

function describe(obj) {
  const meta = (obj && obj.metadata) || {};
  const ns = meta.namespace ? `${meta.namespace}/` : "";
  return `${obj && obj.apiVersion}/${obj && obj.kind} ${ns}${meta.name ?? "(no name)"}`;
}

let documents;
try {
  documents = YAML.parseAllDocuments(readFileSync(0, "utf8")).map((doc) => {
    if (doc.errors.length) throw doc.errors[0];
    return doc.toJS();
  });
} catch (err) {
  console.error(`unreadable input: ${err.message}`);
  process.exit(2);
}

const objects = documents.flatMap((doc) => (Array.isArray(doc) ? doc : [doc])).filter((o) => o != null);
let firstInvalid = null;
for (const obj of objects) {
  const name = describe(obj);
  let error = null;
  let status = "valid";
  if (typeof obj !== "object" || !obj.apiVersion || !obj.kind) {
    error = "not a Kubernetes object (apiVersion and kind are required)";
  } else if (skip.has(obj.apiVersion)) {
    status = "skipped";
  } else {
    const path = modelPath(obj.apiVersion, obj.kind);
    let Model = null;
    if (path) {
      try {
        Model = (await import(pathToFileURL(path).href))[obj.kind];
      } catch {
        Model = null;
      }
    }
    if (!Model) {
      error = `no schema for ${obj.apiVersion} ${obj.kind} in the npm model packages`;
    } else {
      try {
        new Model(obj).validate();
      } catch (err) {
        error = err.message;
      }
    }
  }
  if (error) {
    status = "invalid";
    firstInvalid ??= `${name}: ${error}`;
  }
  console.log(JSON.stringify({ object: name, status, error }));
}
if (firstInvalid) {
  console.error(`invalid: ${firstInvalid}`);
  process.exit(1);
}
