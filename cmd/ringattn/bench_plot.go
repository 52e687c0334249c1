package main

import (
	"fmt"
	"math"

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

// writeBarsPNG saves a grouped bar chart (one group per label, one bar per
// series) to path; the format follows the extension (.png, .svg, .pdf).
func writeBarsPNG(path, title, ylabel string, labels []string, series []barSeries) error {
	if len(labels) == 0 {
		return fmt.Errorf("plot %s: no rows", path)
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	w := vg.Points(max(4, 60/float64(len(series)*max(1, len(labels)/4))))
	for i, s := range series {
		if len(s.values) != len(labels) {
			return fmt.Errorf("plot %s: series %s has %d values for %d labels", path, s.name, len(s.values), len(labels))
		}
		vals := make(plotter.Values, len(s.values))
		for j, v := range s.values {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				v = 0
			}
			vals[j] = v
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		b.LineStyle.Width = 0
		b.Color = plotutil.Color(i)
		b.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(b)
		p.Legend.Add(s.name, b)
	}
	p.Add(plotter.NewGrid())
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = math.Pi / 6
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop
	width := vg.Length(max(16, 2.2*float64(len(labels)))) * vg.Centimeter
	if err := p.Save(width, 12*vg.Centimeter, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
