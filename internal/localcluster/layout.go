package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// layout are the ports of a cluster, kept in Dir/layout.json: a cluster
// started again on the same Dir reuses them, since the coordinators' Raft
// state names its peers by address.
type layout struct {
	NATSPort        int                 `json:"nats_port"`
	NATSMonitorPort int                 `json:"nats_monitor_port"`
	Coordinators    []layoutCoordinator `json:"coordinators"`
}

type layoutCoordinator struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// LayoutFile is the name of the layout in Dir.
const LayoutFile = "layout.json"

// layout loads Dir's layout or makes (and saves) a new one with free
// ports. Config.NATSPort, when set, wins over a saved NATS port.
func (c *Cluster) layout() (*layout, error) {
	path := filepath.Join(c.Dir, LayoutFile)
	lay := &layout{}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, lay); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
		}
		if len(lay.Coordinators) != c.cfg.Coordinators {
			return nil, fmt.Errorf("%w: Coordinators = %d, but %s holds a cluster of %d coordinators: use that many or a new directory",
				ErrInvalid, c.cfg.Coordinators, c.Dir, len(lay.Coordinators))
		}
	case errors.Is(err, os.ErrNotExist):
		if lay.NATSMonitorPort, err = freePort(); err != nil {
			return nil, err
		}
		for i := range c.cfg.Coordinators {
			raftAddr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			httpAddr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			lay.Coordinators = append(lay.Coordinators, layoutCoordinator{"coordinator-" + strconv.Itoa(i), raftAddr, httpAddr})
		}
	default:
		return nil, err
	}
	if c.cfg.NATSPort != 0 {
		lay.NATSPort = c.cfg.NATSPort
	}
	if lay.NATSPort == 0 {
		if lay.NATSPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	data, err = json.MarshalIndent(lay, "", "  ")
	if err != nil {
		return nil, err
	}
	return lay, os.WriteFile(path, append(data, '\n'), 0o644)
}

func (c *Cluster) logPath(name string) string { return filepath.Join(c.Dir, "logs", name+".log") }
