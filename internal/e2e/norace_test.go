//go:build !race

package e2e

// raceFlag builds the binaries under test without the race detector, as
// the tests themselves are (benchmarks measure binaries without it).
const raceFlag = "-race=false"
