package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

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

// orDefaultTenant is tenant, or DefaultTenant for "".
func orDefaultTenant(tenant string) string {
	if tenant == "" {
		return DefaultTenant
	}
	return tenant
}

// ValidateTenant checks a tenant a client acts as: "" (the default
// tenant), AdminTenant (the admin), or a name of 1..128 characters of
// [A-Za-z0-9_-] not starting with "_" (reserved).
func ValidateTenant(tenant string) error {
	if tenant == "" || tenant == AdminTenant {
		return nil
	}
	return ValidateJobTenant(tenant)
}

// ValidateJobTenant checks a tenant that owns jobs and tensors: "" (the
// default tenant) or a name of 1..128 characters of [A-Za-z0-9_-] not
// starting with "_" (AdminTenant owns nothing: the admin's jobs are the
// default tenant's).
func ValidateJobTenant(tenant string) error {
	if tenant == "" {
		return nil
	}
	if err := validateName("tenant", tenant); err != nil {
		return err
	}
	if strings.HasPrefix(tenant, "_") {
		return fmt.Errorf("%w: tenant %q: want a name not starting with \"_\" (reserved)", ErrInvalidName, tenant)
	}
	return nil
}

// workerSubject is of(id), for a message of worker id; legacy() for one
// naming no worker (which only a server without auth lets through).
func (c *Conn) workerSubject(id string, of func(string) string, legacy func() string) (string, error) {
	if id == "" {
		return legacy(), nil
	}
	if err := ValidateName("worker id", id); err != nil {
		return "", err
	}
	return of(id), nil
}

// ErrImpersonation is wrapped when a heartbeat or report names another
// worker in its body than the one its subject names (and the server's
// permissions let publish there).
var ErrImpersonation = errors.New("worker id does not match the subject")

// checkWorker refuses a message whose body's worker id is not the one in
// its subject (<before><id><after>).
func checkWorker(before, after string) func(subject, body string) error {
	return func(subject, body string) error {
		if id := workerToken(subject, before, after); id != body {
			return fmt.Errorf("%w: message for worker %.128q arrived on %q, the subject of worker %q",
				ErrImpersonation, body, subject, id)
		}
		return nil
	}
}

// Denied returns an error wrapping ErrPermission when the server's last
// error to c is a permissions violation naming subject (a publish or
// subscription the connection's permissions do not allow; the request
// itself only times out), else nil.
func (c *Conn) Denied(subject string) error {
	last := c.nc.LastError()
	if last == nil || !errors.Is(last, nats.ErrPermissionViolation) || !strings.Contains(last.Error(), `"`+subject+`"`) {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrPermission, last)
}
