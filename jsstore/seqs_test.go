package jsstore

import (
	"slices"
	"testing"

	"github.com/gembatch/gembatch/record"
)

func TestSeqsRoundTrip(t *testing.T) {
	in := []uint64{9, 3, 4, 5, 1 << 40, 100}
	var reqs []record.Request
	for _, s := range in {
		reqs = append(reqs, record.Request{Seq: s})
	}
	reqs = append(reqs, record.Request{}) // core-mode requests carry no sequence
	got := decodeSeqs(encodeSeqs(reqs))
	want := slices.Clone(in)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("round trip %v, want %v", got, want)
	}
	var many []record.Request
	for i := range 10000 {
		many = append(many, record.Request{Seq: uint64(1000 + 2*i)})
	}
	if n := len(encodeSeqs(many)); n > 10000+8 {
		t.Fatalf("10,000 close sequences take %d bytes", n)
	}
}
