//go:build race

package accumulator_test

// raceEnabled: the race detector slows the 100,000-request heap test tenfold and changes
// what the heap holds, so the figure means nothing under it.
const raceEnabled = true
