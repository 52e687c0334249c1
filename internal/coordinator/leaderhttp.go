package coordinator

import (
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Where the leader's status page is (DESIGN.md, "Ops endpoints"). The
// leader advertises its ops HTTP address in the metadata of the API micro
// service it registers ("http": "http://host:port/"). A follower's status
// page asks the service's INFO on NATS ($SRV.INFO.<service>), keeps the
// answer whose "node" is the Raft leader it knows, and links it; nothing
// about HTTP addresses is replicated.

// metaHTTP is the micro service metadata key of the leader's ops URL.
const metaHTTP = "http"

// leaderHTTPTTL is how long a follower reuses a looked-up leader URL.
const leaderHTTPTTL = 5 * time.Second

type leaderURL struct {
	node, url string
	at        time.Time
}

// leaderURLCache holds the last lookup (atomic: no lock to order).
type leaderURLCache = atomic.Pointer[leaderURL]

// httpURL is the URL others reach this node's ops HTTP at ("" when HTTP
// is off): Config.HTTPAdvertise, else the listen address with an
// unspecified host (0.0.0.0, ::) replaced by the host name.
func (c *Coordinator) httpURL() string {
	addr := c.cfg.HTTPAdvertise
	if addr == "" {
		addr = c.HTTPAddr()
		if addr == "" {
			return ""
		}
		if host, port, err := net.SplitHostPort(addr); err == nil {
			if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
				if h, err := os.Hostname(); err == nil {
					addr = net.JoinHostPort(h, port)
				}
			}
		}
	}
	return "http://" + addr + "/"
}

// leaderHTTP returns the ops URL of the leader named leaderID ("" when
// unknown): this node's own when it leads, else the advertised one.
func (c *Coordinator) leaderHTTP(leaderID string) string {
	if leaderID == "" {
		return ""
	}
	if leaderID == c.cfg.NodeID {
		return c.httpURL()
	}
	now := c.now()
	if u := c.leaderURL.Load(); u != nil && u.node == leaderID && now.Sub(u.at) < leaderHTTPTTL {
		return u.url
	}
	url := c.lookupLeaderHTTP(leaderID, 300*time.Millisecond)
	c.leaderURL.Store(&leaderURL{node: leaderID, url: url, at: now})
	return url
}

// lookupLeaderHTTP asks every instance of the API service for its info
// and returns the ops URL advertised by node leaderID.
func (c *Coordinator) lookupLeaderHTTP(leaderID string, wait time.Duration) string {
	meta, ok := c.conn.FindAPIInstance(wait, func(m map[string]string) bool {
		return m["node"] == leaderID && m[metaHTTP] != ""
	})
	if !ok {
		return ""
	}
	return meta[metaHTTP]
}
