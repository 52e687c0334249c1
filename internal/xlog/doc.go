// Package xlog builds the *slog.Logger every ringattn binary and test uses:
// text (default) or JSON output at a chosen level, and a logger that writes
// to a test's Log so test output stays with its test. That one takes the
// small TB interface, which any testing.TB satisfies, so xlog (linked into
// every binary) does not import testing. Loggers are always injected,
// never global.
package xlog
