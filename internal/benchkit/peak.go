package benchkit

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
)

// resetPeak returns freed memory to the system and resets this process's peak RSS (VmHWM) to
// its current RSS, which it returns.
func resetPeak() (int64, error) {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, fmt.Errorf("reset peak RSS (Linux only): %w", err)
	}
	return procStatus(strconv.Itoa(os.Getpid()), "VmRSS")
}

// peakGrowth is this process's peak RSS since rss0 was taken, above it, in MiB.
func peakGrowth(rss0 int64) (float64, error) {
	hwm, err := procStatus(strconv.Itoa(os.Getpid()), "VmHWM")
	return float64(hwm-rss0) / (1 << 20), err
}
