package main

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// childEnv marks a test binary exec'd as the CLI by a command that runs
// itself in child processes (bench kernel runs each shape in one).
const childEnv = "RINGATTN_CLI_TEST_CHILD"

// TestMain lets the test binary stand in for the ringattn binary when
// bench kernel execs os.Executable() under a test that set childEnv.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "bench" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// gradProblem is a small ragged causal GQA cross-attention problem with
// packed documents: Hq = 4 query heads share Hkv = 2 key/value heads.
type gradProblem struct {
	b, hq, hkv, n, nk, d int
	q, k, v, do          *tensor.Tensor
	maskArgs             []string
	ref                  attnref.Problem
}

func newGradProblem() *gradProblem {
	g := &gradProblem{b: 2, hq: 4, hkv: 2, n: 29, nk: 37, d: 8,
		maskArgs: []string{"--causal", "--seqlens", "12,17", "--seqlens-k", "15,22"}}
	r := testrand.New(11)
	g.q = tensor.New(r.Slice(g.b*g.hq*g.n*g.d, testrand.Normal), g.b, g.hq, g.n, g.d)
	g.k = tensor.New(r.Slice(g.b*g.hkv*g.nk*g.d, testrand.Normal), g.b, g.hkv, g.nk, g.d)
	g.v = tensor.New(r.Slice(g.b*g.hkv*g.nk*g.d, testrand.Normal), g.b, g.hkv, g.nk, g.d)
	g.do = tensor.New(r.Slice(g.b*g.hq*g.n*g.d, testrand.Normal), g.b, g.hq, g.n, g.d)
	g.ref = attnref.Problem{B: g.b, Hq: g.hq, Hkv: g.hkv, N: g.n, Nk: g.nk, D: g.d,
		Mask: attnref.Mask{Causal: true, SeqLens: []int{12, 17}, SeqLensK: []int{15, 22}}}
	return g
}

// write stores the inputs in dir (transposed to [B,N,H,D] when bnhd) and
// returns the paths by name: q, k, v, do.
func (g *gradProblem) write(t *testing.T, dir string, bnhd bool) map[string]string {
	t.Helper()
	paths := map[string]string{}
	for name, x := range map[string]*tensor.Tensor{"q": g.q, "k": g.k, "v": g.v, "do": g.do} {
		if bnhd {
			x = swapHN(x)
		}
		paths[name] = filepath.Join(dir, name+".npy")
		if err := tensor.WriteNPY(paths[name], x); err != nil {
			t.Fatal(err)
		}
	}
	return paths
}

// readNPY reads path and checks its shape.
func readNPY(t *testing.T, path string, shape ...int) *tensor.Tensor {
	t.Helper()
	x, err := tensor.ReadNPY(path)
	if err != nil {
		t.Fatal(err)
	}
	if !equalInts(x.Shape, shape) {
		t.Fatalf("%s has shape %v, want %v", path, x.Shape, shape)
	}
	return x
}

// closeTo fails unless max |got - want| <= 2e-4 · max(1, max |want|).
func closeTo(t *testing.T, what string, got []float32, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	var scale, diff float64 = 1, 0
	for i, w := range want {
		scale = math.Max(scale, math.Abs(w))
		d := math.Abs(float64(got[i]) - w)
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		diff = math.Max(diff, d)
	}
	if diff > 2e-4*scale {
		t.Errorf("%s: max |got - ref| = %g, want <= %g (2e-4 × %g)", what, diff, 2e-4*scale, scale)
	}
}

