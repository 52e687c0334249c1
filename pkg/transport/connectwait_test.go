package transport_test

import (
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ringattn/ringattn/pkg/transport"
)

// TestTransportConnectWait: a server that starts after the dial began is
// reached; with nothing listening, ConnectWait gives up with ErrConnect
// once its wait is spent.
func TestTransportConnectWait(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{"nats://127.0.0.1:" + strconv.Itoa(port)}
	cfg.ConnectTimeout = 200 * time.Millisecond

	start := time.Now()
	if _, err := transport.ConnectWait(cfg, nil, 300*time.Millisecond); !errors.Is(err, transport.ErrConnect) {
		t.Fatalf("ConnectWait with no server = %v, want ErrConnect", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v, want about the 300 ms wait", d)
	}

	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	go func() {
		time.Sleep(400 * time.Millisecond)
		srv.Start()
	}()
	nc, err := transport.ConnectWait(cfg, nil, 20*time.Second)
	if err != nil {
		t.Fatalf("ConnectWait with a server starting late: %v", err)
	}
	nc.Close()
}
