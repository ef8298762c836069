package api

import (
	"encoding/json"
	"fmt"
)

// IndentJSON is how `baton status --json` prints a reply: every field the
// server sent, through a map (keys sorted), indented by two spaces, with
// a final newline. The status page's /status.json serves the same bytes.
func IndentJSON(raw []byte) ([]byte, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("reading the status: %w", err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("printing the status: %w", err)
	}
	return append(out, '\n'), nil
}
