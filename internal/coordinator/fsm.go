package coordinator

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
)

// fsm adapts State to raft.FSM and nothing more: decoding, locking,
// snapshots. It decides what a bad entry does: an entry that cannot be
// decoded stops the node (fatal), because skipping it would let this
// replica diverge from the others.
type fsm struct {
	mu sync.RWMutex
	st *State
	// fatal is called with ErrCorruptEntry; it must not return normally
	// (default: panic).
	fatal func(error)
	// onApply is called after every command, outside the lock.
	onApply func(index uint64, cmd *cpb.Command, r *Result)
}

func newFSM(fatal func(error)) *fsm {
	if fatal == nil {
		fatal = func(err error) { panic(err) }
	}
	return &fsm{st: NewState(), fatal: fatal}
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := decodeEntry(l.Index, l.Data)
	if err != nil {
		f.fatal(err)
		return nil
	}
	r, err := f.apply(l.Index, cmd)
	if err != nil {
		f.fatal(err)
		return nil
	}
	if f.onApply != nil {
		f.onApply(l.Index, cmd, r)
	}
	return r
}

// decodeEntry decodes a committed entry's envelope. An error wraps
// ErrCorruptEntry: the node must stop rather than skip the entry.
func decodeEntry(index uint64, data []byte) (*cpb.Command, error) {
	var cmd cpb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return nil, fmt.Errorf("%w: index %d: envelope: %v", ErrCorruptEntry, index, err)
	}
	return &cmd, nil
}

// apply applies one command under the write lock. A panic in State.Apply
// (a bug: the fuzz targets look for one) is returned as ErrCorruptEntry,
// so the node stops deliberately, with the lock released, instead of
// dying with the state half-changed under a held lock.
func (f *fsm) apply(index uint64, cmd *cpb.Command) (r *Result, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		if v := recover(); v != nil {
			r, err = nil, fmt.Errorf("%w: index %d: applying %v panicked: %v", ErrCorruptEntry, index, cmd.GetType(), v)
		}
	}()
	return f.st.Apply(index, cmd)
}

// view runs fn with the state locked for reading.
func (f *fsm) view(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.st)
}

// Snapshot implements raft.FSM: a deep copy now, written out later.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{st: f.st.Clone()}, nil
}

// Restore implements raft.FSM: build the new state completely, then swap.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := ReadState(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	return nil
}

type fsmSnapshot struct{ st *State }

// Persist implements raft.FSMSnapshot; the sink is canceled on any error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.st.WriteSnapshot(sink, time.Now().UnixMilli()); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (s *fsmSnapshot) Release() {}
