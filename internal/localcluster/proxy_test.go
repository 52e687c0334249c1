package localcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes every connection's bytes back until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c) //nolint:errcheck
			}()
		}
	}()
	return ln.Addr().String()
}

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a line and reads it back; it returns the time taken.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) time.Duration {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	start := time.Now()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if got != line+"\n" {
		t.Fatalf("echo %q, want %q", got, line+"\n")
	}
	return time.Since(start)
}

// TestProxyDelay: a set delay adds about twice itself to a round trip
// (once per direction), and clearing it restores the fast path.
func TestProxyDelay(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	r := bufio.NewReader(c)
	fast := roundTrip(t, c, r, "hello")
	const d = 100 * time.Millisecond
	p.SetDelay(d)
	slow := roundTrip(t, c, r, "delayed")
	if slow < 2*d {
		t.Fatalf("round trip with %v delay took %v, want >= %v", d, slow, 2*d)
	}
	p.SetDelay(0)
	again := roundTrip(t, c, r, "fast again")
	if again >= d {
		t.Fatalf("round trip after clearing the delay took %v, want < %v", again, d)
	}
	t.Logf("round trip: %v plain, %v with %v delay each way, %v after clearing", fast, slow, d, again)
	// The proxy counts a chunk after writing it, so the echo can reach
	// the client before its bytes are counted: poll.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Poll(ctx, PollInterval, func() error {
		if st := p.Stats(); st.Accepted != 1 || st.Up != st.Down || st.Up == 0 {
			return fmt.Errorf("stats %+v: want one connection and as many bytes each way", st)
		}
		return nil
	}, "proxy stats"); err != nil {
		t.Fatal(err)
	}
}

// TestProxyBandwidth: a bandwidth cap bounds the throughput of a transfer.
func TestProxyBandwidth(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	const rate, size = 256 << 10, 128 << 10 // 0.5 s at the cap
	p.SetBandwidth(rate)
	c := dial(t, p.Addr())
	c.SetDeadline(time.Now().Add(20 * time.Second)) //nolint:errcheck
	start := time.Now()
	go func() {
		buf := make([]byte, size)
		c.Write(buf) //nolint:errcheck
	}()
	if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	min := time.Duration(float64(size) / rate * float64(time.Second) * 0.9)
	if el < min {
		t.Fatalf("%d bytes at %d B/s took %v, want >= %v", size, rate, el, min)
	}
	t.Logf("%d KiB echoed through a %d KiB/s cap in %v", size>>10, rate>>10, el)
}

// TestProxyDropAndRefuse: DropConnections cuts live connections; with
// SetRefuse new ones are closed at once; afterwards connections work.
func TestProxyDropAndRefuse(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	c := dial(t, p.Addr())
	r := bufio.NewReader(c)
	roundTrip(t, c, r, "before")
	if n := p.DropConnections(); n != 1 {
		t.Fatalf("dropped %d connections, want 1", n)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("read on a dropped connection: %v, want EOF or reset", err)
	}
	p.SetRefuse(true)
	c2 := dial(t, p.Addr())
	c2.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a refused connection succeeded")
	}
	p.SetRefuse(false)
	c3 := dial(t, p.Addr())
	roundTrip(t, c3, bufio.NewReader(c3), "after")
	if st := p.Stats(); st.Dropped != 2 || st.Accepted != 2 {
		t.Fatalf("stats %+v: want 2 dropped (1 cut, 1 refused) and 2 accepted", st)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}
