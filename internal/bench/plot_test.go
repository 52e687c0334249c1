package bench

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestBenchPlotReadable: a chart is at least 1000 px wide, its legend
// is right of the axes (the plot area's right columns stay empty above the
// bars), and NaN values are drawn as 0 with an "n/a" label, not an error.
func TestBenchPlotReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	labels := []string{"N=4096 causal", "N=16384 causal", "N=65536 full"}
	series := []barSeries{{"compute", []float64{12.5, 30, 101}}, {"end to end", []float64{20, 45.2, math.NaN()}}, {"cpu", []float64{-3, 8, 9}}}
	if err := writeBarsPNG(path, "overhead", "%", labels, series); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Width < 1000 || cfg.Height < 500 {
		t.Fatalf("plot is %dx%d px, want >= 1000 wide", cfg.Width, cfg.Height)
	}
	if err := writeBarsPNG(path, "x", "y", labels, series[:1][:0]); err != nil {
		t.Fatalf("no series: %v", err)
	}
	if err := writeBarsPNG(path, "x", "y", nil, series); err == nil {
		t.Fatal("no labels: no error")
	}
	if err := writeBarsPNG(path, "x", "y", labels[:2], series); err == nil {
		t.Fatal("series longer than labels: no error")
	}
}
