package natsflags

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
)

// EnvPrefix starts every environment variable RegisterFlags reads.
const EnvPrefix = "RINGATTN_"

// flagSpec is one connection flag and its environment variable.
type flagSpec struct {
	flag, env, usage string
	str              *string
	dur              *time.Duration
	boolean          *bool
	integer          *int
	size             *int64 // bytes, with an optional KiB/MiB/GiB/TiB suffix
}

func flagSpecs(cfg *transport.Config, urls *string) []flagSpec {
	return []flagSpec{
		{flag: "nats-url", env: "NATS_URL", usage: "NATS server URLs, comma-separated", str: urls},
		{flag: "nats-user", env: "NATS_USER", usage: "NATS username", str: &cfg.User},
		{flag: "nats-password", env: "NATS_PASSWORD", usage: "NATS password (prefer the env variable)", str: &cfg.Password},
		{flag: "nats-token", env: "NATS_TOKEN", usage: "NATS auth token (prefer the env variable)", str: &cfg.Token},
		{flag: "nats-creds", env: "NATS_CREDS", usage: "NATS .creds file (JWT + nkey seed)", str: &cfg.CredsFile},
		{flag: "nats-nkey", env: "NATS_NKEY", usage: "NATS nkey seed file", str: &cfg.NKeySeedFile},
		{flag: "nats-tls-ca", env: "NATS_TLS_CA", usage: "CA bundle verifying the NATS server (turns TLS on)", str: &cfg.TLSCA},
		{flag: "nats-tls-cert", env: "NATS_TLS_CERT", usage: "client certificate for NATS mutual TLS", str: &cfg.TLSCert},
		{flag: "nats-tls-key", env: "NATS_TLS_KEY", usage: "client key for NATS mutual TLS", str: &cfg.TLSKey},
		{flag: "nats-tls-insecure", env: "NATS_TLS_INSECURE", usage: "skip NATS server certificate verification (testing only)", boolean: &cfg.TLSInsecureSkipVerify},
		{flag: "nats-name", env: "NATS_NAME", usage: "connection name shown by the NATS server", str: &cfg.Name},
		{flag: "nats-tenant", env: "NATS_TENANT", usage: "tenant this client acts as (its jobs and tensors; \"_admin\" for the admin; default \"default\")", str: &cfg.Tenant},
		{flag: "nats-prefix", env: "NATS_PREFIX", usage: "NATS subject prefix", str: &cfg.Prefix},
		{flag: "nats-connect-timeout", env: "NATS_CONNECT_TIMEOUT", usage: "NATS dial and handshake timeout", dur: &cfg.ConnectTimeout},
		{flag: "store-bucket", env: "STORE_BUCKET", usage: "JetStream object store bucket for tensors", str: &cfg.Bucket},
		{flag: "store-replicas", env: "STORE_REPLICAS", usage: "replicas of the tensor store bucket when it is created (1..5; 3 survives a NATS server loss)", integer: &cfg.StoreReplicas},
		{flag: "store-max-bytes", env: "STORE_MAX_BYTES", usage: "size cap of the tensor store bucket when it is created, bytes or with KiB/MiB/GiB/TiB (0 = unlimited)", size: &cfg.StoreMaxBytes},
		{flag: "store-ttl", env: "STORE_TTL", usage: "tensor store objects expire this long after written, set when the bucket is created (0 = never)", dur: &cfg.StoreTTL},
	}
}

// RegisterFlags registers the NATS connection flags on fs, writing into
// cfg: --nats (alias --nats-url), --nats-user, --nats-password, --nats-token, --nats-creds,
// --nats-nkey, --nats-tls-ca, --nats-tls-cert, --nats-tls-key,
// --nats-tls-insecure, --nats-name, --nats-tenant, --nats-prefix, --nats-connect-timeout,
// --store-bucket, --store-replicas, --store-max-bytes and --store-ttl (the
// last three apply when the bucket is created). Each has an environment variable RINGATTN_<NAME>
// (e.g. RINGATTN_NATS_URL) applied now as the default, so a flag given on
// the command line overrides it. Fields of cfg that neither sets keep their
// values (fill cfg with DefaultConfig first). A malformed environment value
// is an error naming the variable.
func RegisterFlags(fs *flag.FlagSet, cfg *transport.Config) error {
	return registerFlags(fs, cfg, os.LookupEnv)
}

func registerFlags(fs *flag.FlagSet, cfg *transport.Config, lookup func(string) (string, bool)) error {
	urls := strings.Join(cfg.URLs, ",")
	specs := flagSpecs(cfg, &urls)
	for _, s := range specs {
		env := EnvPrefix + s.env
		v, ok := lookup(env)
		if !ok {
			continue
		}
		switch {
		case s.str != nil:
			*s.str = v
		case s.dur != nil:
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("%w: %s = %q: want a duration like 5s", transport.ErrInvalidConfig, env, v)
			}
			*s.dur = d
		case s.boolean != nil:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%w: %s = %q: want true or false", transport.ErrInvalidConfig, env, v)
			}
			*s.boolean = b
		case s.integer != nil:
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%w: %s = %q: want an integer", transport.ErrInvalidConfig, env, v)
			}
			*s.integer = n
		case s.size != nil:
			n, err := ParseBytes(v)
			if err != nil {
				return fmt.Errorf("%w: %s = %q: %v", transport.ErrInvalidConfig, env, v, err)
			}
			*s.size = n
		}
	}
	cfg.URLs = splitURLs(urls)
	for _, s := range specs {
		usage := fmt.Sprintf("%s (env %s%s)", s.usage, EnvPrefix, s.env)
		switch {
		case s.flag == "nats-url":
			// --nats is the one spelling every binary documents; --nats-url
			// stays as an alias for existing deployments.
			set := func(v string) error {
				cfg.URLs = splitURLs(v)
				return nil
			}
			if fs.Lookup("nats") == nil {
				fs.Func("nats", usage+" (default "+strconv.Quote(urls)+")", set)
			}
			fs.Func(s.flag, "alias of --nats (env "+EnvPrefix+s.env+")", set)
		case s.str != nil:
			fs.StringVar(s.str, s.flag, *s.str, usage)
		case s.dur != nil:
			fs.DurationVar(s.dur, s.flag, *s.dur, usage)
		case s.boolean != nil:
			fs.BoolVar(s.boolean, s.flag, *s.boolean, usage)
		case s.integer != nil:
			fs.IntVar(s.integer, s.flag, *s.integer, usage)
		case s.size != nil:
			fs.Func(s.flag, usage+" (default "+strconv.FormatInt(*s.size, 10)+")", func(v string) error {
				n, err := ParseBytes(v)
				if err != nil {
					return err
				}
				*s.size = n
				return nil
			})
		}
	}
	return nil
}

func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// ParseBytes parses a byte count: an integer >= 0 with an optional suffix
// KiB, MiB, GiB or TiB (powers of 1024), e.g. "512MiB".
func ParseBytes(s string) (int64, error) {
	num, mul := strings.TrimSpace(s), int64(1)
	for i, suf := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if strings.HasSuffix(num, suf) {
			num, mul = strings.TrimSpace(strings.TrimSuffix(num, suf)), int64(1)<<(10*(i+1))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mul {
		return 0, fmt.Errorf("want a byte count >= 0 like 1073741824 or 1GiB, at most 8 EiB")
	}
	return n * mul, nil
}
