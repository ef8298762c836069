package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The reliability suite: every fault and abuse baton is known to survive,
// each run against a real baton under load, each reporting in one line
// what it observed. `make reliability` writes docs/reliability.md from
// the outcomes, and TestReliabilityDocCoversEveryCase keeps that file
// listing every case, so it cannot go stale.

// reliabilityCase is one fault or abuse. run fails the test when baton
// does not survive it, and returns what it observed.
type reliabilityCase struct {
	area string // Faults, Abuse, Resources or Security
	name string // what is done to baton, as the table's first column says it
	run  func(t *testing.T) string
}

// aloneCases run by themselves, before the others (which run several at
// a time), by name: their outcome depends on the machine's pace.
var aloneCases = map[string]bool{
	// Its workers are killed at a 1 s drain timeout, which a starved
	// hello can reach with a request in flight (8 resets in 16,187
	// requests with three other cases beside it).
	"100 reloads asked for in 10 s": true,
}

// reliabilityCases lists every case; the table in docs/reliability.md
// follows this order.
func reliabilityCases() []reliabilityCase {
	var all []reliabilityCase
	for _, cs := range [][]reliabilityCase{faultCases, lifecycleCases, logcfgCases, abuseCases, resourceCases, sockfileCases, socketCases, upgradeCases} {
		all = append(all, cs...)
	}
	// One section per area, in this order; cases keep their order within.
	order := []string{"Faults", "Lifecycle", "Abuse", "Security", "Resources"}
	slices.SortStableFunc(all, func(a, b reliabilityCase) int {
		return slices.Index(order, a.area) - slices.Index(order, b.area)
	})
	return all
}

var reliabilityDoc = flag.String("reliability-doc", "", "write the reliability table to this file (make reliability)")

// outcome is what one case observed.
type outcome struct {
	c        reliabilityCase
	observed string
	passed   bool
	took     time.Duration
}

func TestReliability(t *testing.T) {
	// The suite runs by itself; its cases run several at a time among
	// themselves, except those that must run alone.
	requireE2EAlone(t)
	cases := reliabilityCases()
	var (
		mu       sync.Mutex
		outcomes = make([]outcome, len(cases))
	)
	// The cases run in parallel (each has its own baton); the table is
	// written in their order once every one has ended.
	t.Cleanup(func() {
		if *reliabilityDoc == "" {
			return
		}
		if err := os.WriteFile(*reliabilityDoc, reliabilityTable(outcomes), 0o644); err != nil {
			t.Error(err)
			return
		}
		t.Logf("wrote %s", *reliabilityDoc)
	})
	for i, c := range cases {
		t.Run(caseName(c), func(t *testing.T) {
			if !aloneCases[c.name] {
				requireE2E(t)
			}
			start := time.Now()
			var observed string
			defer func() {
				mu.Lock()
				outcomes[i] = outcome{c, observed, !t.Failed(), time.Since(start)}
				mu.Unlock()
			}()
			observed = c.run(t)
			t.Logf("%s: %s", c.name, observed)
		})
	}
}

// caseName is a case's subtest name: its area, then its name with every
// run of other characters than letters and digits made one underscore.
func caseName(c reliabilityCase) string {
	return c.area + "/" + regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(c.name, "_")
}

func reliabilityTable(outs []outcome) []byte {
	var b bytes.Buffer
	b.WriteString(`# What baton survives

Every fault and abuse below is a case of the reliability suite
(internal/e2e/reliability*_test.go). Each runs against the real baton
binary (built with the race detector), under a bounded HTTP load on
loopback where it says so, four cases at a time, and asserts on failed requests and on baton's
descriptor, goroutine and process counts afterwards. This file is written
by the suite itself:

    make reliability

and TestReliabilityDocCoversEveryCase fails when a case is missing here.
The figures are from the run that wrote it; the machine is in the last line.

`)
	area := ""
	for _, o := range outs {
		if o.c.name == "" {
			continue // not run: -run left it out
		}
		if o.c.area != area {
			area = o.c.area
			fmt.Fprintf(&b, "\n## %s\n\n| Fault or abuse | Outcome observed | Result |\n|---|---|---|\n", area)
		}
		result := "survived"
		if !o.passed {
			result = "**FAILED**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s (%.1fs) |\n", o.c.name, strings.ReplaceAll(o.observed, "|", `\|`), result, o.took.Seconds())
	}
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "\nWritten %s on %s (%s).\n", time.Now().UTC().Format("2006-01-02"), machine(), host)
	return b.Bytes()
}

// machine describes the machine in a few words: CPUs and memory.
func machine() string {
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if kb, err := strconv.Atoi(f[1]); err == nil {
				mem = fmt.Sprintf(", %d GiB", (kb+512*1024)/(1024*1024))
			}
		}
	}
	return fmt.Sprintf("%d CPUs%s", runtime.NumCPU(), mem)
}

func TestReliabilityDocCoversEveryCase(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "reliability.md"))
	if err != nil {
		t.Fatalf("docs/reliability.md: %v; write it with `make reliability`", err)
	}
	for _, c := range reliabilityCases() {
		if !bytes.Contains(doc, []byte("| "+c.name+" |")) {
			t.Errorf("docs/reliability.md has no row for %q; write it again with `make reliability`", c.name)
		}
	}
}

// resting returns the fewest descriptors and goroutines baton reported
// over a few status requests (with the kernel's view, whose netlink socket
// baton keeps): what it holds at rest, not counting what is only passing
// through (a status request's own descriptor and goroutine, a worker's
// notify message).
func resting(b *instance) (fds, goroutines int) {
	for i := range 10 {
		p := b.status().Process
		if i == 0 || p.FDs < fds {
			fds = p.FDs
		}
		if i == 0 || p.Goroutines < goroutines {
			goroutines = p.Goroutines
		}
		time.Sleep(50 * time.Millisecond) // sampling: the fewest over half a second
	}
	return fds, goroutines
}

// children lists the pids whose parent is ppid, zombies included.
func children(ppid int) []int {
	var kids []int
	for pid := range childStates(ppid) {
		kids = append(kids, pid)
	}
	return kids
}

// zombiesOf lists the zombie processes whose parent is ppid.
func zombiesOf(ppid int) []int {
	var out []int
	for pid, state := range childStates(ppid) {
		if state == "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// childStates maps each process whose parent is ppid to its state
// (/proc/PID/stat: "pid (comm) state ppid ...").
func childStates(ppid int) map[int]string {
	kids := map[int]string{}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			kids[pid] = f[0]
		}
	}
	return kids
}
