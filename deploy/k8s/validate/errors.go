package validate

import "errors"

// Sentinel errors; the returned errors wrap them and name the object and
// the field.
var (
	// ErrRender: kustomize could not build the overlay.
	ErrRender = errors.New("validate: render failed")
	// ErrUnknownKind: an object of a kind this package has no schema for.
	ErrUnknownKind = errors.New("validate: unknown kind")
	// ErrDecode: an object does not decode strictly into its schema
	// (unknown or misspelled field, duplicate field, wrong type).
	ErrDecode = errors.New("validate: strict decode failed")
	// ErrCheck: an object decodes but breaks a cross-object rule.
	ErrCheck = errors.New("validate: check failed")
)
