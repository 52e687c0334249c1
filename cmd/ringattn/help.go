package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// flagGroups orders the sections of a command's --help and the flags in
// them; a flag in no group is listed under "Other flags".
var flagGroups = []struct {
	title string
	flags []string
}{
	{"Inputs", []string{"q", "k", "v", "x", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo", "heads", "layout", "allow-nonfinite"}},
	{"Mask", []string{"causal", "window-left", "window-right", "seqlens", "seqlens-k", "scale"}},
	{"Mode (default: the in-process kernel on all cores)", []string{"ranks", "cluster", "nats", "block", "wire", "precision", "strategy", "threads"}},
	{"Gradients (of sum(O·dO); of sum(y·dY) for mha)", []string{"do", "dq", "dk", "dv", "dy", "grads"}},
	{"Job", []string{"state", "limit", "reason", "wait", "idempotency-key"}},
	{"Cluster connection", []string{"timeout"}},
	{"Output", []string{"o", "lse"}},
}

// natsAdvanced are the NATS flags summarized on one line of --help (they
// all have RINGATTN_* environment equivalents).
var natsAdvanced = []string{"nats-user", "nats-password", "nats-token", "nats-creds", "nats-nkey",
	"nats-tls-ca", "nats-tls-cert", "nats-tls-key", "nats-tls-insecure", "nats-tenant", "nats-prefix", "store-bucket"}

// hiddenFlags are accepted but not listed: aliases kept for compatibility
// (--nats-url is --nats) and settings that apply to the servers only.
var hiddenFlags = map[string]bool{
	"nats-url": true, "nats-name": true, "nats-connect-timeout": true,
	"store-replicas": true, "store-max-bytes": true, "store-ttl": true,
}

// hiddenFor are flags a command accepts only to reject with a clear
// message, so they are not listed.
var hiddenFor = map[string][]string{
	"submit": {"ranks", "cluster", "threads"},
}

// groupedCommands get their flags in flagGroups' sections; the others
// (dev, demo, bench, ...) one list.
var groupedCommands = map[string]bool{"attend": true, "mha": true, "submit": true, "status": true,
	"get": true, "cancel": true, "list": true, "watch": true, "info": true}

// examples are shown at the end of a command's --help.
var examples = map[string][]string{
	"attend": {
		"ringattn attend -q q.npy -k k.npy -v v.npy -o o.npy --lse lse.npy --causal",
		"ringattn attend -q q.npy -k k.npy -v v.npy -o o.npy --layout bnhd   # torch [B,N,H,D] tensors",
		"ringattn attend -q q.npy -k k.npy -v v.npy -o o.npy --nats 127.0.0.1:4222   # on a running cluster",
	},
	"mha": {
		"ringattn mha -x x.npy --wq wq.npy --wk wk.npy --wv wv.npy --wo wo.npy --heads 8 -o y.npy --causal",
		"ringattn mha -x x.npy --wq wq.npy --wk wk.npy --wv wv.npy --wo wo.npy --heads 8 -o y.npy --cluster 3",
	},
	"demo": {
		"ringattn demo",
		"ringattn demo --seq 4096 --heads 4 --causal --workers 2",
	},
	"submit": {
		"ringattn submit --nats 127.0.0.1:4222 -q q.npy -k k.npy -v v.npy --causal --lse   # prints the job id",
		"ringattn submit -q q.npy -k k.npy -v v.npy --wait",
	},
	"status": {"ringattn status JOB", "ringattn status --nats nats://10.0.0.5:4222 JOB"},
	"get":    {"ringattn get JOB -o o.npy", "ringattn get JOB -o o.npy --lse lse.npy"},
	"cancel": {"ringattn cancel JOB", "ringattn cancel JOB --reason 'wrong mask'"},
	"list":   {"ringattn list", "ringattn list --state running", "ringattn list --limit 10"},
	"watch":  {"ringattn watch JOB", "ringattn watch --nats 127.0.0.1:4222 JOB"},
	"info":   {"ringattn info", "ringattn info --wait 30s --workers 3   # until a leader and 3 workers are up"},
	"gateway": {"ringattn gateway --nats 127.0.0.1:4222 --http 127.0.0.1:8080",
		"RINGATTN_GATEWAY_TOKEN=secret ringattn gateway --nats nats://nats:4222 --http 0.0.0.0:8080   # exposed: bearer token"},
	"randn":   {"ringattn randn --shape 1,8,4096,64 -o q.npy", "ringattn randn --shape 1,2,4096,64 -o k.npy --seed 2"},
	"compare": {"ringattn compare o_cluster.npy o_local.npy", "ringattn compare a.npy b.npy --tol 1e-6"},
	"dev": {
		"ringattn dev",
		"ringattn dev --workers 4 --data /tmp/ringattn-data",
		"ringattn dev --port 0 --http 127.0.0.1:0   # free ports",
		"ringattn dev --auth --tenants team-a --data /tmp/ra   # roles on; prints each client's --nats-nkey/--nats-tenant",
	},
	"cluster": {
		"ringattn cluster --coordinators 3 --workers 3 --dir /tmp/rc",
		"ringattn cluster --auth --tenants team-a --dir /tmp/rc   # roles on, Raft mutual TLS",
	},
}

// printUsage is the --help of a command: synopsis, flags by group,
// examples.
func printUsage(w io.Writer, fs *flag.FlagSet, name, synopsis string) {
	fmt.Fprintf(w, "Usage: ringattn %s %s\n", name, synopsis)
	hidden := map[string]bool{}
	for _, f := range hiddenFor[name] {
		hidden[f] = true
	}
	listed := map[string]bool{}
	show := func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		left := "  --" + f.Name
		if len(f.Name) == 1 {
			left = "  -" + f.Name
		}
		if arg != "" {
			left += " " + arg
		}
		def := ""
		switch f.DefValue {
		case "", "0", "0s", "false", "-1", "[]":
		default:
			if !strings.Contains(usage, "(default") {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
		}
		if len(left) < 24 {
			fmt.Fprintf(w, "%-24s %s%s\n", left, usage, def)
		} else {
			fmt.Fprintf(w, "%s\n%-24s %s%s\n", left, "", usage, def)
		}
	}
	group := func(title string, names []string) {
		var fl []*flag.Flag
		for _, n := range names {
			if f := fs.Lookup(n); f != nil && !hidden[n] && !listed[n] {
				fl = append(fl, f)
				listed[n] = true
			}
		}
		if len(fl) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s:\n", title)
		for _, f := range fl {
			show(f)
		}
	}
	for _, g := range flagGroups {
		if !groupedCommands[name] {
			break // one alphabetical list
		}
		modes := name == "attend" || name == "mha"
		if strings.HasPrefix(g.title, "Mode") && !modes {
			g.title = "Blocks and plan"
			var names []string
			for _, n := range g.flags {
				if n != "nats" { // a connection flag here
					names = append(names, n)
				}
			}
			g.flags = names
		}
		if g.title == "Cluster connection" {
			group(g.title, append([]string{"nats"}, g.flags...))
			var adv []string
			for _, n := range natsAdvanced {
				if fs.Lookup(n) != nil {
					adv = append(adv, "--"+n)
					listed[n] = true
				}
			}
			if len(adv) > 0 {
				fmt.Fprintf(w, "  NATS auth, TLS and naming: %s\n", strings.Join(adv, " "))
				fmt.Fprintf(w, "  (every connection flag has an environment variable: --nats-user is RINGATTN_NATS_USER, --nats is RINGATTN_NATS_URL)\n")
			}
			continue
		}
		group(g.title, g.flags)
	}
	var rest []string
	fs.VisitAll(func(f *flag.Flag) {
		if !listed[f.Name] && !hidden[f.Name] && !hiddenFlags[f.Name] {
			rest = append(rest, f.Name)
		}
	})
	title := "Other flags"
	if len(listed) == 0 {
		title = "Flags"
	}
	group(title, rest)
	if ex := examples[name]; len(ex) > 0 {
		fmt.Fprintf(w, "\nExamples:\n")
		for _, e := range ex {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
}

// flagError rewrites the flag package's parse errors for people: dashes
// as in --help and the nearest known flag for an unknown one.
func flagError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	const undefined = "flag provided but not defined: -"
	if name, ok := strings.CutPrefix(msg, undefined); ok {
		var names []string
		fs.VisitAll(func(f *flag.Flag) {
			if !hiddenFlags[f.Name] {
				names = append(names, f.Name)
			}
		})
		out := fmt.Sprintf("unknown flag --%s", name)
		if s := nearest(name, names); s != "" {
			out += fmt.Sprintf(" (did you mean --%s?)", s)
		} else {
			out += fmt.Sprintf(" (run 'ringattn %s --help')", fs.Name())
		}
		return errors.New(out)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("--%s needs a value", name)
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		// invalid value "x" for flag -n: parse error
		if i := strings.Index(rest, " for flag -"); i >= 0 {
			val := rest[:i]
			name, why, _ := strings.Cut(rest[i+len(" for flag -"):], ": ")
			why = strings.TrimPrefix(why, "parse error")
			if why == "" {
				why = "not a valid value"
			}
			return fmt.Errorf("--%s = %s: %s", name, val, why)
		}
	}
	return err
}

// nearest returns the candidate closest to s by edit distance when it is
// close enough to be a likely typo, else "".
func nearest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	sort.Strings(candidates)
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	limit := 2
	if len(s) <= 3 {
		limit = 1
	}
	if bestD <= limit || (best != "" && (strings.HasPrefix(best, s) || strings.HasPrefix(s, best)) && len(s) >= 3) {
		return best
	}
	return ""
}

// editDistance is the Damerau–Levenshtein distance (adjacent swaps count
// one, as "casual" for "causal").
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
