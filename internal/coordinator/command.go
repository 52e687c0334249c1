package coordinator

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
)

// encodeCommand wraps a typed command in the log envelope.
func encodeCommand(typ cpb.CommandType, m proto.Message) ([]byte, error) {
	payload, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %v: %w", typ, err)
	}
	return proto.Marshal(&cpb.Command{Type: typ, Payload: payload})
}
