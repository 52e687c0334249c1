// Package natsflags registers the NATS connection and tensor-store flags
// of every ringattn binary (--nats, --nats-user, ..., --store-*), each
// with its RINGATTN_* environment variable, filling a transport.Config.
// Flag and environment parsing lives here, for cmd/*, never in a library
// (pkg/transport keeps only Config, its defaults and Validate).
package natsflags
