package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestSecurityDocNamesRealCode keeps docs/security.md true to the code:
// every `file.go:Name` it cites must be a file of the repository that
// declares Name (a function, a method or a type), so a check renamed or
// removed fails here until the page says where it went.
func TestSecurityDocNamesRealCode(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile("`([a-z0-9_/]+\\.go):([A-Za-z_][A-Za-z0-9_]*)`").FindAllSubmatch(doc, -1)
	if len(refs) < 20 {
		t.Fatalf("docs/security.md cites %d places in the code; it should say where each check is", len(refs))
	}
	for _, m := range refs {
		file, name := string(m[1]), string(m[2])
		src, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Errorf("docs/security.md cites %s:%s, but %v", file, name, err)
			continue
		}
		decl := regexp.MustCompile(`(?m)^(func (\([^)]*\) )?` + name + `[\[(]|type ` + name + ` )`)
		if !decl.Match(src) {
			t.Errorf("docs/security.md cites %s:%s, but %s declares no %s", file, name, file, name)
		}
	}
}
