//go:build !race

package ringattn_test

// raceEnabled: see race_on_test.go.
const raceEnabled = false
