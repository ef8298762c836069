package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Limits of the protocol.
const (
	MaxRequest     = 64 << 10
	MaxReply       = 16 << 20
	RequestTimeout = 5 * time.Second
)

// Request is what a client asks.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Reply is the answer to one request.
type Reply struct {
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// DecodeRequest parses one request line. It rejects unknown fields, trailing
// data and requests without a method, so that a typo is an error and not a
// silently different request.
func DecodeRequest(line []byte) (Request, error) {
	var req Request
	if len(line) > MaxRequest {
		return req, fmt.Errorf("request is %d bytes; the limit is %d", len(line), MaxRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("request is not valid JSON: %w", err)
	}
	if dec.More() {
		return req, errors.New("request has data after the JSON object; send one object per connection")
	}
	if req.Method == "" {
		return req, errors.New(`request has no "method"`)
	}
	return req, nil
}

// DecodeParams parses a request's params into v, rejecting unknown fields.
// Absent params leave v unchanged.
func DecodeParams(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	return nil
}
