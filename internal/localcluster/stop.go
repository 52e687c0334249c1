package localcluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Close stops every process: workers first (SIGTERM: they drain), then
// the coordinators, then NATS, each given a few seconds before SIGKILL;
// closes the proxies; and removes a temporary Dir. It returns the first
// process that had to be killed.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
	}
	var errs []error
	stop := func(ps []*Proc, grace time.Duration) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range ps {
			if !p.Running() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := p.Terminate(grace); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	stop(c.Workers(), 10*time.Second)
	stop(c.Coordinators, 10*time.Second)
	if c.NATS != nil {
		stop([]*Proc{c.NATS}, 10*time.Second)
	}
	c.mu.Lock()
	for _, px := range c.proxies {
		px.Close()
	}
	c.mu.Unlock()
	if c.tempDir {
		os.RemoveAll(c.Dir)
	}
	return errors.Join(errs...)
}

// Kill SIGKILLs every process at once (fast teardown) and removes a
// temporary Dir.
func (c *Cluster) Kill() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
	}
	for _, p := range c.Procs() {
		if p.Running() {
			_ = p.Kill()
		}
	}
	c.mu.Lock()
	for _, px := range c.proxies {
		px.Close()
	}
	c.mu.Unlock()
	if c.tempDir {
		os.RemoveAll(c.Dir)
	}
}

// DumpLogs writes the last maxLines lines of every process's log to w.
func (c *Cluster) DumpLogs(w io.Writer, maxLines int) {
	for _, p := range c.Procs() {
		fmt.Fprintf(w, "----- %s (pid %d) %s -----\n", p.Name, p.Pid(), p.LogPath)
		data, err := os.ReadFile(p.LogPath)
		if err != nil {
			fmt.Fprintf(w, "(%v)\n", err)
			continue
		}
		lines := strings.SplitAfter(string(data), "\n")
		if len(lines) > maxLines {
			fmt.Fprintf(w, "(%d earlier lines)\n", len(lines)-maxLines)
			lines = lines[len(lines)-maxLines:]
		}
		for _, l := range lines {
			io.WriteString(w, l)
		}
	}
}
