package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	blue   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	orange = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	red    = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	purple = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}
	brown  = color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}
	gray   = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}
	mark   = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	markLo = color.NRGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0x80}
)

// wholeBin is the bin of the whole-run panels; zoom is the zoom panel's
// width, drawn at the series' own interval.
const (
	wholeBin = 0.5
	zoom     = 2.0
)

// drawReload draws one row per contender measured with loadgen: answers
// per second over the whole run, failed requests per second over the whole
// run, and both again in a 2 s zoom at the series' own resolution with
// every reload.
func drawReload(r *results, name string) error {
	var rows []*Output
	for _, c := range contenders {
		if o := r.reload[c]["loadgen"]; o != nil && len(o.Loads) > 0 {
			rows = append(rows, o)
		}
	}
	if len(rows) == 0 {
		return fmt.Errorf("no loadgen results to chart")
	}
	plots := make([][]*plot.Plot, len(rows))
	for i, o := range rows {
		plots[i] = []*plot.Plot{answersPlot(o), failedPlot(o), zoomPlot(o, false), zoomPlot(o, true)}
	}
	const dpi = 100
	w, h := 22*vg.Inch, vg.Length(len(rows))*2.8*vg.Inch+1.15*vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(dpi))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	head := draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{Min: vg.Point{X: 0, Y: h - 1.15*vg.Inch}, Max: vg.Point{X: w, Y: h}}}
	title := draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 16), XAlign: draw.XCenter, YAlign: draw.YTop, Handler: plot.DefaultTextHandler}
	sub := title
	sub.Font = font.From(plot.DefaultFont, 11)
	o := rows[0]
	head.FillText(title, vg.Point{X: w / 2, Y: h - 0.15*vg.Inch},
		fmt.Sprintf("Reload every %.0f ms under load for %.0f s: keep-alive and new-connection loads, %d connections each",
			o.EverySecs*1000, o.Seconds, o.Loads[0].Conns))
	head.FillText(sub, vg.Point{X: w / 2, Y: h - 0.45*vg.Inch},
		fmt.Sprintf("Measured with internal/loadgen (a non-retrying HTTP/1.1 client), counted every %.0f ms. %s, %s. Each panel has its own scale.",
			o.IntervalSec*1000, r.get("cpu"), r.get("date")))
	legend(head, w/2, h-0.85*vg.Inch)

	body := draw.Canvas{Canvas: dc.Canvas, Rectangle: vg.Rectangle{Max: vg.Point{X: w, Y: h - 1.15*vg.Inch}}}
	tiles := draw.Tiles{Rows: len(rows), Cols: 4, PadX: 0.35 * vg.Inch, PadY: 0.3 * vg.Inch,
		PadLeft: 0.15 * vg.Inch, PadRight: 0.2 * vg.Inch, PadBottom: 0.1 * vg.Inch}
	canvases := plot.Align(plots, tiles, body)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func answersPlot(o *Output) *plot.Plot {
	p := newPlot(fmt.Sprintf("%s: answers/s (%.1f s bins)", o.Name, wholeBin), "answers/s")
	p.X.Min, p.X.Max = 0, o.Seconds
	var top float64
	for _, l := range o.Loads {
		for _, v := range rate(l.Series, o.IntervalSec, wholeBin, func(b Bucket) int64 { return b.Requests }) {
			top = math.Max(top, v)
		}
	}
	p.Y.Min, p.Y.Max = 0, niceCeil(top*1.1)
	p.Add(marks{xs: reloadTimes(o), frac: 0.03})
	for i, l := range o.Loads {
		c := []color.Color{blue, orange}[i%2]
		addLine(p, binned(rate(l.Series, o.IntervalSec, wholeBin, func(b Bucket) int64 { return b.Requests }), wholeBin), c, 1.5, l.Name)
	}
	return p
}

// failure kinds, as drawn.
var kinds = []struct {
	name  string
	color color.Color
	get   func(Bucket) int64
}{
	{"connect", red, func(b Bucket) int64 { return b.Connect }},
	{"read/write", purple, func(b Bucket) int64 { return b.Read + b.Write }},
	{"timeout", brown, func(b Bucket) int64 { return b.Timeout }},
	{"non-2xx", gray, func(b Bucket) int64 { return b.Non2xx }},
}

func failedPlot(o *Output) *plot.Plot {
	var total int64
	for _, l := range o.Loads {
		total += l.Failed()
	}
	p := newPlot(fmt.Sprintf("%s: failed requests/s, both loads (%d in all)", o.Name, total), "failed/s")
	p.X.Min, p.X.Max = 0, o.Seconds
	p.Y.Min = 0
	p.Add(marks{xs: reloadTimes(o), frac: 0.03})
	var max float64
	for _, k := range kinds {
		sum := sumRate(o, wholeBin, k.get)
		var n float64
		for _, v := range sum {
			n += v
			max = math.Max(max, v)
		}
		if n > 0 {
			addLine(p, binned(sum, wholeBin), k.color, 1.5, k.name)
		}
	}
	p.Y.Max = niceCeil(math.Max(max*1.15, 10))
	if total == 0 {
		p.Title.Text = fmt.Sprintf("%s: failed requests/s, both loads: none", o.Name)
	}
	return p
}

