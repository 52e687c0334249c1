package tensor

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The fuzz targets' seed corpora live in testdata/fuzz/<FuzzName>/, where
// `go test` runs every entry as a regular test. seedCorpora builds the seeds
// (the numpy fixtures, every bad input of the rejection tables, and encodings
// in every dtype and byte order); `go test -run TestTensorFuzzSeeds -update`
// writes them, and TestTensorFuzzSeeds checks they are all committed.
// Inputs found by fuzzing are committed next to them under their own names.

// checkDecodeAlloc fails if decoding the n-byte input allocated more than
// factor·n plus slack for errors: the float32 data is at most 2 bytes per
// input byte, one read chunk and the header copy add 2 more for .npy, and a
// .safetensors header's tables cost up to stAllocFactor per byte.
func checkDecodeAlloc(t *testing.T, n, factor int, alloc uint64) {
	t.Helper()
	if limit := uint64(factor*n) + 64<<10; alloc > limit {
		t.Fatalf("decoding %d bytes allocated %d bytes, want <= %d", n, alloc, limit)
	}
}

func checkFuzzError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("error %q wraps neither ErrFormat nor ErrUnsupported", err)
	}
}

func FuzzReadNPY(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var x *Tensor
		var err error
		alloc := allocated(func() { x, err = DecodeNPY(b) })
		checkDecodeAlloc(t, len(b), 4, alloc)
		if err != nil {
			if x != nil {
				t.Fatalf("a tensor and an error %v", err)
			}
			checkFuzzError(t, err)
			return
		}
		if err := x.Validate(); err != nil {
			t.Fatalf("decoded an invalid tensor: %v", err)
		}
		if 2*x.Len() > len(b) {
			t.Fatalf("%d elements from a %d-byte file", x.Len(), len(b))
		}
		var buf bytes.Buffer
		if err := EncodeNPY(&buf, x); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		y, err := DecodeNPY(buf.Bytes())
		if err != nil {
			t.Fatalf("decoding the re-encoded file: %v", err)
		}
		if !reflect.DeepEqual(y.Shape, x.Shape) || !sameBits(y.Data, x.Data) {
			t.Fatalf("re-encoding changed %v to %v", x, y)
		}
	})
}

func FuzzReadSafetensors(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var m map[string]*Tensor
		var err error
		alloc := allocated(func() { m, err = DecodeSafetensors(b) })
		checkDecodeAlloc(t, len(b), stAllocFactor, alloc)
		sf, openErr := OpenSafetensors(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			if m != nil {
				t.Fatalf("tensors and an error %v", err)
			}
			checkFuzzError(t, err)
			if openErr != nil {
				checkFuzzError(t, openErr)
				return
			}
			// The header is valid, so only a non-float dtype can fail.
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("valid header but reading failed: %v", err)
			}
			checkHeaderJSON(t, b, sf)
			for _, name := range sf.Names() {
				if _, err := sf.Tensor(name); err != nil {
					if info, _ := sf.Info(name); stFloat[info.DType] != 0 {
						t.Fatalf("float tensor %q: %v", name, err)
					}
				}
			}
			return
		}
		if openErr != nil {
			t.Fatalf("read all tensors but OpenSafetensors failed: %v", openErr)
		}
		checkHeaderJSON(t, b, sf)
		total := 0
		for name, x := range m {
			if err := x.Validate(); err != nil {
				t.Fatalf("%q: decoded an invalid tensor: %v", name, err)
			}
			info, ok := sf.Info(name)
			if !ok || !reflect.DeepEqual(info.Shape, x.Shape) || info.End-info.Begin != int64(x.Len()*stDTypes[info.DType]) {
				t.Fatalf("%q: Info %+v does not describe %v", name, info, x)
			}
			total += x.Len()
		}
		if 2*total > len(b) {
			t.Fatalf("%d elements from a %d-byte file", total, len(b))
		}
		var buf bytes.Buffer
		if err := EncodeSafetensors(&buf, m, sf.Metadata(), Float32); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		m2, err := DecodeSafetensors(buf.Bytes())
		if err != nil {
			t.Fatalf("decoding the re-encoded file: %v", err)
		}
		if len(m2) != len(m) {
			t.Fatalf("re-encoding changed the tensor count %d to %d", len(m), len(m2))
		}
		for name, x := range m {
			if y := m2[name]; y == nil || !reflect.DeepEqual(y.Shape, x.Shape) || !sameBits(y.Data, x.Data) {
				t.Fatalf("re-encoding changed %q", name)
			}
		}
	})
}

