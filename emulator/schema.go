package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
)

// Structured output: a JSON answer valid against the schema of the request, whether it came as
// responseSchema (the OpenAPI subset, types in upper case) or responseJsonSchema (JSON Schema).
// The value is a pure function of the schema and the prompt's seed.

const (
	schemaFullDepth  = 6 // below this depth, objects carry only required properties and arrays minItems
	schemaMaxDepth   = 32
	defaultArrayLen  = 2
	defaultStringTag = "emulated"
)

// schemaFaker builds one value from a schema; root resolves "$ref"s.
type schemaFaker struct {
	rng  *rand.Rand
	root map[string]any
}

// fakeJSON returns JSON text valid against schema (decoded JSON), drawn from seed.
func fakeJSON(schema map[string]any, seed [32]byte) (string, error) {
	f := &schemaFaker{rng: rand.New(rand.NewChaCha8(seed)), root: schema}
	v, err := f.value(schema, "value", 0, 0)
	if err != nil {
		return "", err
	}
	b, err := marshal(v)
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSuffix(b, []byte("\n"))), nil
}

// key reads a schema keyword in camelCase or snake_case ("minItems" or "min_items").
func key(s map[string]any, name string) (any, bool) {
	if v, ok := s[name]; ok && v != nil {
		return v, true
	}
	var snake strings.Builder
	for _, r := range name {
		if r >= 'A' && r <= 'Z' {
			snake.WriteByte('_')
			r += 'a' - 'A'
		}
		snake.WriteRune(r)
	}
	v, ok := s[snake.String()]
	return v, ok && v != nil
}

func number(s map[string]any, name string) (float64, bool) {
	v, ok := key(s, name)
	if !ok {
		return 0, false
	}
	switch n := v.(type) {
	case float64:
		return n, true
	case string: // int64 fields of the OpenAPI subset come as strings
		var f float64
		_, err := fmt.Sscan(n, &f)
		return f, err == nil
	}
	return 0, false
}

func (f *schemaFaker) value(s map[string]any, name string, index, depth int) (any, error) {
	if depth > schemaMaxDepth {
		return nil, errorf("* GenerationConfig.response_schema: nested more than %d levels", schemaMaxDepth)
	}
	if ref, ok := key(s, "$ref"); ok {
		target, err := f.resolve(fmt.Sprint(ref))
		if err != nil {
			return nil, err
		}
		return f.value(target, name, index, depth+1)
	}
	if v, ok := key(s, "const"); ok {
		return v, nil
	}
	if enum, ok := key(s, "enum"); ok {
		if vs, ok := enum.([]any); ok && len(vs) > 0 {
			return vs[(f.rng.IntN(len(vs))+index)%len(vs)], nil
		}
	}
	for _, alt := range []string{"anyOf", "oneOf", "allOf"} {
		if v, ok := key(s, alt); ok {
			if vs, ok := v.([]any); ok && len(vs) > 0 {
				if sub, ok := firstNotNull(vs); ok {
					return f.value(sub, name, index, depth+1)
				}
			}
		}
	}
	switch schemaType(s) {
	case "object":
		return f.object(s, depth)
	case "array":
		return f.array(s, name, depth)
	case "integer":
		lo, hi := bounds(s, 0, 100)
		lo, hi = math.Ceil(lo), math.Floor(hi)
		if hi < lo {
			return nil, errorf("* GenerationConfig.response_schema: no integer lies between minimum and maximum of %q", name)
		}
		return int64(lo) + (f.rng.Int64N(int64(hi-lo)+1)+int64(index))%(int64(hi-lo)+1), nil
	case "number":
		lo, hi := bounds(s, 0, 100)
		v := lo + (hi-lo)*(0.1+0.8*f.rng.Float64())
		if r := math.Round(v*100) / 100; r >= lo && r <= hi {
			v = r // two decimals read better, where the bounds allow them
		}
		return v, nil
	case "boolean":
		return f.rng.IntN(2) == 1, nil
	case "null":
		return nil, nil
	}
	return f.text(s, name, index), nil
}

// schemaType is the lower-case type of s, guessed from its keywords when it names none. A
// list of types ("string","null") gives its first that is not "null".
func schemaType(s map[string]any) string {
	switch t := s["type"].(type) {
	case string:
		return strings.ToLower(t)
	case []any:
		for _, v := range t {
			if name, ok := v.(string); ok && !strings.EqualFold(name, "null") {
				return strings.ToLower(name)
			}
		}
		return "null"
	}
	if _, ok := key(s, "properties"); ok {
		return "object"
	}
	if _, ok := key(s, "items"); ok {
		return "array"
	}
	return "string"
}

func firstNotNull(alts []any) (map[string]any, bool) {
	var first map[string]any
	for _, a := range alts {
		sub, ok := a.(map[string]any)
		if !ok {
			continue
		}
		if first == nil {
			first = sub
		}
		if schemaType(sub) != "null" {
			return sub, true
		}
	}
	return first, first != nil
}