// TestCLIAttendGradients: attend --do gives dq, dk, dv equal to the
// float64 reference's gradients of sum(O·dO), locally and on in-process
// rings, with files of q's and k's shapes.
func TestCLIAttendGradients(t *testing.T) {
	g := newGradProblem()
	dir := t.TempDir()
	in := g.write(t, dir, false)
	rq, rk, rv := g.ref.Backward(g.q.Data, g.k.Data, g.v.Data, g.do.Data)
	refO, _ := g.ref.Attention(g.q.Data, g.k.Data, g.v.Data)
	for _, mode := range [][]string{nil, {"--ranks", "3", "--block", "8"}, {"--ranks", "2", "--block", "5", "--strategy", "striped"},
		{"--cluster", "2", "--block", "8"}} {
		out := map[string]string{}
		for _, name := range []string{"o", "dq", "dk", "dv"} {
			out[name] = filepath.Join(dir, "out_"+name+".npy")
			os.Remove(out[name])
		}
		args := append([]string{"attend", "-q", in["q"], "-k", in["k"], "-v", in["v"], "-o", out["o"],
			"--do", in["do"], "--dq", out["dq"], "--dk", out["dk"], "--dv", out["dv"]}, g.maskArgs...)
		code, stdout, stderr := cli(t, append(args, mode...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", mode, code, stderr)
		}
		if stdout != "" || !(strings.Contains(stderr, "gradients in") || strings.Contains(stderr, "forward+backward job in")) ||
			!strings.Contains(stderr, out["dk"]) {
			t.Errorf("%v: stdout %q, stderr %q; want a gradients line naming the files", mode, stdout, stderr)
		}
		closeTo(t, "o", readNPY(t, out["o"], g.b, g.hq, g.n, g.d).Data, refO)
		closeTo(t, "dq", readNPY(t, out["dq"], g.b, g.hq, g.n, g.d).Data, rq)
		closeTo(t, "dk", readNPY(t, out["dk"], g.b, g.hkv, g.nk, g.d).Data, rk)
		closeTo(t, "dv", readNPY(t, out["dv"], g.b, g.hkv, g.nk, g.d).Data, rv)
	}
}

// TestCLIAttendGradientsBNHD: with --layout bnhd, dO is read and dq, dk,
// dv are written as [B,N,H,D]: the bhnd gradients transposed, bit for bit.
func TestCLIAttendGradientsBNHD(t *testing.T) {
	g := newGradProblem()
	dir := t.TempDir()
	grads := func(sub string, bnhd bool, extra ...string) map[string]*tensor.Tensor {
		d := filepath.Join(dir, sub)
		if err := os.Mkdir(d, 0o777); err != nil {
			t.Fatal(err)
		}
		in := g.write(t, d, bnhd)
		args := []string{"attend", "-q", in["q"], "-k", in["k"], "-v", in["v"], "-o", filepath.Join(d, "o.npy"), "--do", in["do"]}
		for _, name := range []string{"dq", "dk", "dv"} {
			args = append(args, "--"+name, filepath.Join(d, name+".npy"))
		}
		if code, _, stderr := cli(t, append(append(args, g.maskArgs...), extra...)...); code != 0 {
			t.Fatalf("%s: exit %d: %s", sub, code, stderr)
		}
		out := map[string]*tensor.Tensor{}
		for _, name := range []string{"o", "dq", "dk", "dv"} {
			x, err := tensor.ReadNPY(filepath.Join(d, name+".npy"))
			if err != nil {
				t.Fatal(err)
			}
			out[name] = x
		}
		return out
	}
	for _, mode := range [][]string{nil, {"--ranks", "3", "--block", "8"}} {
		sub := "r" + strconv.Itoa(len(mode))
		bhnd := grads(sub+"bhnd", false, mode...)
		bnhd := grads(sub+"bnhd", true, append([]string{"--layout", "bnhd"}, mode...)...)
		for _, name := range []string{"o", "dq", "dk", "dv"} {
			got, want := bnhd[name], swapHN(bhnd[name])
			if !equalInts(got.Shape, want.Shape) {
				t.Fatalf("%v %s: bnhd shape %v, want %v", mode, name, got.Shape, want.Shape)
			}
			for i := range want.Data {
				if got.Data[i] != want.Data[i] {
					t.Fatalf("%v %s: bnhd differs from bhnd's transposed at %d: %v vs %v", mode, name, i, got.Data[i], want.Data[i])
				}
			}
		}
	}
}

// TestCLIAttendGradientsRefused: incomplete gradient flags, a dO of the
// wrong shape, a non-finite dO and an unwritable gradient path are exit 2
// with one line naming the flag, and nothing is written.
func TestCLIAttendGradientsRefused(t *testing.T) {
	g := newGradProblem()
	dir := t.TempDir()
	in := g.write(t, dir, false)
	o := filepath.Join(dir, "o.npy")
	dq, dk, dv := filepath.Join(dir, "dq.npy"), filepath.Join(dir, "dk.npy"), filepath.Join(dir, "dv.npy")
	base := []string{"attend", "-q", in["q"], "-k", in["k"], "-v", in["v"], "-o", o, "--causal"}
	nan := filepath.Join(dir, "nan_do.npy")
	bad := append([]float32(nil), g.do.Data...)
	bad[7] = float32(math.NaN())
	if err := tensor.WriteNPY(nan, tensor.New(bad, g.do.Shape...)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no --do", append(append([]string{}, base...), "--dq", dq, "--dk", dk, "--dv", dv), "--do is required"},
		{"no --dq", append(append([]string{}, base...), "--do", in["do"], "--dk", dk, "--dv", dv), "--dq is required"},
		{"no --dk", append(append([]string{}, base...), "--do", in["do"], "--dq", dq, "--dv", dv), "--dk is required"},
		{"no --dv", append(append([]string{}, base...), "--do", in["do"], "--dq", dq, "--dk", dk), "--dv is required"},
		{"dO shaped like k", append(append([]string{}, base...), "--do", in["k"], "--dq", dq, "--dk", dk, "--dv", dv), "--do has shape [2 2 37 8], expected the shape of -q [2 4 29 8]"},
		{"dO not finite", append(append([]string{}, base...), "--do", nan, "--dq", dq, "--dk", dk, "--dv", dv), "--do:"},
		{"dk unwritable", append(append([]string{}, base...), "--do", in["do"], "--dq", dq, "--dk", filepath.Join(dir, "nope", "dk.npy"), "--dv", dv), "--dk"},
	}
	for _, c := range cases {
		wantUsage(t, c.name, o, c.args...)
		_, _, stderr := cli(t, c.args...)
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%s: stderr %q, want it to name %q", c.name, stderr, c.want)
		}
		for _, p := range []string{dq, dk, dv} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s: %s was written", c.name, p)
			}
		}
	}
}

