//go:build ignore

// gen writes the JSON schemas kubeconform needs to check deploy/kubernetes offline, in its
// -schema-location layout ({{ .NormalizedKubernetesVersion }}-standalone-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json).
//
// The Kubernetes kinds come from the OpenAPI (swagger 2) spec in the k8s.io/kubernetes module,
// the ServiceMonitor from the CRD in the prometheus-operator module; both are fetched with
// `go mod download` from the Go module proxy. The schemas are made as kubeconform's own
// (openapi2jsonschema --expanded --kubernetes --stand-alone --strict) are: references inlined,
// additionalProperties false on every object with properties, int-or-string as a oneOf, kind and
// apiVersion as enums. Descriptions are dropped to keep the files small.
//
//	go run ./deploy/kubernetes/schemas/gen.go
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kinds are the Kubernetes kinds the manifests use.
var kinds = []struct{ group, version, kind string }{
	{"", "v1", "ConfigMap"},
	{"", "v1", "Namespace"},
	{"", "v1", "Secret"},
	{"", "v1", "Service"},
	{"", "v1", "ServiceAccount"},
	{"apps", "v1", "Deployment"},
	{"policy", "v1", "PodDisruptionBudget"},
}

func main() {
	k8s := flag.String("kubernetes", "v1.36.3", "k8s.io/kubernetes module version")
	operator := flag.String("operator", "v0.85.0", "github.com/prometheus-operator/prometheus-operator module version")
	out := flag.String("out", "deploy/kubernetes/schemas", "output folder")
	flag.Parse()

	dir := filepath.Join(*out, *k8s+"-standalone-strict")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}

	var spec struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	readJSON(filepath.Join(moduleDir("k8s.io/kubernetes@"+*k8s), "api/openapi-spec/swagger.json"), &spec)
	byGVK := map[string]string{}
	for name, def := range spec.Definitions {
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			g := g.(map[string]any)
			byGVK[fmt.Sprint(g["group"], "/", g["version"], "/", g["kind"])] = name
		}
	}
	for _, k := range kinds {
		name, ok := byGVK[k.group+"/"+k.version+"/"+k.kind]
		if !ok {
			log.Fatalf("%s %s/%s not in the OpenAPI spec", k.kind, k.group, k.version)
		}
		e := expander{defs: spec.Definitions, active: map[string]bool{}}
		schema := e.def(name)
		apiVersion, suffix := k.version, "-"+k.version
		if k.group != "" {
			apiVersion, suffix = k.group+"/"+k.version, "-"+strings.Split(k.group, ".")[0]+"-"+k.version
		}
		write(dir, k.kind, suffix, apiVersion, schema)
	}

	var crd struct {
		Spec struct {
			Group    string                `json:"group"`
			Names    struct{ Kind string } `json:"names"`
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	readJSON(filepath.Join(moduleDir("github.com/prometheus-operator/prometheus-operator@"+*operator),
		"jsonnet/prometheus-operator/servicemonitors-crd.json"), &crd)
	for _, v := range crd.Spec.Versions {
		schema := crdSchema(v.Schema.OpenAPIV3Schema).(map[string]any)
		write(dir, crd.Spec.Names.Kind, "-"+strings.Split(crd.Spec.Group, ".")[0]+"-"+v.Name, crd.Spec.Group+"/"+v.Name, schema)
	}
}

func moduleDir(modVersion string) string {
	var b bytes.Buffer
	cmd := exec.Command("go", "mod", "download", "-json", modVersion)
	cmd.Stdout, cmd.Stderr = &b, os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("go mod download %s: %v", modVersion, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m.Error != "" || m.Dir == "" {
		log.Fatalf("go mod download %s: %v %s", modVersion, err, m.Error)
	}
	return m.Dir
}

func readJSON(path string, v any) {
	b, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		log.Fatalf("%s: %v", path, err)
	}
}

func write(dir, kind, suffix, apiVersion string, schema map[string]any) {
	if props, ok := schema["properties"].(map[string]any); ok {
		props["kind"] = map[string]any{"type": "string", "enum": []string{kind}}
		props["apiVersion"] = map[string]any{"type": "string", "enum": []string{apiVersion}}
	}
	b, err := json.MarshalIndent(schema, "", " ")
	if err != nil {
		log.Fatal(err)
	}
	path := filepath.Join(dir, strings.ToLower(kind)+suffix+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (%d bytes)\n", path, len(b)+1)
}

// expander inlines the swagger definitions' references.
type expander struct {
	defs   map[string]map[string]any
	active map[string]bool // definitions being expanded, to stop at a cycle
}

func (e expander) def(name string) map[string]any {
	if e.active[name] {
		return map[string]any{} // a recursive type: accept anything below this point
	}
	e.active[name] = true
	defer delete(e.active, name)
	return e.node(e.defs[name]).(map[string]any)
}

func (e expander) node(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if ref, ok := v["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/definitions/")
			if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
				return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
			}
			return e.def(name)
		}
		if v["format"] == "int-or-string" {
			return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
		}
		out := map[string]any{}
		for k, c := range v {
			if k == "description" || strings.HasPrefix(k, "x-kubernetes-") {
				continue
			}
			if k == "properties" {
				props := map[string]any{}
				for p, s := range c.(map[string]any) {
					props[p] = e.node(s)
				}
				out[k] = props
				continue
			}
			out[k] = e.node(c)
		}
		if _, ok := out["properties"]; ok {
			if _, set := out["additionalProperties"]; !set {
				out["additionalProperties"] = false
			}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, c := range v {
			out[i] = e.node(c)
		}
		return out
	}
	return v
}

// crdSchema makes a CRD's openAPIV3Schema strict, as kubeconform's openapi2jsonschema.py does.
func crdSchema(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if v["x-kubernetes-int-or-string"] == true {
			return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
		}
		out := map[string]any{}
		for k, c := range v {
			if k == "description" || strings.HasPrefix(k, "x-kubernetes-") {
				continue
			}
			if k == "properties" {
				props := map[string]any{}
				for p, s := range c.(map[string]any) {
					props[p] = crdSchema(s)
				}
				out[k] = props
				continue
			}
			out[k] = crdSchema(c)
		}
		_, preserve := v["x-kubernetes-preserve-unknown-fields"]
		if _, ok := out["properties"]; ok && !preserve {
			if _, set := out["additionalProperties"]; !set {
				out["additionalProperties"] = false
			}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, c := range v {
			out[i] = crdSchema(c)
		}
		return out
	}
	return v
}