// bounds are the inclusive limits of a number, with exclusive ones moved inward by 1.
func bounds(s map[string]any, lo, hi float64) (float64, float64) {
	minSet, maxSet := false, false
	if v, ok := number(s, "minimum"); ok {
		lo, minSet = v, true
	}
	if v, ok := number(s, "exclusiveMinimum"); ok {
		lo, minSet = v+1, true
	}
	if v, ok := number(s, "maximum"); ok {
		hi, maxSet = v, true
	}
	if v, ok := number(s, "exclusiveMaximum"); ok {
		hi, maxSet = v-1, true
	}
	switch {
	case minSet && !maxSet:
		hi = lo + 100
	case maxSet && !minSet:
		lo = min(lo, hi-100)
	}
	if hi < lo && !(minSet && maxSet) {
		hi = lo
	}
	const most = 1e15 // keeps integer ranges within int64
	return min(max(lo, -most), most), min(max(hi, -most), most)
}

func (f *schemaFaker) resolve(ref string) (map[string]any, error) {
	path, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, errorf("* GenerationConfig.response_json_schema: only local references (#/...) are supported, not %q", ref)
	}
	var node any = f.root
	for _, seg := range strings.Split(path, "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		m, ok := node.(map[string]any)
		if !ok {
			return nil, errorf("* GenerationConfig.response_json_schema: reference %q leads nowhere", ref)
		}
		node = m[seg]
	}
	target, ok := node.(map[string]any)
	if !ok {
		return nil, errorf("* GenerationConfig.response_json_schema: reference %q leads nowhere", ref)
	}
	return target, nil
}

func (f *schemaFaker) object(s map[string]any, depth int) (orderedObject, error) {
	props, _ := key(s, "properties")
	pm, _ := props.(map[string]any)
	var required []string
	if r, ok := key(s, "required"); ok {
		list, _ := r.([]any)
		for _, v := range list {
			if name, ok := v.(string); ok {
				required = append(required, name)
			}
		}
	}
	names := propertyOrder(s, pm)
	var obj orderedObject
	for _, name := range names {
		sub, isSchema := pm[name].(map[string]any)
		if !isSchema || (depth >= schemaFullDepth && !slices.Contains(required, name)) {
			continue
		}
		v, err := f.value(sub, name, 0, depth+1)
		if err != nil {
			return nil, err
		}
		obj = append(obj, field{name, v})
	}
	for _, name := range required { // required but not described: any value will do
		if _, described := pm[name]; !described {
			obj = append(obj, field{name, defaultStringTag + " " + name})
		}
	}
	return obj, nil
}

// propertyOrder is the schema's propertyOrdering followed by the other properties, sorted.
func propertyOrder(s map[string]any, props map[string]any) []string {
	var names []string
	if po, ok := key(s, "propertyOrdering"); ok {
		list, _ := po.([]any)
		for _, v := range list {
			if name, ok := v.(string); ok && props[name] != nil && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	var rest []string
	for name := range props {
		if !slices.Contains(names, name) {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	return append(names, rest...)
}

func (f *schemaFaker) array(s map[string]any, name string, depth int) ([]any, error) {
	n := defaultArrayLen
	minItems, hasMin := number(s, "minItems")
	if hasMin {
		n = max(n, int(minItems))
	}
	if depth >= schemaFullDepth {
		n = int(minItems)
	}
	if most, ok := number(s, "maxItems"); ok {
		n = min(n, int(most))
	}
	items, _ := key(s, "items")
	sub, _ := items.(map[string]any)
	out := make([]any, 0, n)
	for i := range n {
		v, err := f.value(sub, name, i, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// text is a string for the property name, shaped by format, minLength and maxLength.
func (f *schemaFaker) text(s map[string]any, name string, index int) string {
	format, _ := key(s, "format")
	var v string
	switch format {
	case "date-time":
		v = fmt.Sprintf("2025-01-%02dT10:00:00Z", 1+(f.rng.IntN(28)+index)%28)
	case "date":
		v = fmt.Sprintf("2025-01-%02d", 1+(f.rng.IntN(28)+index)%28)
	case "time":
		v = fmt.Sprintf("10:%02d:00", (f.rng.IntN(60)+index)%60)
	case "email":
		v = fmt.Sprintf("user%d@example.com", f.rng.IntN(1000)+index)
	case "uri":
		v = fmt.Sprintf("https://example.com/%d", f.rng.IntN(1000)+index)
	case "uuid":
		v = fmt.Sprintf("00000000-0000-4000-8000-%012x", f.rng.Int64N(1<<40)+int64(index))
	default:
		v = fmt.Sprintf("%s %s %d", defaultStringTag, name, f.rng.IntN(1000)+index)
	}
	if least, ok := number(s, "minLength"); ok {
		for len([]rune(v)) < int(least) {
			v += " " + defaultStringTag
		}
	}
	if most, ok := number(s, "maxLength"); ok && len([]rune(v)) > int(most) {
		v = string([]rune(v)[:max(0, int(most))])
	}
	return v
}

// orderedObject is a JSON object that keeps its fields in the order of the schema.
type orderedObject []field

type field struct {
	name  string
	value any
}

func (o orderedObject) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, fl := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := json.Marshal(fl.name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(fl.value)
		if err != nil {
			return nil, err
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}
