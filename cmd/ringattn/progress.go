package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// plainEvery is how often a progress line is printed when the output is
// not a terminal (state changes and the end are printed at once).
const plainEvery = 2 * time.Second

// progressView shows client.Progress: a bar redrawn in place on a
// terminal, else a plain line at state changes, every plainEvery and at the
// end.
type progressView struct {
	w         io.Writer
	tty       bool
	now       func() time.Time
	last      time.Time // when the last plain line was printed
	lastState pb.JobState
	lastEpoch uint64
	drawn     bool // a bar is on screen without its newline
}

// isTTY reports whether w is a terminal.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newProgressView shows progress on stderr: a bar when it is a terminal,
// else plain lines (on plain, or on stderr when plain is nil).
func newProgressView(stderr, plain io.Writer) *progressView {
	if isTTY(stderr) {
		return &progressView{w: stderr, tty: true, now: time.Now}
	}
	if plain == nil {
		plain = stderr
	}
	return &progressView{w: plain, now: time.Now}
}

func shortState(s pb.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

// fmtDuration rounds d for people: 850ms, 4.2s, 3m12s.
func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// progressLine is the one-line description of p, without a bar.
func progressLine(p client.Progress) string {
	st := p.Status
	var b strings.Builder
	fmt.Fprintf(&b, "job %s %-9s", st.GetId(), shortState(st.GetState()))
	if p.Total > 0 {
		fmt.Fprintf(&b, " %3.0f%% %d/%d %s", 100*p.Fraction(), p.Done, p.Total, p.Unit)
	}
	if client.Finished(st.GetState()) {
		if p.Elapsed > 0 {
			fmt.Fprintf(&b, " in %s", fmtDuration(p.Elapsed))
		}
		if p.FinishedBeforeWatch {
			b.WriteString(" (finished before the watch began)")
		}
		if st.GetReason() != "" {
			b.WriteString("  reason: " + st.GetReason())
		}
		return b.String()
	}
	if p.RateOK {
		fmt.Fprintf(&b, "  %s %s/s", fmtRate(p.Rate), p.Unit)
	}
	if p.ETAOK {
		fmt.Fprintf(&b, "  ETA %s", fmtDuration(p.ETA))
	}
	if p.Elapsed > 0 {
		fmt.Fprintf(&b, "  elapsed %s", fmtDuration(p.Elapsed))
	}
	if st.GetEpoch() > 1 {
		fmt.Fprintf(&b, "  epoch %d (re-planned)", st.GetEpoch())
	}
	return b.String()
}

func fmtRate(r float64) string {
	switch {
	case r >= 100:
		return fmt.Sprintf("%.0f", r)
	case r >= 10:
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.2f", r)
}

// update shows p; it is the callback of client.WatchProgress.
func (v *progressView) update(p client.Progress) {
	st := p.Status
	fin := client.Finished(st.GetState())
	if v.tty {
		const width = 24
		fill := int(width * p.Fraction())
		bar := ""
		if p.Total > 0 {
			bar = "[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "] "
		}
		line := bar + progressLine(p)
		if cols := v.cols(); cols > 1 && utf8.RuneCountInString(line) >= cols {
			// A line that wraps cannot be redrawn in place: cut it to
			// the terminal's width.
			line = string([]rune(line)[:cols-1])
		}
		fmt.Fprintf(v.w, "\r%s\x1b[K", line)
		v.drawn = !fin
		if fin {
			fmt.Fprintln(v.w)
		}
		return
	}
	now := v.now()
	changed := st.GetState() != v.lastState || st.GetEpoch() != v.lastEpoch
	if !changed && !fin && now.Sub(v.last) < plainEvery {
		return
	}
	v.last, v.lastState, v.lastEpoch = now, st.GetState(), st.GetEpoch()
	fmt.Fprintln(v.w, progressLine(p))
}

// cols is the terminal's width, or 0 when unknown.
func (v *progressView) cols() int {
	f, ok := v.w.(*os.File)
	if !ok {
		return 0
	}
	w, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return w
}

// done ends a bar left without its newline (the watch ended early).
func (v *progressView) done() {
	if v.drawn {
		fmt.Fprintln(v.w)
		v.drawn = false
	}
}
