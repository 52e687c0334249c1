package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// This test lives in the external package: devcluster imports the HTTP
// gateway, which imports this package.
// TestClientWatchProgressReal runs a job on a real embedded cluster: the
// watch sees it finish with Done = Total, and a second watch of the
// finished job reports FinishedBeforeWatch and never a rate (the old
// watch printed 2072.6 blocks/s for a job finished long before).
func TestClientWatchProgressReal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := testrand.New(7)
	n, d := 256, 16
	mk := func() *tensor.Tensor { return tensor.New(r.Slice(n*d, testrand.Normal), 1, 1, n, d) }
	st, err := cl.SubmitAttention(ctx, mk(), mk(), mk(), false, client.JobOptions{Block: 32})
	if err != nil {
		t.Fatal(err)
	}
	var seen []client.Progress
	final, err := cl.WatchProgress(ctx, st.GetId(), func(p client.Progress) { seen = append(seen, p) })
	if err != nil {
		t.Fatal(err)
	}
	if final.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || len(seen) == 0 {
		t.Fatalf("final %v after %d updates", final.GetState(), len(seen))
	}
	last := seen[len(seen)-1]
	if last.Total <= 0 || last.Done != last.Total || last.FinishedBeforeWatch {
		t.Fatalf("last update %+v, want done = total > 0 watched live", last)
	}
	for _, p := range seen {
		if p.Done > p.Total || p.Done < 0 || (p.RateOK && !(p.Rate > 0)) {
			t.Fatalf("update %+v", p)
		}
	}
	var again []client.Progress
	if _, err := cl.WatchProgress(ctx, st.GetId(), func(p client.Progress) { again = append(again, p) }); err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || !again[0].FinishedBeforeWatch || again[0].RateOK || again[0].ETAOK || again[0].Elapsed != last.Elapsed {
		t.Fatalf("watching a finished job: %+v, want one update, finished before, no rate, the job's run time", again)
	}
}
