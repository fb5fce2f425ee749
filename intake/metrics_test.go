package intake

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/record"
)

// countingSink accepts every request.
type countingSink struct{ n int }

func (s *countingSink) Add(record.Group, record.Request) error { s.n++; return nil }
func (s *countingSink) Pending() (int64, int64)                { return 0, 0 }

// TestCountersByKindAndModel: requests of two kinds and three models, interleaved so that no
// two in a row share their labels, then in runs, are each counted under their own labels.
func TestCountersByKindAndModel(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	var sink countingSink
	in := New(Config{Rules: Rules{DefaultModel: "gemini-2.5-flash", ReplyAllow: []string{"_INBOX.>"}}}, nil, &sink, nil, zerolog.Nop(), m)
	models := []string{"gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"}
	want := map[[2]string]int{}
	send := func(i int, kind gemini.Kind, model string) {
		body := `{"contents":[{"parts":[{"text":"hi"}]}]}`
		if kind == gemini.KindEmbed {
			body = `{"content":{"parts":[{"text":"hi"}]}}`
		}
		msg := &nats.Msg{Reply: "_INBOX.x", Data: []byte(body), Header: nats.Header{}}
		msg.Header.Set(HeaderKey, fmt.Sprint(i))
		msg.Header.Set(HeaderModel, model)
		in.Handle(kind, msg)
		want[[2]string{string(kind), gemini.ModelName(model)}]++
	}
	for i := range 60 { // no two in a row alike
		send(i, []gemini.Kind{gemini.KindGenerate, gemini.KindEmbed}[i%2], models[i%3])
	}
	for i := range 30 { // runs of ten
		send(100+i, gemini.KindEmbed, models[i/10])
	}
	if sink.n != 90 {
		t.Fatalf("%d of 90 requests accepted", sink.n)
	}
	received := map[string]int{}
	for labels, n := range want {
		received[labels[0]] += n
		if got := testutil.ToFloat64(m.accepted.WithLabelValues(labels[0], labels[1])); got != float64(n) {
			t.Errorf("accepted{kind=%s,model=%s} = %v, want %d", labels[0], labels[1], got, n)
		}
	}
	for kind, n := range received {
		if got := testutil.ToFloat64(m.received.WithLabelValues(kind)); got != float64(n) {
			t.Errorf("received{kind=%s} = %v, want %d", kind, got, n)
		}
	}
}