// mhaFiles writes a 3-head layer with biases, x [2, 11, 12] and dY like x.
func mhaFiles(t *testing.T, dir string) (paths map[string]string, ts map[string]*tensor.Tensor) {
	t.Helper()
	const b, n, dModel, hd = 2, 11, 12, 3 * 4
	r := testrand.New(21)
	shapes := map[string][]int{"x": {b, n, dModel}, "dy": {b, n, dModel}, "wq": {hd, dModel}, "wk": {hd, dModel},
		"wv": {hd, dModel}, "wo": {dModel, hd}, "bq": {hd}, "bk": {hd}, "bv": {hd}, "bo": {dModel}}
	paths, ts = map[string]string{}, map[string]*tensor.Tensor{}
	for _, name := range []string{"x", "dy", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"} {
		s := shapes[name]
		size := 1
		for _, x := range s {
			size *= x
		}
		data := r.Slice(size, testrand.Normal)
		if name[0] == 'w' {
			for i := range data {
				data[i] *= 0.3 // keep the scores moderate
			}
		}
		ts[name] = tensor.New(data, s...)
		paths[name] = filepath.Join(dir, "mha_"+name+".npy")
		if err := tensor.WriteNPY(paths[name], ts[name]); err != nil {
			t.Fatal(err)
		}
	}
	return paths, ts
}

