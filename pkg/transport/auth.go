package transport

import "context"

// DefaultTenant is the tenant of a client that names none, and of every
// caller when the API does not enforce tenants (auth off).
const DefaultTenant = "default"

// Caller is who sent an API request, as the subject it arrived on says
// (NATS permissions decide who may publish there): the tenant owning the
// jobs and tensors it touches, and whether it is an admin, who sees and
// touches every tenant's.
type Caller struct {
	Tenant string
	Admin  bool
}

type callerKey struct{}

// WithCaller returns ctx carrying c (ServeAPI does this for every request).
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerOf is the caller of the API request ctx belongs to. A ctx that
// carries none (a handler called directly, auth off) is the default
// tenant with admin rights: Caller{Tenant: "default", Admin: true}.
func CallerOf(ctx context.Context) Caller {
	if c, ok := ctx.Value(callerKey{}).(Caller); ok {
		return c
	}
	return Caller{Tenant: DefaultTenant, Admin: true}
}
