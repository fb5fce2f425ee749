package client_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADMEGoSnippet: the README's Go example is a whole program, imports and all, that
// builds against this module. It is built where it would sit in the module
// (client/readme_example), through an overlay, so nothing is written to the source tree.
func TestREADMEGoSnippet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	i := strings.Index(section, "### From Go: the `client` package")
	if i < 0 {
		t.Fatal("README.md has no Go client section")
	}
	section = section[i:]
	start := strings.Index(section, "```go\n")
	end := strings.Index(section[start+1:], "\n```")
	if start < 0 || end < 0 {
		t.Fatal("the Go client section has no ```go block")
	}
	code := section[start+len("```go\n") : start+1+end+1]
	if !strings.HasPrefix(code, "package main\n") {
		t.Fatalf("the snippet is not a whole program:\n%s", code)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	pkg, err := filepath.Abs("readme_example")
	if err != nil {
		t.Fatal(err)
	}
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(pkg, "main.go"): src}})
	ov := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(ov, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("go", "build", "-overlay", ov, "-o", os.DevNull, "./readme_example").CombinedOutput(); err != nil {
		t.Fatalf("the README's Go snippet does not build: %v\n%s\n%s", err, out, code)
	}
}

// TestREADMEExampleKeysDiffer: the README's examples use different keys, so that running them
// one after the other, within one batch window, does not meet ALREADY_EXISTS.
func TestREADMEExampleKeysDiffer(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := regexp.MustCompile(`Gembatch-Key:(\S+)|Key: "([^"]+)"`).FindAllStringSubmatch(string(readme), -1)
	if len(keys) < 2 {
		t.Fatalf("found %d example keys", len(keys))
	}
	seen := map[string]bool{}
	for _, k := range keys {
		key := k[1] + k[2]
		if seen[key] {
			t.Errorf("two examples use key %q", key)
		}
		seen[key] = true
	}
}

// TestREADMEInstall: the README names the Go version go.mod asks for and says how to get the
// binaries.
func TestREADMEInstall(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	for _, want := range []string{
		"You need Go " + string(m[1]) + " or newer",
		"go install github.com/gembatch/gembatch/cmd/...@latest",
		"go build -o bin/ ./cmd/...",
	} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md does not say %q", want)
		}
	}
}
