package emulator_test

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gembatch/gembatch/emulator"
)

func TestExpectedText(t *testing.T) {
	long := strings.Repeat("é", 100)
	for _, tc := range []struct {
		name, request, want string
	}{
		{"one part", `{"contents":[{"parts":[{"text":"hello"}]}]}`, `^emulated: hello #[0-9a-f]{8}$`},
		{"parts joined", `{"contents":[{"parts":[{"text":"a"},{"text":"b"}]},{"parts":[{"text":"c"}],"role":"user"}]}`, "^emulated: a\nb\nc #[0-9a-f]{8}$"},
		{"64 characters", `{"contents":[{"parts":[{"text":"` + long + `"}]}]}`, `^emulated: ` + strings.Repeat("é", 64) + ` #[0-9a-f]{8}$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := emulator.ExpectedText(json.RawMessage(tc.request))
			if !regexp.MustCompile(tc.want).MatchString(got) {
				t.Errorf("ExpectedText = %q, want %s", got, tc.want)
			}
			if again := emulator.ExpectedText(json.RawMessage(tc.request)); again != got {
				t.Errorf("not deterministic: %q then %q", got, again)
			}
		})
	}
	a := emulator.ExpectedText(json.RawMessage(`{"contents":[{"parts":[{"text":"` + long + `x"}]}]}`))
	b := emulator.ExpectedText(json.RawMessage(`{"contents":[{"parts":[{"text":"` + long + `y"}]}]}`))
	if a == b {
		t.Error("texts that differ after 64 characters get the same answer")
	}
}

func TestExpectedEmbedding(t *testing.T) {
	v := emulator.ExpectedEmbedding(json.RawMessage(`{"content":{"parts":[{"text":"x"}]},"outputDimensionality":8}`))
	snake := emulator.ExpectedEmbedding(json.RawMessage(`{"content":{"parts":[{"text":"x"}]},"output_dimensionality":8}`))
	other := emulator.ExpectedEmbedding(json.RawMessage(`{"content":{"parts":[{"text":"y"}]},"outputDimensionality":8}`))
	if len(v) != 8 || !slices.Equal(v, snake) || slices.Equal(v, other) {
		t.Errorf("embeddings %v %v %v", v, snake, other)
	}
	var norm float64
	for _, x := range v {
		norm += float64(x) * float64(x)
	}
	if math.Abs(norm-1) > 1e-5 {
		t.Errorf("norm² %v, want 1", norm)
	}
	if d := emulator.ExpectedEmbedding(json.RawMessage(`{"content":{"parts":[{"text":"x"}]}}`)); len(d) != 16 {
		t.Errorf("default size %d, want 16", len(d))
	}
}

// FuzzCreate sends arbitrary create bodies: every one is answered 200 or 400 with JSON.
func FuzzCreate(f *testing.F) {
	for _, seed := range []string{
		`{"batch":{"displayName":"x","inputConfig":{"requests":{"requests":[{"request":{"contents":[{"parts":[{"text":"hi"}]}]},"metadata":{"key":"k"}}]}}}}`,
		`{"batch":{"display_name":"x","priority":3,"input_config":{"requests":{"requests":[{"request":{"foo":1}}]}}}}`,
		`{"batch":{"inputConfig":{"requests":{"requests":[{"metadata":null}]}}}}`,
		`{"batch":null}`, `[]`, `"x"`, ``,
	} {
		f.Add([]byte(seed))
	}
	emu := emulator.New(emulator.Options{})
	defer emu.Close()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		emu.ServeHTTP(rec, httptest.NewRequest("POST", "/v1beta/models/m:batchGenerateContent", strings.NewReader(string(body))))
		if rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest {
			t.Fatalf("answered %d: %s", rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %s", rec.Body)
		}
	})
}

// FuzzRequest feeds arbitrary requests to the emulated model.
func FuzzRequest(f *testing.F) {
	f.Add([]byte(`{"contents":[{"parts":[{"text":"[[emulator:error=13]]"}]}],"content":{"parts":[]},"outputDimensionality":4}`))
	f.Add([]byte(`{"outputDimensionality":-1}`))
	f.Fuzz(func(t *testing.T, request []byte) {
		if s := emulator.ExpectedText(request); !strings.HasPrefix(s, "emulated: ") {
			t.Fatalf("ExpectedText = %q", s)
		}
		if v := emulator.ExpectedEmbedding(request); len(v) == 0 {
			t.Fatal("empty embedding")
		}
	})
}
