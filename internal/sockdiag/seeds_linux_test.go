package sockdiag

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var capture = flag.Bool("capture", false, "rewrite testdata/fuzz/*/kernel-* from live kernel replies")

// TestCaptureSeeds records real kernel replies as fuzz seeds:
//
//	go test -run TestCaptureSeeds ./internal/sockdiag/ -args -capture
func TestCaptureSeeds(t *testing.T) {
	if !*capture {
		t.Skip("only with -capture: it rewrites the kernel-* seeds in testdata/fuzz")
	}
	c := dial(t)
	execute := func(req []byte, flags netlink.HeaderFlags) []byte {
		msgs, err := c.c.Execute(netlink.Message{Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | flags}, Data: req})
		if err != nil {
			t.Fatal(err)
		}
		return joinMessages(msgs)
	}

	for _, tc := range []struct{ name, network, ip string }{{"tcp4", "tcp4", "127.0.0.1"}, {"tcp6", "tcp6", "::1"}} {
		// LISTEN with two queued connections, their ESTAB server ends
		// (not accepted: no inode), and a TIME-WAIT.
		ln := listenTCP(t, tc.ip, 0, 8, false)
		dialN(t, ln.addr, 2)
		tw, err := net.Listen(tc.network, net.JoinHostPort(tc.ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer tw.Close()
		cl := dialN(t, tw.Addr().(*net.TCPAddr).AddrPort(), 1)[0]
		sv, err := tw.Accept()
		if err != nil {
			t.Fatal(err)
		}
		sv.Close()
		io.ReadAll(cl)
		cl.Close()
		fam := uint8(unix.AF_INET)
		if tc.network == "tcp6" {
			fam = unix.AF_INET6
		}
		var b []byte
		waitFor(t, "the sockets", func() (bool, string) {
			b = execute(inetRequest(fam, ipprotoTCP, AllStates, sourcePortFilter(ln.addr.Port(), true)), netlink.Dump)
			b = append(b, execute(inetRequest(fam, ipprotoTCP, States(TimeWait), sourcePortFilter(tw.Addr().(*net.TCPAddr).AddrPort().Port(), true)), netlink.Dump)...)
			msgs, _ := splitMessages(b)
			return len(msgs) == 4, fmt.Sprintf("%d messages", len(msgs))
		})
		writeSeed(t, "FuzzParseInetDiag", "kernel-"+tc.name, b)
	}

	for _, tc := range []struct{ name, network, ip string }{{"udp4", "udp4", "127.0.0.1"}, {"udp6", "udp6", "::1"}} {
		srv, err := net.ListenUDP(tc.network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.ip), 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		if _, err := srv.WriteTo([]byte("queued"), srv.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		fam := uint8(unix.AF_INET)
		if tc.network == "udp6" {
			fam = unix.AF_INET6
		}
		b := execute(inetRequest(fam, ipprotoUDP, AllStates, sourcePortFilter(srv.LocalAddr().(*net.UDPAddr).AddrPort().Port(), true)), netlink.Dump)
		writeSeed(t, "FuzzParseInetDiag", "kernel-"+tc.name, b)
	}

	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, lnIno := connFD(t, ln.(*net.UnixListener))
	cl, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.Write([]byte("hello"))
	_, clIno := connFD(t, cl.(*net.UnixConn))
	writeSeed(t, "FuzzParseUnixDiag", "kernel-unix-listen", execute(unixRequest(uint32(lnIno), 0), 0))
	writeSeed(t, "FuzzParseUnixDiag", "kernel-unix-stream", execute(unixRequest(uint32(clIno), 0), 0))
	writeSeed(t, "FuzzParseUnixFile", "kernel-unix-vfs", execute(unixRequestShow(uint32(lnIno), 0, udiagShowVFS), 0))
}

func writeSeed(t *testing.T, fuzz, name string, b []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", fuzz)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s/%s: %d bytes", dir, name, len(b))
}

// The fuzz targets return early on input they reject, so check here that
// every captured kernel reply decodes, into as many sockets as messages.
func TestKernelSeedsDecode(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the seeds were captured on a little-endian host; netlink is host-endian")
	}
	for _, fuzz := range []string{"FuzzParseInetDiag", "FuzzParseUnixDiag"} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", fuzz, "kernel-*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Errorf("no kernel-* seeds for %s: run go test -run TestCaptureSeeds ./internal/sockdiag/ -args -capture", fuzz)
		}
		for _, file := range files {
			t.Run(filepath.Base(file), func(t *testing.T) {
				raw, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				lit, ok := strings.CutPrefix(strings.TrimSpace(string(raw)), "go test fuzz v1\n[]byte(")
				if !ok || !strings.HasSuffix(lit, ")") {
					t.Fatalf("not a fuzz corpus file with one []byte")
				}
				s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
				if err != nil {
					t.Fatal(err)
				}
				msgs, err := splitMessages([]byte(s))
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				if fuzz == "FuzzParseInetDiag" {
					socks, err := decodeInet(nil, msgs, ipprotoTCP)
					if err != nil {
						t.Fatal(err)
					}
					n = len(socks)
				} else {
					socks, err := decodeUnix(nil, msgs)
					if err != nil {
						t.Fatal(err)
					}
					n = len(socks)
				}
				if n == 0 || n != len(msgs) {
					t.Errorf("%d messages decoded into %d sockets", len(msgs), n)
				}
			})
		}
	}
}
