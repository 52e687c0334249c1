package client

import (
	"context"
	"fmt"
	"time"

	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
)

// upload is one input tensor of a job: its store name, data and shape
// [B, H, N, D].
type upload struct {
	name string
	t    *tensor.Tensor
	sh   []int
}

// transfers returns the store transfer options of c (Options.Transfers).
func (c *Client) transfers() transport.TransferOptions {
	return transport.TransferOptions{Blocks: c.opts.Transfers, Bytes: c.opts.TransferBytes}
}

// discardAfter is how long the deletion of a failed upload may take.
const discardAfter = 5 * time.Second

// uploadInputs writes ups into namespace ns as float32 block tensors of
// blockLen rows, several blocks at once (Options.Transfers), and logs how
// long it took. When the upload fails (ctx canceled, the store full) the
// blocks already written are deleted, best effort, so a canceled submit
// leaves nothing behind and frees the tenant's quota at once; no job
// refers to ns (it is submitted only after the upload).
func (c *Client) uploadInputs(ctx context.Context, st *transport.Store, ns string, ups []upload, blockLen int) error {
	ts := make([]transport.TensorData, len(ups))
	var bytes int64
	for i, u := range ups {
		ts[i] = transport.TensorData{Name: u.name, Data: u.t.Data, Shape: transport.Shape(u.sh)}
		bytes += 4 * int64(len(u.t.Data))
	}
	start := time.Now()
	err := st.PutTensors(ctx, ns, ts, blockLen, transport.F32, c.transfers())
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discardAfter)
		n, derr := st.DeleteNamespace(dctx, ns)
		cancel()
		c.log.Debug("upload failed; its blocks deleted", "namespace", ns, "deleted", n, "delete_err", derr, "err", err)
		return fmt.Errorf("client: uploading inputs: %w", err)
	}
	c.logTransfer("upload", ns, bytes, time.Since(start))
	return nil
}

// logTransfer logs a finished transfer's size, duration and rate.
func (c *Client) logTransfer(what, ns string, bytes int64, d time.Duration) {
	c.log.Debug("tensor "+what, "namespace", ns, "bytes", bytes, "duration", d.Round(time.Microsecond),
		"mib_per_s", float64(bytes)/(1<<20)/max(d.Seconds(), 1e-9), "transfers", c.transfers().Blocks)
}

// download is one output tensor of a job: its store name, layout in the
// store and the shape it is returned with.
type download struct {
	name  string
	sh    transport.Shape
	shape []int
	dst   **tensor.Tensor
}

// fetchOutputs reads the tensors ds of namespace ref, several blocks at
// once across all of them (Options.Transfers), into their dst.
func (c *Client) fetchOutputs(ctx context.Context, store *transport.Store, ref string, block int, ds []download) error {
	ts := make([]transport.TensorData, len(ds))
	var bytes int64
	for i, d := range ds {
		ts[i] = transport.TensorData{Name: d.name, Shape: d.sh}
		bytes += 4 * int64(d.sh[0]) * int64(d.sh[1]) * int64(d.sh[2]) * int64(d.sh[3])
	}
	start := time.Now()
	got, err := store.GetTensors(ctx, ref, ts, block, c.transfers())
	if err != nil {
		names := make([]string, len(ds))
		for i, d := range ds {
			names[i] = d.name
		}
		return fmt.Errorf("client: fetching %v: %w", names, err)
	}
	c.logTransfer("download", ref, bytes, time.Since(start))
	for i, d := range ds {
		t, err := tensor.FromData(got[i].Data, d.shape...)
		if err != nil {
			return fmt.Errorf("client: fetching %s: %w", d.name, err)
		}
		*d.dst = t
	}
	return nil
}
