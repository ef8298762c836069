package watch

import (
	"fmt"
	"strings"
	"time"
)

// DefaultSettle is how long a change must have lasted before it is
// reported, when New is given 0: 500 ms.
const DefaultSettle = 500 * time.Millisecond

// Change is a watched path that changed, and what changed, in words.
type Change struct {
	Path string
	What string
}

// String is "PATH (WHAT)".
func (c Change) String() string { return fmt.Sprintf("%s (%s)", c.Path, c.What) }

// Summary joins changes as a reload's reason says them.
func Summary(cs []Change) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = c.String()
	}
	return strings.Join(s, "; ")
}
