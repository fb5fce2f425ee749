package jsstore

import (
	"encoding/binary"
	"slices"

	"github.com/gembatch/gembatch/record"
)

// encodeSeqs packs the requests' stream sequences, sorted, as delta varints: a batch of 10,000
// mostly consecutive sequences takes about 10 KB.
func encodeSeqs(reqs []record.Request) []byte {
	seqs := make([]uint64, 0, len(reqs))
	for _, q := range reqs {
		if q.Seq != 0 {
			seqs = append(seqs, q.Seq)
		}
	}
	if len(seqs) == 0 {
		return nil
	}
	slices.Sort(seqs)
	out := make([]byte, 0, len(seqs)*2)
	var prev uint64
	for _, s := range seqs {
		out = binary.AppendUvarint(out, s-prev)
		prev = s
	}
	return out
}

func decodeSeqs(b []byte) []uint64 {
	var out []uint64
	var prev uint64
	for len(b) > 0 {
		d, n := binary.Uvarint(b)
		if n <= 0 {
			return out
		}
		prev += d
		out = append(out, prev)
		b = b[n:]
	}
	return out
}
