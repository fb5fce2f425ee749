// Package liveheap reads how much of the heap is live, for the memory tests and the benchmark
// that measure what holding requests and answers costs.
package liveheap

import "runtime"

// Bytes is the live heap once garbage is collected: twice, so that what the first collection
// freed for finalizers is gone too.
func Bytes() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
