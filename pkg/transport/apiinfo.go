package transport

import (
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// FindAPIInstance asks every instance of the API service for its info
// (the NATS micro INFO verb) and returns the metadata (APIConfig.Metadata)
// of the first instance for which match reports true, or false when none
// answers so within wait. Replies are bounded by MaxControlBytes; an
// instance answering garbage is skipped.
func (c *Conn) FindAPIInstance(wait time.Duration, match func(meta map[string]string) bool) (map[string]string, bool) {
	subj, err := micro.ControlSubject(micro.InfoVerb, c.subj.APIService(), "")
	if err != nil {
		return nil, false
	}
	ch := make(chan *nats.Msg, 16)
	sub, err := c.nc.ChanSubscribe(c.nc.NewInbox(), ch)
	if err != nil {
		return nil, false
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(subj, sub.Subject, nil); err != nil {
		return nil, false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case m := <-ch:
			if len(m.Data) > MaxControlBytes {
				continue
			}
			var info micro.Info
			if json.Unmarshal(m.Data, &info) == nil && match(info.Metadata) {
				return info.Metadata, true
			}
		case <-t.C:
			return nil, false
		}
	}
}
