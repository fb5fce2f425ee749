package gemini

import (
	"encoding/json"
	"reflect"
	"testing"
)

// An answer's metadata reads as encoding/json reads it into a ResponseMetadata: the key, by any
// case of its name, the last one when repeated; null and absent alike; a key that is not a
// string is an error.
func TestResponseMetadataReadsAsEncodingJSON(t *testing.T) {
	for _, v := range []string{`{"key":"a"}`, `{"KEY":"b","other":[1,{"key":"x"}]}`, `{"key":"a","key":"c"}`, `{}`, `{"key":null}`,
		`null`, `{"key":"\u00e9\"q"}`, `{"key":1}`, `{"key":{"x":1}}`, `"s"`, `[1]`, `{"key":"a","key":2}`} {
		var want *ResponseMetadata
		wantErr := json.Unmarshal([]byte(v), &want)
		got, err := responseMetadata([]byte(v))
		if (err != nil) != (wantErr != nil) {
			t.Errorf("%s: error %v, encoding/json says %v", v, err, wantErr)
			continue
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v, encoding/json reads %+v", v, got, want)
		}
	}
	if got, err := responseMetadata(nil); got != nil || err != nil {
		t.Errorf("absent metadata: %+v, %v", got, err)
	}
}
