//go:build race

package e2e

// raceFlag builds the binaries under test with the race detector, as the
// tests themselves are.
const raceFlag = "-race"
