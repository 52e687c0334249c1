package validate

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// refused publishes (or, with sub, subscribes) subject as l and expects
// the server to report a permissions violation naming it.
func (l *natsLogin) refused(t *testing.T, who, what, subject string, sub bool) {
	t.Helper()
	var err error
	if sub {
		var s *nats.Subscription
		if s, err = l.nc.SubscribeSync(subject); err == nil {
			defer s.Unsubscribe() //nolint:errcheck // refused anyway
		}
	} else {
		err = l.nc.Publish(subject, []byte("x"))
	}
	if err != nil {
		t.Fatalf("%s: %s: %v", who, what, err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for l.violated(subject) == nil {
		if time.Now().After(deadline) {
			t.Errorf("%s may %s (%s): no permissions violation", who, what, subject)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// received publishes subject as from and expects to's subscription
// (made first) to get it: the positive side of each role.
func received(t *testing.T, what string, from, to *natsLogin, subject string) {
	t.Helper()
	sub, err := to.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // test end
	if err := to.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := from.nc.Publish(subject, []byte(what)); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(3 * time.Second)
	if err != nil || !bytes.Equal(m.Data, []byte(what)) {
		t.Errorf("%s (%s): not received: %v", what, subject, err)
	}
}

// provisionBucket creates tensor bucket b with its index, as README
// "Tenants" does with the nats CLI as the admin (nats object add b
// --max-bucket-size; nats kv add b-index), with quota bytes.
func provisionBucket(ctx context.Context, t *testing.T, js jetstream.JetStream, b string, quota int64) jetstream.ObjectStore {
	t.Helper()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: b, MaxBytes: quota})
	if err != nil {
		t.Fatalf("create bucket %s: %v", b, err)
	}
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b + "-index"}); err != nil {
		t.Fatalf("create index of %s: %v", b, err)
	}
	return obs
}

// objectStore provisions bucket b (as a creator: coordinator or admin)
// and puts one object in it.
func objectStore(ctx context.Context, t *testing.T, js jetstream.JetStream, b string) {
	t.Helper()
	obs := provisionBucket(ctx, t, js, b, 1<<20)
	if _, err := obs.PutBytes(ctx, "job/q/0", []byte("secret of "+b)); err != nil {
		t.Fatal(err)
	}
}

// readObject opens bucket b as js and reads its object; the caller
// bounds it with ctx (a refused request only times out).
func readObject(ctx context.Context, js jetstream.JetStream, b string) ([]byte, error) {
	obs, err := js.ObjectStore(ctx, b)
	if err != nil {
		return nil, err
	}
	return obs.GetBytes(ctx, "job/q/0")
}

// TestManifestsNATSPermissions: on each overlay's rendered NATS
// configuration the server holds every user to its role
// (docs/SECURITY.md, "Roles"): a worker cannot publish an assignment, a
// job event or an API call, nor create a bucket; a client cannot publish
// a report or a heartbeat, read another tenant's bucket or inbox; the
// tenant team-a cannot read the default tenant's bucket nor the default
// tenant team-a's; the admin creates team-a's bucket, which team-a then
// reads and writes. The allowed paths (heartbeat to coordinator,
// assignment to worker) work.
func TestManifestsNATSPermissions(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			s := startNATS(t, inv)
			as := map[string]*natsLogin{}
			for _, u := range natsUsers {
				as[u.name] = login(t, inv, s, u)
			}
			coord, worker, client, admin, teamA := as["coordinator"], as["worker"], as["client"], as["admin"], as["team-a"]

			// Allowed: a worker heartbeats as itself, the coordinator
			// assigns to it.
			received(t, "worker heartbeat", worker, coord, "ringattn.worker."+workerPod+".heartbeat")
			received(t, "worker report", worker, coord, "ringattn.coord.report."+workerPod)
			received(t, "assignment", coord, worker, "ringattn.worker."+workerPod+".assign")

			// Workers: no assignments, events, API calls.
			worker.refused(t, "worker", "publish an assignment", "ringattn.worker."+workerPod+".assign", false)
			worker.refused(t, "worker", "publish a job event", "ringattn.job.default.j1.events", false)
			worker.refused(t, "worker", "call the API", "ringattn.api.default.submit", false)
			worker.refused(t, "worker", "create a bucket", "$JS.API.STREAM.CREATE.OBJ_ringattn", false)
			worker.refused(t, "worker", "delete a bucket", "$JS.API.STREAM.DELETE.OBJ_ringattn", false)
			worker.refused(t, "worker", "read the API", "ringattn.api.*.*", true)
			// Clients: no reports, heartbeats, ring frames, other tenants.
			for name, c := range map[string]*natsLogin{"client": client, "team-a": teamA} {
				c.refused(t, name, "publish a report", "ringattn.coord.report."+workerPod, false)
				c.refused(t, name, "publish a heartbeat", "ringattn.worker."+workerPod+".heartbeat", false)
				c.refused(t, name, "publish a ring frame", "ringattn.ring."+workerPod+".j1.1.0", false)
				c.refused(t, name, "publish an assignment", "ringattn.worker."+workerPod+".assign", false)
				c.refused(t, name, "create its bucket", "$JS.API.STREAM.CREATE.OBJ_"+userByName(t, name).bucket, false)
			}
			client.refused(t, "client", "call the API as team-a", "ringattn.api.team-a.submit", false)
			teamA.refused(t, "team-a", "call the API as default", "ringattn.api.default.submit", false)
			teamA.refused(t, "team-a", "watch default's job events", "ringattn.job.default.*.events", true)
			teamA.refused(t, "team-a", "read default's replies", "_INBOX.ringattn.default.>", true)
			client.refused(t, "client", "read team-a's replies", "_INBOX.ringattn.team-a.>", true)
			client.refused(t, "client", "read the coordinator's replies", "_INBOX.ringattn._coord.>", true)
			admin.refused(t, "admin", "publish an assignment", "ringattn.worker."+workerPod+".assign", false)
			admin.refused(t, "admin", "publish a report", "ringattn.coord.report."+workerPod, false)

			// Buckets: the coordinator makes the default one, the admin
			// team-a's with its quota; each tenant reads only its own.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			jsOf := func(l *natsLogin) jetstream.JetStream {
				js, err := jetstream.New(l.nc)
				if err != nil {
					t.Fatal(err)
				}
				return js
			}
			objectStore(ctx, t, jsOf(coord), "ringattn")
			objectStore(ctx, t, jsOf(admin), "ringattn-team-a")
			for _, c := range []struct {
				who    string
				l      *natsLogin
				own    string
				others string
			}{{"team-a", teamA, "ringattn-team-a", "ringattn"}, {"client", client, "ringattn", "ringattn-team-a"}} {
				if b, err := readObject(ctx, jsOf(c.l), c.own); err != nil || string(b) != "secret of "+c.own {
					t.Errorf("%s reads its own bucket %s: %q, %v", c.who, c.own, b, err)
				}
				rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
				b, err := readObject(rctx, jsOf(c.l), c.others)
				rcancel()
				if err == nil {
					t.Errorf("%s read %q from the other tenant's bucket %s", c.who, b, c.others)
				} else if v := c.l.violated("$JS.API.STREAM.INFO.OBJ_" + c.others); v == nil {
					t.Errorf("%s opening bucket %s: %v, want a permissions violation", c.who, c.others, err)
				} else {
					t.Logf("%s cannot read %s: %v", c.who, c.others, v)
				}
				c.l.refused(t, c.who, "read the other tenant's chunks", "$O."+c.others+".>", true)
				c.l.refused(t, c.who, "purge the other tenant's bucket", "$JS.API.STREAM.PURGE.OBJ_"+c.others, false)
				c.l.refused(t, c.who, "resize its own bucket", "$JS.API.STREAM.UPDATE.OBJ_"+c.own, false)
			}
			// Workers compute every tenant's jobs: they read every bucket.
			for _, b := range []string{"ringattn", "ringattn-team-a"} {
				if got, err := readObject(ctx, jsOf(worker), b); err != nil || string(got) != "secret of "+b {
					t.Errorf("worker reads bucket %s: %q, %v", b, got, err)
				}
			}
		})
	}
}
