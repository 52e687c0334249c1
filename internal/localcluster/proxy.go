package localcluster

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP proxy between a client (a worker) and a server (NATS)
// whose link can be degraded while it runs: added latency, a bandwidth
// cap, dropped connections, refused connections. The zero settings pass
// bytes through unchanged.
type Proxy struct {
	target string
	ln     net.Listener

	delay  atomic.Int64 // one-way added latency, ns
	bps    atomic.Int64 // bytes per second per direction; 0 = unlimited
	refuse atomic.Bool

	accepted, dropped, up, down atomic.Int64

	mu     sync.Mutex
	conns  map[*proxyConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ProxyStats are cumulative counters of a Proxy.
type ProxyStats struct {
	Accepted int64 // connections accepted and forwarded
	Dropped  int64 // connections cut by DropConnections or refused
	Up, Down int64 // bytes client->server and server->client
}

type proxyConn struct {
	client, server net.Conn
	once           sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		c.client.Close()
		c.server.Close()
	})
}

// NewProxy listens on a free 127.0.0.1 port and forwards every connection
// to target (host:port).
func NewProxy(target string) (*Proxy, error) { return NewProxyAt("127.0.0.1:0", target) }

// NewProxyAt listens on listen and forwards every connection to target.
func NewProxyAt(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's listening host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as a NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetDelay adds d of latency to each direction (a round trip grows by 2d).
// Bytes keep their order; a change applies to bytes read after it.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(max(d, 0))) }

// SetBandwidth caps each direction of each connection at bytesPerSec (0:
// unlimited).
func (p *Proxy) SetBandwidth(bytesPerSec int64) { p.bps.Store(max(bytesPerSec, 0)) }

// SetRefuse makes the proxy close new connections at once (the server
// looks unreachable) until called with false.
func (p *Proxy) SetRefuse(refuse bool) { p.refuse.Store(refuse) }

// DropConnections cuts every open connection (both sides see a reset or
// EOF) and returns how many it cut. New connections are accepted as usual.
func (p *Proxy) DropConnections() int {
	p.mu.Lock()
	cs := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
	p.dropped.Add(int64(len(cs)))
	return len(cs)
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() ProxyStats {
	return ProxyStats{Accepted: p.accepted.Load(), Dropped: p.dropped.Load(), Up: p.up.Load(), Down: p.down.Load()}
}

// Close stops listening, cuts every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.DropConnections()
	p.wg.Wait()
	return err
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if p.refuse.Load() {
			p.dropped.Add(1)
			c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close() // the server is down: so is the proxied link
			continue
		}
		pc := &proxyConn{client: c, server: s}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pc.close()
			return
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.accepted.Add(1)
		var done sync.WaitGroup
		done.Add(2)
		p.wg.Add(3)
		go func() { defer p.wg.Done(); defer done.Done(); p.pipe(pc, c, s, &p.up) }()
		go func() { defer p.wg.Done(); defer done.Done(); p.pipe(pc, s, c, &p.down) }()
		go func() {
			defer p.wg.Done()
			done.Wait()
			p.mu.Lock()
			delete(p.conns, pc)
			p.mu.Unlock()
		}()
	}
}

// chunk is bytes read at a time, forwarded no earlier than at + delay.
type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst through a queue that holds each chunk for the
// current delay and paces writes to the current bandwidth.
func (p *Proxy) pipe(pc *proxyConn, src, dst net.Conn, count *atomic.Int64) {
	defer pc.close()
	q := make(chan chunk, 256)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	var next time.Time // earliest time the next byte may go under the cap
	timer := time.NewTimer(0)
	<-timer.C
	wait := func(until time.Time) {
		if d := time.Until(until); d > 0 {
			timer.Reset(d)
			<-timer.C
		}
	}
	for c := range q {
		wait(c.at.Add(time.Duration(p.delay.Load())))
		for b := c.b; len(b) > 0; {
			n := len(b)
			if bps := p.bps.Load(); bps > 0 {
				n = min(n, int(max(bps/50, 1))) // 20 ms slices
				if now := time.Now(); next.Before(now) {
					next = now
				}
				wait(next)
				next = next.Add(time.Duration(float64(n) / float64(bps) * float64(time.Second)))
			}
			if _, err := dst.Write(b[:n]); err != nil {
				pc.close()
				for range q { // let the reader finish
				}
				return
			}
			count.Add(int64(n))
			b = b[n:]
		}
	}
	// src ended: the deferred close passes it on to both sides.
}

var _ io.Closer = (*Proxy)(nil)
