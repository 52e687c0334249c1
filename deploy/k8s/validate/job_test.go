package validate

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// writeNPY writes a float32 little-endian C-order .npy file (format 1.0).
func writeNPY(t *testing.T, path string, shape []int, data []float32) {
	t.Helper()
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = strconv.Itoa(d)
	}
	hdr := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s,), }", strings.Join(dims, ", "))
	for (10+len(hdr)+1)%64 != 0 {
		hdr += " "
	}
	hdr += "\n"
	buf := []byte("\x93NUMPY\x01\x00")
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(hdr)))
	buf = append(buf, hdr...)
	for _, v := range data {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

var npyShape = regexp.MustCompile(`'shape':\s*\(([0-9, ]*)\)`)

// readNPY reads a float32 little-endian C-order .npy file.
func readNPY(t *testing.T, path string) ([]int, []float32) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 10 || string(b[:6]) != "\x93NUMPY" {
		t.Fatalf("%s: not a .npy file", path)
	}
	var hlen, off int
	switch b[6] {
	case 1:
		hlen, off = int(binary.LittleEndian.Uint16(b[8:10])), 10
	default:
		hlen, off = int(binary.LittleEndian.Uint32(b[8:12])), 12
	}
	hdr := string(b[off : off+hlen])
	if !strings.Contains(hdr, "'<f4'") || strings.Contains(hdr, "'fortran_order': True") {
		t.Fatalf("%s: header %q: want little-endian float32, C order", path, hdr)
	}
	m := npyShape.FindStringSubmatch(hdr)
	if m == nil {
		t.Fatalf("%s: header %q has no shape", path, hdr)
	}
	var shape []int
	n := 1
	for _, f := range strings.Split(m[1], ",") {
		if f = strings.TrimSpace(f); f != "" {
			d, _ := strconv.Atoi(f)
			shape = append(shape, d)
			n *= d
		}
	}
	body := b[off+hlen:]
	if len(body) != 4*n {
		t.Fatalf("%s: %d data bytes for shape %v", path, len(body), shape)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
	}
	return shape, out
}

// causalAttention is the float64 reference: o = softmax(q·kᵀ/√d + causal)·v
// for q, k, v of shape [n, d].
func causalAttention(q, k, v []float32, n, d int) []float64 {
	o := make([]float64, n*d)
	scale := 1 / math.Sqrt(float64(d))
	s := make([]float64, n)
	for i := range n {
		mx := math.Inf(-1)
		for j := 0; j <= i; j++ {
			var dot float64
			for c := range d {
				dot += float64(q[i*d+c]) * float64(k[j*d+c])
			}
			s[j] = dot * scale
			mx = math.Max(mx, s[j])
		}
		var sum float64
		for j := 0; j <= i; j++ {
			s[j] = math.Exp(s[j] - mx)
			sum += s[j]
		}
		for j := 0; j <= i; j++ {
			for c := range d {
				o[i*d+c] += s[j] / sum * float64(v[j*d+c])
			}
		}
	}
	return o
}

// TestManifestsClusterRunsAJobAsTheREADMESays deploys the prod overlay
// locally as its manifests say (NATS from the rendered configuration, three
// coordinators from the StatefulSet, two workers from the Deployment) and
// runs a causal attention job the way README "Submit a job" does: the
// ringattn CLI with --nats and the client user's credentials from the
// Secret; then the same job as the example tenant team-a, after the admin
// created its bucket as README "Tenants" says. Each result must match a
// float64 reference within 1e-4.
func TestManifestsClusterRunsAJobAsTheREADMESays(t *testing.T) {
	ov := overlays[1]
	inv := load(t, ov)
	cli := buildBinary(t, "ringattn")
	workerBin := buildBinary(t, "worker")
	ns := startNATS(t, inv)
	cs := startCoordinators(t, inv, ov, ns)
	for i := range 2 {
		startWorker(t, inv, ov, ns, workerBin, fmt.Sprintf("ringattn-worker-5f7c9d8b4-w%d", i))
	}
	checkFor(t, 60*time.Second, 100*time.Millisecond, cs.allReady)

	const n, d = 300, 32
	rng := rand.New(rand.NewPCG(9, 1))
	gen := func() []float32 {
		x := make([]float32, n*d)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	q, k, v := gen(), gen(), gen()
	dir := t.TempDir()
	for name, x := range map[string][]float32{"q": q, "k": k, "v": v} {
		writeNPY(t, filepath.Join(dir, name+".npy"), []int{n, d}, x)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ref := causalAttention(q, k, v, n, d)
	// attend runs the job as user (and its tenant, if any) and checks the
	// output against the reference.
	attend := func(user string, env ...string) {
		pw, _ := secretsOf(inv)("ringattn-nats-auth", user+"-password")
		o := filepath.Join(dir, "o-"+user+".npy")
		// --block 64: five ragged blocks, so the ring really moves KV
		// blocks between the two workers.
		cmd := exec.CommandContext(ctx, cli, "attend", "--nats", ns.ClientURL(),
			"-q", filepath.Join(dir, "q.npy"), "-k", filepath.Join(dir, "k.npy"), "-v", filepath.Join(dir, "v.npy"),
			"-o", o, "--causal", "--block", "64")
		cmd.Env = append([]string{"RINGATTN_NATS_USER=" + user, "RINGATTN_NATS_PASSWORD=" + pw, "RINGATTN_NATS_TLS_CA=" + natsCAFile(t, inv), "HOME=" + dir, "TMPDIR=" + dir}, env...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ringattn attend --nats as %s: %v\n%s", user, err, out)
		}
		t.Logf("%s: job done in %v: %s", user, time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
		shape, got := readNPY(t, o)
		if len(got) != n*d {
			t.Fatalf("output shape %v, want [%d %d] (or [1 1 %d %d])", shape, n, d, n, d)
		}
		var maxDiff float64
		for i := range got {
			maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-ref[i]))
		}
		t.Logf("%s: max |o - o_ref| = %.3g over %d values", user, maxDiff, len(got))
		if !(maxDiff <= 1e-4) {
			t.Errorf("%s: max |o - o_ref| = %g, want <= 1e-4", user, maxDiff)
		}
	}
	attend("client")

	// A tenant, as README "Tenants" adds one: the admin creates its
	// bucket with its quota, then its user runs a job whose tensors stay
	// in that bucket.
	admin := login(t, inv, ns, userByName(t, "admin"))
	js, err := jetstream.New(admin.nc)
	if err != nil {
		t.Fatal(err)
	}
	bucket := userByName(t, "team-a").bucket
	obs := provisionBucket(ctx, t, js, bucket, 64<<20)
	attend("team-a", "RINGATTN_NATS_TENANT=team-a")
	infos, err := obs.List(ctx)
	if err != nil || len(infos) == 0 {
		t.Errorf("team-a's job left nothing in its bucket %s: %v", bucket, err)
	} else {
		t.Logf("team-a's bucket %s holds %d objects, e.g. %s", bucket, len(infos), infos[0].Name)
	}
}