// checkHeaderJSON checks an accepted header against encoding/json: it must
// be valid JSON whose keys are the tensor names, __metadata__ aside, and whose
// metadata decodes to the same strings.
func checkHeaderJSON(t *testing.T, b []byte, sf *Safetensors) {
	t.Helper()
	hdr := b[8 : 8+binary.LittleEndian.Uint64(b)]
	var top map[string]json.RawMessage
	if err := json.Unmarshal(hdr, &top); err != nil {
		t.Fatalf("accepted a header encoding/json rejects: %v", err)
	}
	md := map[string]string{}
	if raw, ok := top[stMetadataKey]; ok {
		if err := json.Unmarshal(raw, &md); err != nil {
			t.Fatalf("accepted metadata encoding/json rejects: %v", err)
		}
		if md == nil {
			md = map[string]string{}
		}
		delete(top, stMetadataKey)
	}
	if !reflect.DeepEqual(md, sf.Metadata()) {
		t.Fatalf("metadata %q, encoding/json reads %q", sf.Metadata(), md)
	}
	names := make([]string, 0, len(top))
	for k := range top {
		names = append(names, k)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, sf.Names()) {
		t.Fatalf("tensor names %q, encoding/json reads %q", sf.Names(), names)
	}
}

// seedCorpora returns the seeds of each fuzz target by file name.
func seedCorpora(t testing.TB) map[string]map[string][]byte {
	npy := map[string][]byte{}
	fixtures, err := filepath.Glob("testdata/*.npy")
	if err != nil || len(fixtures) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, p := range fixtures {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		npy["numpy-"+strings.TrimSuffix(filepath.Base(p), ".npy")] = b
	}
	x := New(fixtureValues(12, false), 3, 4)
	for _, dt := range []DType{Float16, Float32, Float64} {
		for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			npy[fmt.Sprintf("encoded-%v-%v", dt, order)] = encodeNPYAs(x, dt, order)
		}
	}
	for _, tc := range badNPYInputs(t) {
		npy["bad-"+tc.name] = tc.data
	}

	st := map[string][]byte{"handbuilt": handBuilt()}
	golden, err := os.ReadFile("testdata/writer.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	st["writer-golden"] = golden
	for _, dt := range []DType{Float16, BFloat16, Float32, Float64} {
		var buf bytes.Buffer
		if err := EncodeSafetensors(&buf, map[string]*Tensor{"x": x, "s": New([]float32{1})}, map[string]string{"k": "v"}, dt); err != nil {
			t.Fatal(err)
		}
		st["encoded-"+dt.String()] = buf.Bytes()
	}
	for _, tc := range badSafetensorsInputs() {
		st["bad-"+tc.name] = tc.data
	}
	return map[string]map[string][]byte{"FuzzReadNPY": npy, "FuzzReadSafetensors": st}
}

// corpusName is a stable file name for a seed.
func corpusName(name string, b []byte) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, strings.ToLower(name))
	return fmt.Sprintf("seed-%s-%x", clean[:min(len(clean), 40)], sha256.Sum256(b))[:len("seed--")+min(len(clean), 40)+8]
}

func marshalCorpus(b []byte) []byte {
	return []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n")
}

// TestTensorFuzzSeeds checks that the committed seed corpora hold every seed
// (run with -update to write them).
func TestTensorFuzzSeeds(t *testing.T) {
	for target, seeds := range seedCorpora(t) {
		dir := filepath.Join("testdata", "fuzz", target)
		names := make([]string, 0, len(seeds))
		for name := range seeds {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			path := filepath.Join(dir, corpusName(name, seeds[name]))
			want := marshalCorpus(seeds[name])
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("seed %s/%s is not committed (run with -update): %v", target, name, err)
				continue
			}
			if !bytes.Equal(got, want) {
				t.Errorf("seed %s differs from its generator (run with -update)", path)
			}
		}
	}
}

// TestTensorFuzzCorpusParses makes sure every committed corpus file is in
// the format `go test` reads, so no entry is silently skipped.
func TestTensorFuzzCorpusParses(t *testing.T) {
	for _, target := range []string{"FuzzReadNPY", "FuzzReadSafetensors"} {
		files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
		if len(files) < 20 {
			t.Errorf("%s has %d corpus files, want the committed seeds", target, len(files))
		}
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.SplitN(string(b), "\n", 2)
			if lines[0] != "go test fuzz v1" || len(lines) < 2 || !strings.HasPrefix(lines[1], "[]byte(") {
				t.Errorf("%s is not a go fuzz corpus file", p)
			}
		}
	}
}
