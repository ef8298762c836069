// Command debdeps prints the Depends: field a Debian package needs for an
// ELF executable, as dpkg-shlibdeps would work it out but without
// dpkg-dev: for a binary linked with the C library (cgo), libc6 at least
// as new as the newest GLIBC_ symbol version it uses; for a static one,
// nothing. scripts/deb.sh runs it.
//
//	go run ./scripts/debdeps bin/baton
package main

import (
	"debug/elf"
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: debdeps ELF-FILE")
		os.Exit(2)
	}
	dep, err := depends(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "debdeps:", err)
		os.Exit(1)
	}
	fmt.Println(dep)
}

// depends is the Depends: value for the executable at path.
func depends(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for _, lib := range libs {
		if lib != "libc.so.6" && !strings.HasPrefix(lib, "ld-linux") {
			return "", fmt.Errorf("%s needs %s, which this tool does not map to a package: use dpkg-shlibdeps", path, lib)
		}
	}
	if len(libs) == 0 {
		return "", nil // static: no shared library
	}
	syms, err := f.ImportedSymbols()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	newest := []int{2, 0}
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok {
			continue
		}
		if n := parse(v); n != nil && less(newest, n) {
			newest = n
		}
	}
	parts := make([]string, len(newest))
	for i, n := range newest {
		parts[i] = strconv.Itoa(n)
	}
	return "libc6 (>= " + strings.Join(parts, ".") + ")", nil
}

// parse reads a version "2.34" as [2 34], nil if it is not one.
func parse(v string) []int {
	var out []int
	for _, p := range strings.Split(v, ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil
		}
		out = append(out, n)
	}
	return out
}

// less compares two versions part by part.
func less(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
