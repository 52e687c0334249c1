package transport_test

import (
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/transport"
)

// FuzzSubjectIdentity parses fuzzed subjects the way the serving side
// reads identities from them (API tenant, worker id of heartbeats and
// reports, ring sender): a token is returned only when the subject is
// exactly the one that token makes, and every valid name survives the
// round trip.
func FuzzSubjectIdentity(f *testing.F) {
	f.Add("ringattn.api.alice.submit", "alice")
	f.Add("ringattn.api._admin.list", "_admin")
	f.Add("ringattn.api.a.b.c", "a")
	f.Add("ringattn.api..submit", "")
	f.Add("ringattn.worker.w1.heartbeat", "w1")
	f.Add("ringattn.worker.*.heartbeat", "*")
	f.Add("ringattn.worker.a.b.heartbeat", "a.b")
	f.Add("ringattn.coord.report.w2", "w2")
	f.Add("ringattn.ring.w1.j1.3.2.ack", "w1")
	f.Add("ringattn.ring", "")
	f.Fuzz(func(t *testing.T, subject, name string) {
		s := transport.NewSubjects("")
		p := s.Prefix()
		if tenant, ok := s.APITenant(subject); ok {
			_, endpoint, _ := strings.Cut(strings.TrimPrefix(subject, p+".api."), ".")
			if tenant == "" || strings.Contains(tenant, ".") || s.TenantAPI(tenant, endpoint) != subject {
				t.Fatalf("APITenant(%q) = %q: not the subject's tenant token", subject, tenant)
			}
		}
		for _, c := range []struct{ before, after string }{{p + ".worker.", ".heartbeat"}, {p + ".coord.report.", ""}} {
			if id := transport.WorkerToken(subject, c.before, c.after); id != "" &&
				(strings.Contains(id, ".") || c.before+id+c.after != subject) {
				t.Fatalf("worker token of %q = %q", subject, id)
			}
		}
		if snd := transport.RingSender(s, subject); snd != "" && (strings.Contains(snd, ".") || !strings.HasPrefix(subject, p+".ring."+snd)) {
			t.Fatalf("ring sender of %q = %q", subject, snd)
		}
		if transport.ValidateName("name", name) != nil {
			return
		}
		if got, ok := s.APITenant(s.TenantAPI(name, "submit")); !ok || got != name {
			t.Fatalf("APITenant(TenantAPI(%q)) = %q, %v", name, got, ok)
		}
		if got := transport.WorkerToken(s.WorkerHeartbeat(name), p+".worker.", ".heartbeat"); got != name {
			t.Fatalf("worker of WorkerHeartbeat(%q) = %q", name, got)
		}
		if got := transport.WorkerToken(s.WorkerReport(name), p+".coord.report.", ""); got != name {
			t.Fatalf("worker of WorkerReport(%q) = %q", name, got)
		}
		for _, subj := range []string{s.RingFrom(name, "j", 1, 2), s.RingAckFrom(name, "j", 1, 2), s.RingCtlFrom(name, "j", 1, 2)} {
			if got := transport.RingSender(s, subj); got != name {
				t.Fatalf("ring sender of %q = %q, want %q", subj, got, name)
			}
		}
	})
}
