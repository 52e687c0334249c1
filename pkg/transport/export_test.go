package transport

import "github.com/nats-io/nats.go"

// SetMutate installs a hook replacing every outgoing ring piece (tests).
func SetMutate(r *NATSRing, f func(*nats.Msg) []*nats.Msg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mutate = f
}

// F32ToBF16 and BF16ToF32 expose the private conversions to tests.
func F32ToBF16(f float32) uint16 { return f32ToBF16(f) }
func BF16ToF32(h uint16) float32 { return bf16ToF32(h) }

// PadHeader and PayloadAlign expose the ring's header padding to tests.
func PadHeader(h nats.Header) { padHeader(h) }

const PayloadAlign = payloadAlign

// DeliverPiece, DeliverAck and DeliverCtl run r's subscription handlers
// on m directly, without the panic guard (fuzzing).
func DeliverPiece(r *NATSRing, m *nats.Msg) { r.onPiece(m) }
func DeliverAck(r *NATSRing, m *nats.Msg)   { r.onAck(m) }
func DeliverCtl(r *NATSRing, m *nats.Msg)   { r.onCtl(m) }

// SetHandlerHook installs f to run first in each of r's subscription
// handlers ("piece", "ack", "ctl"), inside their panic guard (tests).
func SetHandlerHook(r *NATSRing, f func(handler string, m *nats.Msg)) { r.testHook.Store(&f) }

// WorkerToken and RingSender expose the subject parsers of the identity
// checks to tests.
func WorkerToken(subject, before, after string) string { return workerToken(subject, before, after) }
func RingSender(s Subjects, subject string) string     { return s.ringSender(subject) }

// ServerPermissions exposes the conversion to nats-server's permissions.
var ServerPermissions = serverPermissions
