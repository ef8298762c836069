// Command chart turns the raw results of `make bench` (the JSON files
// bench/underload writes, and machine.txt) into the PNG charts under
// docs/img and the tables in docs/benchmarks.md.
//
//	go run . -in ../results -img ../../docs/img -doc ../../docs/benchmarks.md
//
// It lives in a Go module of its own so that gonum/plot does not become a
// dependency of baton. It only reads the results: run bench/bench.sh (make
// bench) to measure.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Output mirrors bench/underload's JSON.
type Output struct {
	Name        string   `json:"name"`
	Tool        string   `json:"tool"`
	Addr        string   `json:"addr"`
	Start       int64    `json:"start_unix_ns"`
	Seconds     float64  `json:"seconds"`
	EverySecs   float64  `json:"reload_every_s"`
	IntervalSec float64  `json:"interval_s"`
	Reload      string   `json:"reload"`
	Loads       []Load   `json:"loads"`
	Reloads     []Reload `json:"reloads"`
	ServerCPU   float64  `json:"server_cpu_s"`
	LoadAvg     string   `json:"loadavg"`

	// From the file name and neighbours, not the JSON.
	status *batonStatus
}

// Load is one load's totals.
type Load struct {
	Name     string   `json:"name"`
	Conns    int      `json:"conns"`
	Requests int64    `json:"requests"`
	Connect  int64    `json:"connect"`
	Read     int64    `json:"read"`
	Write    int64    `json:"write"`
	Timeout  int64    `json:"timeout"`
	Non2xx   int64    `json:"non2xx"`
	P50ms    float64  `json:"p50_ms"`
	P99ms    float64  `json:"p99_ms"`
	RPS      float64  `json:"rps"`
	Series   []Bucket `json:"series"`
	Samples  []string `json:"samples"`
	Raw      string   `json:"raw"`
}

// Failed counts requests that got no 2xx answer.
func (l Load) Failed() int64 { return l.Connect + l.Read + l.Write + l.Timeout + l.Non2xx }

// Bucket is one interval of a loadgen series.
type Bucket struct {
	Requests int64 `json:"requests"`
	Connect  int64 `json:"connect"`
	Read     int64 `json:"read"`
	Write    int64 `json:"write"`
	Timeout  int64 `json:"timeout"`
	Non2xx   int64 `json:"non2xx"`
}

// Reload is one reload asked for.
type Reload struct {
	At     int64   `json:"at_unix_ns"`
	TookMs float64 `json:"took_ms"`
	OK     bool    `json:"ok"`
	Err    string  `json:"err"`
}

// batonStatus is the part of `baton status --json` the report uses.
type batonStatus struct {
	Reloads struct {
		OK     int `json:"ok"`
		Failed int `json:"failed"`
	} `json:"reloads"`
}

// results is everything one run of make bench left in its directory.
type results struct {
	machine     [][2]string                   // key, value in file order
	reload      map[string]map[string]*Output // contender -> tool -> output
	overhead    []*Output
	unavailable [][2]string // name, reason
}

// contenders is the order of the reload table and chart.
var contenders = []string{"baton-shared", "baton-reuseport", "baton-upgrade", "nginx", "haproxy", "naive"}

func main() {
	log.SetFlags(0)
	log.SetPrefix("chart: ")
	in := flag.String("in", "../results", "directory with make bench's raw results")
	img := flag.String("img", "", "directory to write the PNG charts to (none if empty)")
	doc := flag.String("doc", "", "markdown file whose make bench sections to rewrite (stdout if empty)")
	flag.Parse()
	r, err := load(*in)
	if err != nil {
		log.Fatal(err)
	}
	var pngs []string
	if *img != "" {
		if err := os.MkdirAll(*img, 0o755); err != nil {
			log.Fatal(err)
		}
		name := filepath.Join(*img, "reload-under-load.png")
		if err := drawReload(r, name); err != nil {
			log.Fatal(err)
		}
		pngs = append(pngs, name)
	}
	md := report(r, pngs, *doc)
	if *doc == "" {
		fmt.Print(md.results)
		return
	}
	if err := splice(*doc, md); err != nil {
		log.Fatal(err)
	}
}

func load(dir string) (*results, error) {
	r := &results{reload: map[string]map[string]*Output{}}
	f, err := os.Open(filepath.Join(dir, "machine.txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: run make bench first", err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if ok {
			r.machine = append(r.machine, [2]string{k, v})
		}
	}
	f.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "unavailable.txt")); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if name, why, ok := strings.Cut(line, "\t"); ok {
				r.unavailable = append(r.unavailable, [2]string{name, why})
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	for _, name := range files {
		base := filepath.Base(name)
		if strings.HasSuffix(base, ".status.json") {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		o := &Output{}
		if err := json.Unmarshal(b, o); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		switch {
		case strings.HasPrefix(base, "reload-"):
			if b, err := os.ReadFile(strings.TrimSuffix(name, ".json") + ".status.json"); err == nil {
				st := &batonStatus{}
				if json.Unmarshal(b, st) == nil {
					o.status = st
				}
			}
			if r.reload[o.Name] == nil {
				r.reload[o.Name] = map[string]*Output{}
			}
			r.reload[o.Name][o.Tool] = o
		case strings.HasPrefix(base, "overhead-"):
			r.overhead = append(r.overhead, o)
		}
	}
	return r, nil
}

func (r *results) get(key string) string {
	for _, kv := range r.machine {
		if kv[0] == key {
			return kv[1]
		}
	}
	return "?"
}

func (r *results) why(name string) string {
	for _, u := range r.unavailable {
		if u[0] == name {
			return u[1]
		}
	}
	return ""
}
