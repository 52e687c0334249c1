// Package client is the Go SDK of ringattn: connect to a cluster with the
// same NATS options as the binaries, upload tensors to the store, submit
// attention or mha jobs, watch their progress, wait, and fetch the results.
//
// Every API call retries while no coordinator leader answers (a leader
// election takes seconds) and gives up when its context ends; submits carry
// an idempotency key, so a retried submit never makes two jobs. Errors from
// the coordinator are *APIError values wrapping this package's sentinels.
//
// AttentionBackward runs the forward and backward passes on the cluster
// (dQ, dK, dV given dO, with the forward's O and LSE); AttentionBackwardFrom
// takes the forward's O and LSE and runs the backward alone.
//
// WatchProgress follows a job with its finest counters (ring steps, summed
// over the ranks, once the workers report them; blocks before) and a Meter
// that computes the rate over a sliding window: a rate and an ETA only once
// enough progress was seen, none for a job that had finished before the
// watch began.
package client