// TestCLIMHAGradients: mha --dy --grads writes y and the gradients of
// sum(y·dY) equal to the float64 reference's, with and without biases,
// into a directory it creates, locally, on in-process rings (--ranks, a
// ragged last block) and as a forward+backward job on an embedded
// cluster (--cluster); the refusals are exit 2 naming the flag.
func TestCLIMHAGradients(t *testing.T) {
	dir := t.TempDir()
	paths, ts := mhaFiles(t, dir)
	const heads = 3
	x := ts["x"]
	m := attnref.MHA{B: x.Shape[0], N: x.Shape[1], DModel: x.Shape[2], Heads: heads, D: 4, Mask: attnref.Mask{Causal: true}}
	data := func(name string, bias bool) []float32 {
		if name[0] == 'b' && !bias {
			return nil
		}
		return ts[name].Data
	}
	for i, tc := range []struct {
		bias bool
		mode []string
	}{{true, nil}, {false, nil}, {true, []string{"--ranks", "3", "--block", "4"}}, {false, []string{"--ranks", "2", "--block", "3", "--strategy", "striped"}},
		{true, []string{"--cluster", "2", "--block", "4"}}, {false, []string{"--cluster", "1", "--block", "4"}}} {
		bias := tc.bias
		gdir := filepath.Join(dir, "grads_"+strconv.Itoa(i), "sub")
		y := filepath.Join(dir, "y.npy")
		args := []string{"mha", "-x", paths["x"], "--heads", strconv.Itoa(heads), "--causal", "-o", y, "--dy", paths["dy"], "--grads", gdir}
		ws := []string{"wq", "wk", "wv", "wo"}
		if bias {
			ws = append(ws, "bq", "bk", "bv", "bo")
		}
		for _, w := range ws {
			args = append(args, "--"+w, paths[w])
		}
		code, _, stderr := cli(t, append(args, tc.mode...)...)
		if code != 0 {
			t.Fatalf("bias=%v %v: exit %d: %s", bias, tc.mode, code, stderr)
		}
		onCluster := len(tc.mode) > 0 && tc.mode[0] == "--cluster"
		if !strings.Contains(stderr, gdir+"/{dx,dwq,dwk,dwv,dwo") || onCluster != strings.Contains(stderr, "forward+backward job") {
			t.Errorf("bias=%v %v: stderr %q, want the line naming the gradient files", bias, tc.mode, stderr)
		}
		ref := m.Backward(x.Data, data("wq", bias), data("wk", bias), data("wv", bias), data("wo", bias),
			data("bq", bias), data("bk", bias), data("bv", bias), data("bo", bias), ts["dy"].Data)
		closeTo(t, "y", readNPY(t, y, x.Shape...).Data, m.Forward(x.Data, data("wq", bias), data("wk", bias), data("wv", bias), data("wo", bias),
			data("bq", bias), data("bk", bias), data("bv", bias), data("bo", bias)))
		want := map[string][]float64{"dx": ref.DX, "dwq": ref.DWq, "dwk": ref.DWk, "dwv": ref.DWv, "dwo": ref.DWo,
			"dbq": ref.DBq, "dbk": ref.DBk, "dbv": ref.DBv, "dbo": ref.DBo}
		for name, w := range want {
			path := filepath.Join(gdir, name+".npy")
			if name[1] == 'b' && !bias {
				if _, err := os.Stat(path); err == nil {
					t.Errorf("bias=false: %s written", path)
				}
				continue
			}
			like := ts[strings.TrimPrefix(name, "d")]
			closeTo(t, name+" bias="+strconv.FormatBool(bias), readNPY(t, path, like.Shape...).Data, w)
		}
	}
	base := []string{"mha", "-x", paths["x"], "--heads", "3", "--wq", paths["wq"], "--wk", paths["wk"], "--wv", paths["wv"], "--wo", paths["wo"]}
	y := filepath.Join(dir, "refused_y.npy")
	gdir := filepath.Join(dir, "refused")
	notDir := paths["x"]
	for _, c := range []struct {
		name, want string
		args       []string
	}{
		{"no --grads", "--grads is required", []string{"-o", y, "--dy", paths["dy"]}},
		{"no --dy", "--dy is required", []string{"-o", y, "--grads", gdir}},
		{"dY shape", "--dy has shape [12 12], expected the shape of -x [2 11 12]", []string{"-o", y, "--dy", paths["wq"], "--grads", gdir}},
		{"grads a file", "--grads " + notDir + " is not a directory", []string{"-o", y, "--dy", paths["dy"], "--grads", notDir}},
	} {
		args := append(append([]string{}, base...), c.args...)
		wantUsage(t, c.name, y, args...)
		if _, _, stderr := cli(t, args...); !strings.Contains(stderr, c.want) {
			t.Errorf("%s: stderr %q, want %q", c.name, stderr, c.want)
		}
		if _, err := os.Stat(gdir); err == nil {
			t.Errorf("%s: %s was created", c.name, gdir)
		}
	}
}

