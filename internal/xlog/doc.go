// Package xlog builds the *slog.Logger every ringattn binary and test uses:
// text (default) or JSON output at a chosen level, and a logger that writes
// to testing.TB.Log so test output stays with its test. Loggers are always
// injected, never global.
package xlog
