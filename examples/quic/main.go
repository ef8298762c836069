// Command quic is an HTTP/3 server on quic-go that keeps its connections
// across baton reloads.
//
// It takes its UDP socket from baton (baton.PacketConn; alone, it binds
// -addr itself). baton keeps each peer's datagrams on the worker that
// first got them (docs/udp.md), so when a reload starts a new
// generation, the connections this worker holds stay with it: on the stop
// signal it keeps serving them (new clients go to the new generation)
// until they have all closed or -grace has passed, then sends them
// GOAWAY (HTTP/3's graceful close: clients finish their requests and open
// a new connection, to the new generation), releases its flows
// (baton.ReleaseFlows) and exits.
//
// From the top of the repository, after make build:
//
//	bin/baton run -l quic=udp://127.0.0.1:4433 -n 2 --balance reuseport \
//	    --ready notify --drain-timeout 2m -- bin/quic -grace 90s
//
// With ?flows=quic on the listener, its connection IDs carry the cookie
// baton gives it (package quicid): a client whose address changes (NAT
// rebinding, a new network) keeps its connection with this worker.
//
// It answers every request with the process that served it, so that a
// client sees which worker holds its connection. examples/quic/README.md
// says how to watch a connection survive reloads.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/baton-dev/baton"
	"github.com/baton-dev/baton/quicid"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4433", "UDP address to listen on when not run by baton")
	grace := flag.Duration("grace", 30*time.Second, "how long a draining worker keeps serving its connections before it sends them GOAWAY")
	certFile := flag.String("cert", "", "TLS certificate (PEM); a self-signed one for localhost when empty")
	keyFile := flag.String("key", "", "TLS key (PEM)")
	flag.Parse()
	if err := run(*addr, *grace, *certFile, *keyFile); err != nil {
		log.Fatal(err)
	}
}

func run(addr string, grace time.Duration, certFile, keyFile string) error {
	pc, err := baton.PacketConn("quic", addr)
	if err != nil {
		return err
	}
	cert, err := loadCert(certFile, keyFile)
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: pc}
	// With flows=quic, every connection ID this worker issues starts with
	// its cookie: a client that changes address stays with this worker.
	gen, err := quicid.FromEnv("quic")
	if err != nil {
		return err
	}
	if gen != nil {
		tr.ConnectionIDGenerator = gen
		log.Printf("QUIC connection IDs start with cookie %s", gen.Cookie())
	}
	tlsConf := http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})
	ln, err := tr.ListenEarly(tlsConf, &quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	cl := &countingListener{EarlyListener: ln}
	hello := fmt.Sprintf("pid %d generation %d\n", os.Getpid(), baton.Generation())
	srv := &http3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, hello)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeListener(cl) }()
	baton.Ready()
	log.Printf("serving HTTP/3 on %s", pc.LocalAddr())

	select {
	case err := <-served:
		return err
	case <-baton.Stopping():
	}
	// New clients go to the next generation from now on; the
	// connections this worker holds stay here until they close.
	deadline := time.Now().Add(grace)
	for cl.open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	log.Printf("draining: %d connections open; sending GOAWAY", cl.open.Load())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	// No datagram comes here any more once this returns: read what is
	// queued (the transport does), then close.
	if err := baton.ReleaseFlows(); err != nil {
		log.Print(err)
	}
	time.Sleep(100 * time.Millisecond)
	return tr.Close()
}

// countingListener counts the connections open.
type countingListener struct {
	*quic.EarlyListener
	open atomic.Int64
}

// Accept is the listener's, counting the connection until it closes.
func (l *countingListener) Accept(ctx context.Context) (*quic.Conn, error) {
	c, err := l.EarlyListener.Accept(ctx)
	if err == nil {
		l.open.Add(1)
		go func() {
			<-c.Context().Done()
			l.open.Add(-1)
		}()
	}
	return c, err
}

// loadCert loads the certificate, or makes a self-signed one for
// localhost and 127.0.0.1.
func loadCert(certFile, keyFile string) (tls.Certificate, error) {
	if certFile != "" {
		return tls.LoadX509KeyPair(certFile, keyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	tmpl.IPAddresses = append(tmpl.IPAddresses, []byte{127, 0, 0, 1})
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
