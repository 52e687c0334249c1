// Package gateway is ringattn's HTTP job API (DESIGN §4): a stateless
// http.Handler that takes attention and mha jobs with their tensors as .npy
// parts of a multipart request, uploads them to the tensor store and
// submits them through the Go SDK (pkg/client), and serves status, progress
// (server-sent events or long-poll), outputs as .npy, cancel and list.
// Gradients: an attention job with spec.backward (outputs dq, dk, dv) and
// an mha layer forward+backward job (part dy; outputs y, dx and the weight
// and bias gradients, reduced from the cluster's per-block shares as
// client.FetchMHAGrads reduces them).
//
// It keeps no state of its own: every request is answered from the
// coordinators' API and the store, so gateways scale apart from the
// coordinators. Validation, limits, errors and idempotency are the NATS
// API's; errors are JSON {"error": {"code", "field", "message"}} with the
// HTTP status of their kind. When Config.Token is set every /v1 request
// needs "Authorization: Bearer <token>". docs/openapi.yaml describes it.
package gateway
