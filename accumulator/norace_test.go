//go:build !race

package accumulator_test

const raceEnabled = false