func zoomPlot(o *Output, failures bool) *plot.Plot {
	from := math.Max(0, o.Seconds/2-zoom/2)
	what, unit := "answers/s", "answers/s"
	if failures {
		what, unit = "failed/s", "failed/s"
	}
	p := newPlot(fmt.Sprintf("%s: %s, zoom on %g-%g s, %.0f ms bins", o.Name, what, from, from+zoom, o.IntervalSec*1000), unit)
	p.X.Min, p.X.Max = from, from+zoom
	p.Y.Min = 0
	p.Add(marks{xs: reloadTimes(o), frac: 1})
	var max float64
	add := func(v []float64, c color.Color, width vg.Length) bool {
		xy := window(binned(v, o.IntervalSec), from, from+zoom)
		var seen bool
		for _, pt := range xy {
			max = math.Max(max, pt.Y)
			seen = seen || pt.Y > 0
		}
		if seen {
			addLine(p, xy, c, width, "")
		}
		return seen
	}
	if !failures {
		for i, l := range o.Loads {
			add(rate(l.Series, o.IntervalSec, o.IntervalSec, func(b Bucket) int64 { return b.Requests }), []color.Color{blue, orange}[i%2], 1.2)
		}
		p.Y.Max = niceCeil(max * 1.1)
		return p
	}
	var seen bool
	for _, k := range kinds {
		if add(sumRate(o, o.IntervalSec, k.get), k.color, 1.5) {
			seen = true
		}
	}
	if !seen {
		p.Title.Text = fmt.Sprintf("%s: failed/s, zoom on %g-%g s: none", o.Name, from, from+zoom)
	}
	p.Y.Max = niceCeil(math.Max(max*1.15, 10))
	return p
}

// sumRate is rate over both loads of o, added up.
func sumRate(o *Output, bin float64, get func(Bucket) int64) []float64 {
	var sum []float64
	for _, l := range o.Loads {
		v := rate(l.Series, o.IntervalSec, bin, get)
		if len(v) > len(sum) {
			sum = append(sum, make([]float64, len(v)-len(sum))...)
		}
		for i := range v {
			sum[i] += v[i]
		}
	}
	return sum
}

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = 12
	p.X.Label.Text = "seconds since the load started"
	p.Y.Label.Text = ylabel
	p.Y.Tick.Marker = countTicks{}
	p.Add(plotter.NewGrid())
	return p
}

func addLine(p *plot.Plot, xy plotter.XYs, c color.Color, width vg.Length, label string) {
	if len(xy) == 0 {
		return
	}
	l, err := plotter.NewLine(xy)
	if err != nil {
		return
	}
	l.Color = c
	l.Width = vg.Points(float64(width))
	p.Add(l)
}

// rate sums a series (one bucket per interval seconds) into bins of bin
// seconds and returns each bin's count per second.
func rate(s []Bucket, interval, bin float64, get func(Bucket) int64) []float64 {
	if interval <= 0 || len(s) == 0 {
		return nil
	}
	per := int(math.Round(bin / interval))
	if per < 1 {
		per = 1
	}
	out := make([]float64, (len(s)+per-1)/per)
	for i, b := range s {
		out[i/per] += float64(get(b))
	}
	for i := range out {
		n := per
		if rest := len(s) - i*per; rest < per {
			n = rest
		}
		out[i] /= float64(n) * interval
	}
	return out
}

// binned places bin values at their bins' middles.
func binned(v []float64, bin float64) plotter.XYs {
	xy := make(plotter.XYs, len(v))
	for i, y := range v {
		xy[i] = plotter.XY{X: (float64(i) + 0.5) * bin, Y: y}
	}
	return xy
}

func window(xy plotter.XYs, from, to float64) plotter.XYs {
	var out plotter.XYs
	for _, pt := range xy {
		if pt.X >= from && pt.X <= to {
			out = append(out, pt)
		}
	}
	return out
}

func reloadTimes(o *Output) []float64 {
	xs := make([]float64, 0, len(o.Reloads))
	for _, r := range o.Reloads {
		xs = append(xs, float64(r.At-o.Start)/1e9)
	}
	return xs
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}

// marks draws a vertical tick at each x, frac of the plot's height tall,
// from the bottom.
type marks struct {
	xs   []float64
	frac float64
}

func (m marks) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	// Lighter than the data, and drawn before it.
	sty := draw.LineStyle{Color: markLo, Width: vg.Points(1)}
	top := c.Min.Y + (c.Max.Y-c.Min.Y)*vg.Length(m.frac)
	for _, x := range m.xs {
		if x < p.X.Min || x > p.X.Max {
			continue
		}
		xx := trX(x)
		c.StrokeLine2(sty, xx, c.Min.Y, xx, top)
	}
}

// countTicks labels a count axis with whole numbers: 25,000 not 25000.00.
type countTicks struct{}

func (countTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = num(int64(math.Round(ticks[i].Value)))
		}
	}
	return ticks
}

// legend draws one legend for every panel, centred on x at y.
func legend(c draw.Canvas, x, y vg.Length) {
	entries := []struct {
		name  string
		color color.Color
	}{
		{"keep-alive answers", blue}, {"new-connection answers", orange},
		{"connect errors", red}, {"read/write errors", purple}, {"timeouts", brown}, {"non-2xx", gray},
		{"reload asked for", mark},
	}
	sty := draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 11), YAlign: draw.YCenter, Handler: plot.DefaultTextHandler}
	const swatch, gap = 0.3 * vg.Inch, 0.35 * vg.Inch
	var total vg.Length
	for _, e := range entries {
		total += swatch + 0.08*vg.Inch + sty.Width(e.name) + gap
	}
	x -= total / 2
	for _, e := range entries {
		c.StrokeLine2(draw.LineStyle{Color: e.color, Width: vg.Points(2.5)}, x, y, x+swatch, y)
		x += swatch + 0.08*vg.Inch
		c.FillText(sty, vg.Point{X: x, Y: y}, e.name)
		x += sty.Width(e.name) + gap
	}
}