// TestCLIBenchBackward: bench kernel --backward and bench ring --backward
// run on tiny shapes and print the backward columns; without --backward
// the kernel table keeps its columns.
func TestCLIBenchBackward(t *testing.T) {
	t.Setenv(childEnv, "1")
	code, out, stderr := cli(t, "bench", "kernel", "--seq", "96", "--dim", "16", "--heads", "2", "--runs", "1", "--backward")
	if code != 0 {
		t.Fatalf("bench kernel --backward: exit %d: %s", code, stderr)
	}
	rows := tableRows(out, "| B | H | N | D | mask | time (s) |")
	if len(rows) != 2 {
		t.Fatalf("bench kernel --backward: %d rows, want 2:\n%s", len(rows), out)
	}
	if !strings.Contains(out, "| backward (s) | backward GFLOP/s | backward % of peak | backward / forward time |") ||
		!strings.Contains(out, "2.5×") {
		t.Errorf("bench kernel --backward: header or note missing:\n%s", out)
	}
	for _, r := range rows {
		if len(r) != 13 {
			t.Fatalf("row %v has %d cells, want 13", r, len(r))
		}
		for i, what := range map[int]string{5: "forward time", 9: "backward time"} {
			if x, err := strconv.ParseFloat(r[i], 64); err != nil || x < 0 { // 4 decimals: may show 0.0000
				t.Errorf("row %v: %s %q, want a number >= 0", r, what, r[i])
			}
		}
		gf := positive(t, "forward GFLOP/s", r[6])
		bgf := positive(t, "backward GFLOP/s", r[10])
		positive(t, "backward % of peak", r[11])
		ratio := positive(t, "backward / forward", r[12])
		// Backward GFLOP/s counts 2.5× the forward's FLOPs: the time ratio
		// is 2.5·gf/bgf (the printed times are too coarse at this size).
		if want := 2.5 * gf / bgf; math.Abs(ratio-want) > 0.12*want+0.02 {
			t.Errorf("row %v: backward / forward %g, want 2.5 × %g / %g = %g", r, ratio, gf, bgf, want)
		}
	}
	code, out, stderr = cli(t, "bench", "kernel", "--seq", "64", "--dim", "16", "--heads", "1", "--runs", "1", "--mask", "none")
	if rows := tableRows(out, "| B | H | N | D | mask | time (s) |"); code != 0 || len(rows) != 1 || len(rows[0]) != 9 || strings.Contains(out, "backward") {
		t.Errorf("bench kernel without --backward: exit %d, stderr %q, output:\n%s", code, stderr, out)
	}

	code, out, stderr = cli(t, "bench", "ring", "--seq", "384", "--dim", "16", "--heads", "2", "--ranks", "2,3",
		"--block", "32", "--runs", "1", "--backward")
	if code != 0 {
		t.Fatalf("bench ring --backward: exit %d: %s", code, stderr)
	}
	if fwd := tableRows(out, "| B | H | N | D | mask | R | strategy | kernel (s) |"); len(fwd) != 4 {
		t.Errorf("bench ring --backward: %d forward rows, want 4:\n%s", len(fwd), out)
	}
	brows := tableRows(out, "| B | H | N | D | mask | R | strategy | kernel bwd (s) |")
	if len(brows) != 4 {
		t.Fatalf("bench ring --backward: %d backward rows, want 4:\n%s", len(brows), out)
	}
	for _, r := range brows {
		if len(r) != 15 {
			t.Fatalf("row %v has %d cells, want 15", r, len(r))
		}
		// Times print with 3 decimals: a tiny shape may show 0.000.
		for i, what := range map[int]string{7: "kernel bwd time", 8: "ring bwd time", 10: "kernel bwd CPU", 11: "ring bwd CPU"} {
			if x, err := strconv.ParseFloat(r[i], 64); err != nil || x < 0 {
				t.Errorf("row %v: %s %q, want a number >= 0", r, what, r[i])
			}
		}
		positive(t, "ring bwd GFLOP/s", r[13])
		if d, err := strconv.ParseFloat(r[14], 64); err != nil || d > benchGradTolerance {
			t.Errorf("row %v: max rel diff %q, want <= %g", r, r[14], benchGradTolerance)
		}
	}
}
