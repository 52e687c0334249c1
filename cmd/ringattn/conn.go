package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// natsSchemes are the URL schemes NATS clients dial.
var natsSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// normalizeNATSURL checks a --nats value (comma-separated URLs) and adds
// nats:// to a bare host:port; an error names the flag (exit 2).
func normalizeNATSURL(flagName, s string) (string, error) {
	var out []string
	for _, u := range strings.Split(s, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if !strings.Contains(u, "://") {
			if _, _, err := net.SplitHostPort(u); err != nil {
				return "", usagef("--%s = %q, expected a NATS URL such as nats://127.0.0.1:4222 or host:port", flagName, u)
			}
			u = "nats://" + u
		}
		p, err := url.Parse(u)
		if err != nil || !natsSchemes[p.Scheme] || p.Host == "" {
			return "", usagef("--%s = %q, expected a NATS URL such as nats://127.0.0.1:4222 (schemes nats, tls, ws, wss)", flagName, u)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return "", usagef("--%s is empty, expected the NATS URL of a running cluster such as nats://127.0.0.1:4222", flagName)
	}
	return strings.Join(out, ","), nil
}

// registerNATS registers --nats URL into dst unless the connection flags
// already define it (internal/natsflags may make --nats the binaries' one
// spelling, keeping --nats-url as an alias).
func registerNATS(fs *flag.FlagSet, dst *string, usage string) {
	if fs.Lookup("nats") == nil {
		fs.StringVar(dst, "nats", "", usage)
	}
}

// natsValue is the --nats value given: a string flag's value (ours, even
// when empty), else the connection flags' URLs when they own --nats.
func natsValue(fs *flag.FlagSet, cf *connFlags, own string) string {
	if f := fs.Lookup("nats"); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			if s, ok := g.Get().(string); ok {
				return s
			}
		}
	}
	if own != "" {
		return own
	}
	return strings.Join(cf.cfg.URLs, ",")
}

// dial connects to the cluster at url (--nats), or at the connection
// flags' URL (--nats-url, RINGATTN_NATS_URL, default nats://127.0.0.1:4222)
// when url is empty. A cluster that cannot be reached is exit 3 with a
// hint; a malformed URL is exit 2.
func dial(ctx context.Context, cf *connFlags, rawURL string) (*client.Client, error) {
	flagName := "nats"
	if rawURL == "" {
		rawURL = strings.Join(cf.cfg.URLs, ",")
		flagName = "nats (from RINGATTN_NATS_URL or --nats-url)"
	}
	u, err := normalizeNATSURL(flagName, rawURL)
	if err != nil {
		return nil, err
	}
	cl, err := cf.connect(ctx, u)
	if err != nil {
		return nil, unreachable(u, err)
	}
	if err := probeLeader(ctx, cl, u); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

// leaderWait bounds how long a command waits for a coordinator leader to
// answer before saying there is none (an election takes a few seconds).
var leaderWait = 15 * time.Second

// probeLeader asks the coordinators' API for the cluster, so a NATS
// server without coordinators is exit 3 with a hint instead of a
// command waiting forever.
func probeLeader(ctx context.Context, cl *client.Client, u string) error {
	pctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	_, err := cl.Cluster(pctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return unreachableError{fmt.Errorf("NATS at %s answers, but no coordinator leader did within %v; start coordinators (or `ringattn dev`)", u, leaderWait)}
	}
	return err
}

// unreachable is the exit-3 error for a cluster at u that did not answer.
func unreachable(u string, err error) error {
	why := err.Error()
	if client.NoServer(err) {
		why = "no NATS server answers there"
	}
	hint := "start one with `ringattn dev`"
	if errors.Is(err, context.Canceled) {
		hint = "interrupted"
	}
	return unreachableError{fmt.Errorf("cannot reach the cluster at %s: %s; %s", u, why, hint)}
}

// checkWritable makes sure each output path (flag name → path; empty paths
// are skipped) can be created before any input is read or work is done:
// its directory exists and is writable, and the path is not a directory.
func checkWritable(outputs ...[2]string) error {
	for _, o := range outputs {
		flagName, path := o[0], o[1]
		if path == "" {
			continue
		}
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			return usagef("%s %s is a directory, expected a file path", flagName, path)
		}
		dir := filepath.Dir(path)
		fi, err := os.Stat(dir)
		if err != nil {
			return usagef("%s %s: directory %s does not exist", flagName, path, dir)
		}
		if !fi.IsDir() {
			return usagef("%s %s: %s is not a directory", flagName, path, dir)
		}
		f, err := os.CreateTemp(dir, ".ringattn-write-check-*")
		if err != nil {
			return usagef("%s %s: directory %s is not writable", flagName, path, dir)
		}
		name := f.Name()
		f.Close()
		os.Remove(name)
	}
	return nil
}

// checkDirWritable is checkWritable for an output directory (mha --grads).
func checkDirWritable(flagName, dir string) error {
	if dir == "" {
		return nil
	}
	return checkWritable([2]string{flagName, filepath.Join(dir, "x")})
}

// jobIDLine tells the user the id of a job just submitted (stderr, so
// stdout stays the command's data).
func jobIDLine(w io.Writer, id, how string) {
	fmt.Fprintf(w, "submitted job %s%s\n", id, how)
}

// jobCluster is a client on a cluster: a running one (--nats) or an
// embedded ephemeral one (--cluster W) that closes with it.
type jobCluster struct {
	cl    *client.Client
	dev   *devcluster.Cluster
	where string // " at URL" or " on an embedded cluster of W workers"
}

func (j *jobCluster) Close() {
	if j.cl != nil {
		j.cl.Close()
	}
	if j.dev != nil {
		j.dev.Close()
	}
}

// openCluster connects to the cluster the mode flags name.
func openCluster(ctx context.Context, mf *maskFlags) (*jobCluster, error) {
	if mf.cluster > 0 {
		dev, err := devcluster.Start(ctx, devcluster.Config{Workers: mf.cluster, HTTPAddr: "off"})
		if err != nil {
			return nil, fmt.Errorf("starting the embedded cluster: %w", err)
		}
		cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
		if err != nil {
			dev.Close()
			return nil, err
		}
		return &jobCluster{cl: cl, dev: dev, where: fmt.Sprintf(" on an embedded cluster of %d workers", mf.cluster)}, nil
	}
	cl, err := dial(ctx, &mf.conn, mf.natsURL)
	if err != nil {
		return nil, err
	}
	return &jobCluster{cl: cl, where: " at " + mf.natsURL}, nil
}

// watchJob follows a job to its end, showing progress on stderr (a bar on
// a terminal, else plain lines on plain, or stderr when plain is nil).
func watchJob(ctx context.Context, env *cliEnv, cl *client.Client, id string, plain io.Writer) (*pb.JobStatus, error) {
	v := newProgressView(env.stderr, plain)
	defer v.done()
	return cl.WatchProgress(ctx, id, v.update)
}

// uploadNoteMin is the input size from which the upload is announced (it
// takes seconds, before the job id is known).
const uploadNoteMin = 8 << 20

// uploadNote says on w that n float32 values are being uploaded, when
// there are enough of them for the wait to be noticed.
func uploadNote(w io.Writer, n int, where string) {
	if b := 4 * int64(n); b >= uploadNoteMin {
		fmt.Fprintf(w, "uploading %.1f MiB of inputs to the cluster's store%s\n", float64(b)/(1<<20), where)
	}
}
