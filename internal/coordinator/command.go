package coordinator

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
)

// encodeCommand wraps a typed command in the log envelope, in the log's
// own form (logschema.go) and this build's LogVersion.
func encodeCommand(typ cpb.CommandType, m proto.Message) ([]byte, error) {
	switch c := m.(type) {
	case *cpb.Submit:
		m = submitToLog(c)
	case *cpb.StartEpoch:
		m = startEpochToLog(c)
	case *cpb.ShardDone:
		m = shardDoneToLog(c)
	case *cpb.Job:
		return nil, fmt.Errorf("encode %v: a job record is not a command", typ)
	}
	payload, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %v: %w", typ, err)
	}
	return proto.Marshal(&cpb.Command{Type: typ, Payload: payload, Version: LogVersion})
}
