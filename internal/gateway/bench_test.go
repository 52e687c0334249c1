package gateway_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// The transfer benchmarks move one job's tensors, q, k, v [1,8,16384,64]
// (96 MiB) up and o (32 MiB) down, over the HTTP job API and over the Go
// SDK, against the same in-process dev cluster. The mask (causal, window
// 16) keeps the compute negligible. MB/s counts the tensors' float32 bytes.
//
//	go test -run '^$' -bench 'BenchmarkGateway' -benchtime 5x ./internal/gateway/
const benchB, benchH, benchN, benchD = 1, 8, 16384, 64

func benchInputs(b *testing.B) (q, k, v *tensor.Tensor, body []byte, ctype string) {
	_, _, _, parts := attentionInputs(b, 9, benchB, benchH, benchH, benchN, benchN, benchD)
	ts := make([]*tensor.Tensor, 3)
	for i, p := range parts {
		t, err := tensor.DecodeNPY(p.data)
		if err != nil {
			b.Fatal(err)
		}
		ts[i] = t
	}
	ctype, body = multipartBody(b, `{"causal": true, "window": [16, 0]}`, parts...)
	return ts[0], ts[1], ts[2], body, ctype
}

func benchCluster(b *testing.B) (string, *client.Client) {
	d := cluster(b)
	cl, err := client.Connect(context.Background(), d.NATSConfig(), client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	return "http://" + d.HTTPAddr(), cl
}

func BenchmarkGatewayUploadHTTP(b *testing.B) {
	base, _ := benchCluster(b)
	_, _, _, body, ctype := benchInputs(b)
	b.SetBytes(3 * 4 * benchB * benchH * benchN * benchD)
	b.ResetTimer()
	for range b.N {
		resp, err := http.Post(base+"/v1/jobs", ctype, bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			b.Fatalf("submit: %d", resp.StatusCode)
		}
	}
}

func BenchmarkGatewayUploadSDK(b *testing.B) {
	_, cl := benchCluster(b)
	q, k, v, _, _ := benchInputs(b)
	b.SetBytes(3 * 4 * benchB * benchH * benchN * benchD)
	b.ResetTimer()
	for range b.N {
		if _, err := cl.SubmitAttention(context.Background(), q, k, v, false, client.JobOptions{Causal: true, Windowed: true, Left: 16}); err != nil {
			b.Fatal(err)
		}
	}
}

// benchJob runs one job to completion and returns its id.
func benchJob(b *testing.B, cl *client.Client) string {
	q, k, v, _, _ := benchInputs(b)
	st, err := cl.SubmitAttention(context.Background(), q, k, v, false, client.JobOptions{Causal: true, Windowed: true, Left: 16})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cl.Wait(context.Background(), st.GetId()); err != nil {
		b.Fatal(err)
	}
	return st.GetId()
}

func BenchmarkGatewayDownloadHTTP(b *testing.B) {
	base, cl := benchCluster(b)
	id := benchJob(b, cl)
	b.SetBytes(4 * benchB * benchH * benchN * benchD)
	b.ResetTimer()
	for range b.N {
		resp, err := http.Get(base + "/v1/jobs/" + id + "/outputs/o")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n < 4*benchB*benchH*benchN*benchD {
			b.Fatalf("download: %d, %d bytes", resp.StatusCode, n)
		}
	}
}

func BenchmarkGatewayDownloadSDK(b *testing.B) {
	_, cl := benchCluster(b)
	id := benchJob(b, cl)
	st, err := cl.Get(context.Background(), id)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(4 * benchB * benchH * benchN * benchD)
	b.ResetTimer()
	for range b.N {
		if _, err := cl.FetchAttention(context.Background(), st); err != nil {
			b.Fatal(err)
		}
	}
}
