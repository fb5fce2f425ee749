package accumulator_test

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/accumulator"
	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/record"
)

// BenchmarkCorePath measures the CPU core-mode gembatchd spends on a request of its own: what
// intake and the accumulator add to the CPU of receiving it. A reader goroutine builds each
// message as nats.go's read loop does (one buffer for header block and body, headers decoded
// from it) and hands it to a handler goroutine, as nats.go hands it to a subscription. The
// handler is intake's Handle, adding to an accumulator whose group goroutine takes it; the
// baseline, run in turn with it, is a handler that does nothing, as bench's raw subscriber.
// CPU is the process's (getrusage), so the group goroutine's work and the collector's count.
// The figure to compare between builds is own-cpu-ns/request; bench's core intake ratio moves
// with it.
func BenchmarkCorePath(b *testing.B) {
	const n = 20000 // requests a round, as in bench's core rounds
	shape := `{"contents":[{"role":"user","parts":[{"text":""}]}]}`
	text := strings.Repeat("lorem ipsum ", 1024/12+1)[:1024-len(shape)]
	body := []byte(shape[:len(shape)-len(`"}]}]}`)] + text + `"}]}]}`)
	if len(body) != 1024 {
		b.Fatalf("body of %d bytes, want 1024", len(body))
	}
	var own, raw time.Duration
	for b.Loop() {
		raw += cpuOf(func() { pipeline(body, n, func(*nats.Msg) {}) })
		acc := accumulator.New(accumulator.Config{Limits: accumulator.Limits{MaxRequests: 10000, MaxBytes: 1 << 30, MaxWait: time.Hour}},
			func(*record.Record) {}, func(record.Group, record.Request, *gemini.Status) {}, nil)
		in := intake.New(intake.Config{Rules: intake.Rules{DefaultModel: "gemini-2.5-flash", ReplyAllow: []string{"_INBOX.>"},
			ReplyDeny: []string{"$SYS.>", "gembatch.generate", "gembatch.embed"}}}, nil, acc, nil, zerolog.Nop(), nil)
		own += cpuOf(func() {
			pipeline(body, n, func(m *nats.Msg) { in.Handle(gemini.KindGenerate, m) })
			acc.Close() // every request taken and sealed
		})
	}
	requests := float64(b.N) * n
	b.ReportMetric(float64(own)/requests, "cpu-ns/request")
	b.ReportMetric(float64(raw)/requests, "raw-cpu-ns/request")
	b.ReportMetric(float64(own-raw)/requests, "own-cpu-ns/request")
}

// pipeline builds n messages carrying body on one goroutine, as nats.go's read loop does, and
// hands them to handle on another, in runs, as a subscription's delivery goroutine takes them.
func pipeline(body []byte, n int, handle func(*nats.Msg)) {
	msgs := make(chan []*nats.Msg, 64)
	go func() {
		defer close(msgs)
		run := make([]*nats.Msg, 0, 64)
		var hdr []byte
		for i := range n {
			hdr = strconv.AppendInt(append(hdr[:0], "NATS/1.0\r\nGembatch-Key: r-"...), int64(i), 10)
			hdr = append(hdr, "\r\n\r\n"...)
			buf := make([]byte, len(hdr)+len(body))
			copy(buf[copy(buf, hdr):], body)
			h, _ := nats.DecodeHeadersMsg(buf[:len(hdr)])
			reply := strings.Clone("_INBOX.abcdefghijklmnopqrstuv.1") // allocated for each message, as nats.go does
			run = append(run, &nats.Msg{Subject: "gembatch.generate", Reply: reply, Header: h, Data: buf[len(hdr):]})
			if len(run) == cap(run) || i == n-1 {
				msgs <- run
				run = make([]*nats.Msg, 0, 64)
			}
		}
	}()
	for run := range msgs {
		for _, m := range run {
			handle(m)
		}
	}
}

// cpuOf is the process's CPU time (user and system) while fn runs.
func cpuOf(fn func()) time.Duration {
	var r0, r1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	fn()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	return time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
}
