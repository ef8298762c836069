package config

import (
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineIndex finds the line of a key in a config file, so errors about a
// value can name it. The decoder keeps positions to itself; baton's files
// are simple enough to index by scanning headers and assignments.
type lineIndex struct {
	keys   map[string]int   // "a.b" -> first line assigning it
	tables map[string][]int // "listener" -> the line of each [[listener]]
	inItem map[string]int   // "listener#1.address" -> line
	text   []string         // the file's lines
}

func indexLines(text string) *lineIndex {
	x := &lineIndex{keys: map[string]int{}, tables: map[string][]int{}, inItem: map[string]int{}, text: strings.Split(text, "\n")}
	table, item := "", -1
	for i, raw := range x.text {
		line := strings.TrimSpace(raw)
		n := i + 1
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[["):
			table = strings.TrimSpace(strings.Trim(strings.SplitN(line, "]]", 2)[0], "[ "))
			item = len(x.tables[table])
			x.tables[table] = append(x.tables[table], n)
		case strings.HasPrefix(line, "["):
			table = strings.TrimSpace(strings.Trim(strings.SplitN(line, "]", 2)[0], "[ "))
			item = -1
			if _, ok := x.keys[table]; !ok {
				x.keys[table] = n
			}
		default:
			k, _, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			k = strings.Trim(strings.TrimSpace(k), `"'`)
			full := k
			if table != "" {
				full = table + "." + k
			}
			if _, seen := x.keys[full]; !seen {
				x.keys[full] = n
			}
			if item >= 0 {
				x.inItem[fmt.Sprintf("%s#%d.%s", table, item, k)] = n
			}
		}
	}
	return x
}

// key is the line of a key, 0 when not found.
func (x *lineIndex) key(k toml.Key) int {
	if x == nil {
		return 0
	}
	return x.keys[strings.Join(k, ".")]
}

// table is the line of the i-th [[name]] table.
func (x *lineIndex) table(name string, i int) int {
	if x == nil || i >= len(x.tables[name]) {
		return 0
	}
	return x.tables[name][i]
}

// item is the line of key k in the i-th [[name]] table, or of the table.
func (x *lineIndex) item(name string, i int, k string) int {
	if x == nil {
		return 0
	}
	if n, ok := x.inItem[fmt.Sprintf("%s#%d.%s", name, i, k)]; ok {
		return n
	}
	return x.table(name, i)
}

// value is the value of the assignment on line n as written ("660" for
// `mode = 660  # rw`), "" when line n is not one.
func (x *lineIndex) value(n int) string {
	if x == nil || n < 1 || n > len(x.text) {
		return ""
	}
	_, v, ok := strings.Cut(x.text[n-1], "=")
	if !ok {
		return ""
	}
	v = strings.TrimSpace(v)
	if v == "" || v[0] == '"' || v[0] == '\'' || v[0] == '[' || v[0] == '{' {
		return "" // strings and lists are quoted from the decoded value
	}
	v, _, _ = strings.Cut(v, "#")
	return strings.TrimSpace(v)
}
