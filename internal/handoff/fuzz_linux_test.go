package handoff

import (
	"bytes"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FuzzReadLine checks that readLine returns the bytes up to the first
// newline and leaves every byte after it in the socket, whatever the
// peer sends: a frame may follow a line at once.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("{\"ok\":true,\"result\":{\"max_fds\":253}}\nBFDB\x01\x01"))
	f.Add([]byte("\n"))
	f.Add([]byte("no newline at all"))
	f.Add([]byte("a\nb\nc\n"))
	f.Add(bytes.Repeat([]byte("x"), 5000))
	f.Add(append(bytes.Repeat([]byte("y"), 4095), '\n', 'z'))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 8 << 10
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		a := conn(t, fds[0])
		b := conn(t, fds[1])
		defer a.Close()
		defer b.Close()
		go func() {
			b.Write(data)
			b.CloseWrite()
		}()
		a.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := readLine(a, max)
		i := bytes.IndexByte(data, '\n')
		switch {
		case i < 0 || i > max:
			if err == nil {
				t.Fatalf("no line within %d bytes in %q, yet read %q", max, data, line)
			}
			return
		case err != nil:
			t.Fatalf("line %q: %v", data[:i], err)
		case !bytes.Equal(line, data[:i]):
			t.Fatalf("read %q, want %q", line, data[:i])
		}
		rest, err := io.ReadAll(a)
		if err != nil || !bytes.Equal(rest, data[i+1:]) {
			t.Fatalf("left %q in the socket, want %q (%v)", rest, data[i+1:], err)
		}
	})
}

func conn(t *testing.T, fd int) *net.UnixConn {
	f := os.NewFile(uintptr(fd), "pair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}
