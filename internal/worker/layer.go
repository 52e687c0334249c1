package worker

import "github.com/ringattn/ringattn/pkg/ringattn"

// layer is the multi-head attention layer of pkg/ringattn.
type layer = ringattn.Layer
