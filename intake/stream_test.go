package intake_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/intake"
	"github.com/gembatch/gembatch/internal/stacktest"
	"github.com/gembatch/gembatch/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, stacktest.LeakOptions()...) }

func jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(stacktest.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func streamConfig() *intake.StreamConfig {
	return &intake.StreamConfig{Stream: "REQS", SubjectPrefix: "gb.stream", Replicas: 1, Storage: jetstream.FileStorage, MaxAge: time.Hour}
}

func TestEnsureStreamCreatesAndAdopts(t *testing.T) {
	js := jetStream(t)
	ctx := context.Background()
	cfg := streamConfig()
	s, err := intake.EnsureStream(ctx, js, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	info := s.CachedInfo().Config
	if info.Metadata["gembatch"] != "managed" || strings.Join(info.Subjects, ",") != "gb.stream.generate,gb.stream.embed" || info.MaxAge != time.Hour {
		t.Fatalf("created %+v", info)
	}
	// A managed stream follows the configuration.
	cfg.MaxAge = 2 * time.Hour
	if s, err = intake.EnsureStream(ctx, js, cfg, zerolog.Nop()); err != nil || s.CachedInfo().Config.MaxAge != 2*time.Hour {
		t.Fatalf("managed stream not updated: %v", err)
	}
}

func TestEnsureStreamLeavesForeignStreams(t *testing.T) {
	js := jetStream(t)
	ctx := context.Background()
	cfg := streamConfig()
	// Someone else's stream capturing our subjects, with its own max age: adopted, unchanged.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "REQS", Subjects: []string{"gb.stream.>"}, MaxAge: 5 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	s, err := intake.EnsureStream(ctx, js, cfg, zerolog.Nop())
	if err != nil || s.CachedInfo().Config.MaxAge != 5*time.Hour {
		t.Fatalf("foreign stream: %v, max age %v; want adopted unchanged", err, s.CachedInfo().Config.MaxAge)
	}
	// One that does not capture our subjects is an error unless we may change it.
	if _, err := js.UpdateStream(ctx, jetstream.StreamConfig{Name: "REQS", Subjects: []string{"other.>"}, MaxAge: 5 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := intake.EnsureStream(ctx, js, cfg, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "GEMBATCH_STREAM_UPDATE") {
		t.Fatalf("stream without our subjects: %v; want an error naming GEMBATCH_STREAM_UPDATE", err)
	}
	cfg.Update = true
	s, err = intake.EnsureStream(ctx, js, cfg, zerolog.Nop())
	if err != nil || !strings.Contains(strings.Join(s.CachedInfo().Config.Subjects, ","), "gb.stream.generate") {
		t.Fatalf("with Update: %v, subjects %v", err, s.CachedInfo().Config.Subjects)
	}
}

// TestRemoveSkipsMessagesAlreadyGone: a takeover removes the messages of a record whose earlier
// owner may have removed some of them already (it was killed mid-way); a message the stream no
// longer holds is not an error, and every other one is removed.
func TestRemoveSkipsMessagesAlreadyGone(t *testing.T) {
	js := jetStream(t)
	ctx := context.Background()
	cfg := streamConfig()
	s, err := intake.EnsureStream(ctx, js, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var reqs []record.Request
	for i := range 4 {
		ack, err := js.Publish(ctx, cfg.StreamSubject(gemini.KindGenerate), []byte(`{"contents":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, record.Request{Key: strconv.Itoa(i), Seq: ack.Sequence})
	}
	if err := s.DeleteMsg(ctx, reqs[1].Seq); err != nil {
		t.Fatal(err)
	}
	in := intake.NewStream(*cfg, nil, js, nil, nil, zerolog.Nop(), nil)
	if err := in.Remove(ctx, reqs); err != nil {
		t.Fatalf("remove with one message gone already: %v", err)
	}
	for _, q := range reqs {
		if _, err := s.GetMsg(ctx, q.Seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Errorf("message %d still in the stream: %v", q.Seq, err)
		}
	}
}
