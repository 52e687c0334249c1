package bench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// barSeries is one bar per row of a grouped bar chart.
type barSeries struct {
	name   string
	values []float64
}

// Plot geometry: images are at least plotMinWidthPx wide (at the PNG
// canvas's 96 dpi), the legend sits in its own column right of the axes,
// and the y axis leaves plotHeadroom above the tallest bar for its label.
const (
	plotDPI        = 96
	plotMinWidthPx = 1200
	plotHeightPx   = 700
	plotLegendPx   = 260
	plotHeadroom   = 0.18
)

func pxLen(px float64) vg.Length { return vg.Length(px * 72 / plotDPI) }

// barLabel formats a bar's value for the label above it.
func barLabel(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// writeBarsPNG saves a grouped bar chart (one group per label, one bar per
// series, each bar labeled with its value) to path; the format follows the
// extension (.png, .svg, .pdf).
func writeBarsPNG(path, title, ylabel string, labels []string, series []barSeries) error {
	if len(labels) == 0 {
		return fmt.Errorf("plot %s: no rows", path)
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.Y.Label.Text = ylabel
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	legend.TextStyle.Font.Size = vg.Points(11)
	// Width per group grows with the series so value labels do not collide.
	groupPx := max(90, 46*float64(len(series)))
	widthPx := max(plotMinWidthPx, groupPx*float64(len(labels))+plotLegendPx+120)
	plotPx := widthPx - plotLegendPx
	barPx := min(44, 0.8*(plotPx-120)/float64(len(labels))/float64(max(1, len(series))))
	w := pxLen(barPx)
	lo, hi := 0.0, 0.0
	for i, s := range series {
		if len(s.values) != len(labels) {
			return fmt.Errorf("plot %s: series %s has %d values for %d labels", path, s.name, len(s.values), len(labels))
		}
		vals := make(plotter.Values, len(s.values))
		pts := make(plotter.XYs, len(s.values))
		texts := make([]string, len(s.values))
		for j, v := range s.values {
			texts[j] = barLabel(v)
			if math.IsNaN(v) || math.IsInf(v, 0) {
				v, texts[j] = 0, "n/a"
			}
			vals[j] = v
			pts[j] = plotter.XY{X: float64(j), Y: max(v, 0)}
			lo, hi = min(lo, v), max(hi, v)
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		b.LineStyle.Width = 0
		b.Color = plotutil.Color(i)
		b.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(b)
		legend.Add(s.name, b)
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: texts})
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		for k := range lb.TextStyle {
			lb.TextStyle[k].XAlign = draw.XCenter
			lb.TextStyle[k].YAlign = draw.YBottom
			lb.TextStyle[k].Font.Size = vg.Points(8)
		}
		lb.Offset = vg.Point{X: b.Offset, Y: vg.Points(2)}
		p.Add(lb)
	}
	if hi <= 0 {
		hi = 1
	}
	p.Y.Min = lo * (1 + plotHeadroom)
	p.Y.Max = hi * (1 + plotHeadroom)
	grid := plotter.NewGrid()
	grid.Vertical.Width = 0
	p.Add(grid)
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.5, float64(len(labels))-0.5
	p.X.Tick.Label.Rotation = math.Pi / 8
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop

	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	c, err := draw.NewFormattedCanvas(pxLen(widthPx), pxLen(plotHeightPx), format)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	dc := draw.New(c)
	p.Draw(draw.Crop(dc, 0, -pxLen(plotLegendPx), 0, 0))
	legendArea := draw.Crop(dc, pxLen(plotPx+16), 0, 0, -pxLen(40))
	legend.Draw(legendArea)
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
