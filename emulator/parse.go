package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"iter"
	"unicode/utf8"

	"github.com/gembatch/gembatch/gemini"
	"github.com/gembatch/gembatch/internal/jsonscan"
)

// The members each object of a create body may have, in camelCase; batchFields are the batch's.
var (
	topFields      = []string{"batch"}
	inputFields    = []string{"fileName", "requests"}
	requestsFields = []string{"requests"}
	itemFields     = []string{"request", "metadata"}
)

// createSpec is what a create body asks for.
type createSpec struct {
	displayName string
	priority    int64
	fileName    string
	requests    []gemini.InlinedRequest
}

// parseCreate reads a create body, in camelCase or snake_case, in one pass that validates it
// whole, noting where the members it reads are and reading the requests as it goes; the
// checks then run in the order the service makes them, so that a body with several faults is
// refused for the same one.
//
// A body is up to 20 MiB of requests, and a request is kept as a slice of it: the body stays
// alive as long as the job's input does, as copies of the requests would.
func parseCreate(body []byte) (createSpec, error) {
	c := createBody{body: body}
	sc := jsonscan.New(body)
	c.scan(&sc)
	if sc.End() != nil {
		return createSpec{}, errorf("Invalid JSON payload received: %v", validate(body))
	}
	return c.spec()
}

// validate is a plain pass over a whole document. jsonscan words its syntax errors as
// encoding/json does, and judges nesting from the top of the document.
func validate(doc []byte) error {
	sc := jsonscan.New(doc)
	sc.Skip()
	return sc.End()
}

// createBody is what the pass over a create body found: each member parseCreate reads, as
// written, and the requests. Where a name repeats, the last one counts, as in a decode into a
// map.
type createBody struct {
	body      []byte
	validated bool // a plain pass has found the whole body valid
	object
	batch batchBody
}

type batchBody struct {
	object
	displayName, priority []byte
	input                 inputBody
}

type inputBody struct {
	object
	fileName []byte
	requests requestsBody
}

// requestsBody is batch.input_config.requests, which holds the requests array.
type requestsBody struct {
	object
	array bool                    // the requests are an array, which reqs and fault tell of
	other []byte                  // else the value in its place (null, or no array)
	reqs  []gemini.InlinedRequest // the requests read, up to the first at fault
	fault error                   // the first request at fault, in the service's words
}

// object is what the pass learns of one object of the body, for the checks that follow it.
type object struct {
	present   bool   // its member is there, if only as null
	notObject []byte // the value, when it is neither an object nor null
	unknown   []byte // the camelCase name of its first member that is not allowed
}

func (c *createBody) scan(sc *jsonscan.Scanner) {
	for range c.members(sc, topFields) {
		c.scanBatch(sc)
	}
}

func (c *createBody) scanBatch(sc *jsonscan.Scanner) {
	b := &c.batch
	*b = batchBody{}
	for name := range b.members(sc, batchFields) {
		switch string(name) {
		case "displayName":
			b.displayName = sc.Skip()
		case "priority":
			b.priority = sc.Skip()
		case "inputConfig":
			c.scanInput(sc)
		default: // output-only, accepted and ignored
			sc.Skip()
		}
	}
}

func (c *createBody) scanInput(sc *jsonscan.Scanner) {
	in := &c.batch.input
	*in = inputBody{}
	for name := range in.members(sc, inputFields) {
		if string(name) == "fileName" {
			in.fileName = sc.Skip()
		} else {
			c.scanRequests(sc)
		}
	}
}

func (c *createBody) scanRequests(sc *jsonscan.Scanner) {
	r := &c.batch.input.requests
	*r = requestsBody{}
	for range r.members(sc, requestsFields) {
		r.reqs, r.fault = nil, nil
		if r.array = sc.Peek() == '['; r.array {
			c.readItems(sc, r)
		} else {
			r.other = sc.Skip()
		}
	}
}

// members reads the object or null that comes next in sc and yields the camelCase name of
// each member in allowed, whose value the loop body must read. Other members are noted in o
// and skipped, as is a value that is no object.
func (o *object) members(sc *jsonscan.Scanner, allowed []string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		o.present = true
		switch sc.Peek() {
		case '{':
		case 'n': // null reads as an empty object
			sc.Skip()
			return
		default:
			o.notObject = sc.Skip()
			return
		}
		sc.Open()
		for sc.More() {
			name := memberName(sc.Key())
			if !oneOf(name, allowed) {
				if o.unknown == nil {
					o.unknown = name
				}
				sc.Skip()
				continue
			}
			if !yield(name) {
				return
			}
		}
	}
}

// readItems reads the requests array that comes next in sc, each item with a scanner of its
// own (jsonscan steps through objects, not arrays), then moves sc on past the array.
func (c *createBody) readItems(sc *jsonscan.Scanner, r *requestsBody) {
	rest := sc.Bytes()[sc.Offset()+1:]
	if s := jsonscan.New(rest); s.Peek() == ']' { // an empty array
		rest = rest[s.Offset()+1:]
	} else {
		for i, more := 0, true; more; i++ {
			var ok bool
			if rest, more, ok = c.readItem(rest, i, r); !ok {
				abandon(sc)
				return
			}
		}
	}
	*sc = jsonscan.New(rest) // inside the requests object, past a member's value
	if c.tooDeep(rest) {
		abandon(sc)
	}
}

// readItem reads item i of the requests array, at the start of items, into r, and returns
// what follows the ',' or ']' after it, and whether that was a ','. ok is false where the body
// is not valid JSON there.
func (c *createBody) readItem(items []byte, i int, r *requestsBody) (rest []byte, more, ok bool) {
	sc := jsonscan.New(items)
	sc.Peek()
	start := sc.Offset()
	req, sure := readRequest(&sc)
	item := items[start:sc.Offset()]
	next := sc.Peek()
	if sc.Err() != nil || (next != ',' && next != ']') || c.tooDeep(item) {
		return nil, false, false
	}
	if !sure && r.fault == nil {
		req, r.fault = decodeRequest(item, i)
	}
	if r.fault == nil {
		r.reqs = append(r.reqs, req)
	}
	return items[sc.Offset()+1:], next == ',', true
}

// nestLimit is the most brackets a part of the body that a scanner of its own reads may open
// and still be sure to keep within encoding/json's nesting limit of 10,000, which that scanner
// counts from where it starts: the requests array is five levels down.
const nestLimit = 10000 - 5

// tooDeep reports whether part, which a scanner of its own has read, nests deeper than
// encoding/json allows. Only a part with more than nestLimit brackets might; then a plain pass
// over the whole body decides, once.
func (c *createBody) tooDeep(part []byte) bool {
	if c.validated || len(part) <= nestLimit || bytes.Count(part, []byte("{"))+bytes.Count(part, []byte("[")) <= nestLimit {
		return false
	}
	c.validated = true
	return validate(c.body) != nil
}

// abandon ends the pass at a fault in the body: a scanner over nothing fails at once, which
// ends every loop over it, and parseCreate words the fault as a plain pass finds it.
func abandon(sc *jsonscan.Scanner) {
	*sc = jsonscan.New(nil)
	sc.Skip()
}

// check refuses the object at at as the service does: a value that is no object, in
// encoding/json's words, or else its first unknown member.
func (o *object) check(at string) error {
	if o.notObject != nil {
		_, err := fields(o.notObject, at)
		return err
	}
	if o.unknown != nil {
		return unknownName(string(o.unknown), at)
	}
	return nil
}

// spec checks what the pass found, in the service's order.
func (c *createBody) spec() (createSpec, error) {
	var spec createSpec
	b, in, r := &c.batch, &c.batch.input, &c.batch.input.requests
	if err := c.check(""); err != nil {
		return spec, err
	}
	if !b.present {
		return spec, errorf("* batch: batch is not specified")
	}
	if err := b.check("batch"); err != nil {
		return spec, err
	}
	var prio gemini.Int64
	if err := decodeValue(b.displayName, "displayName", "batch", &spec.displayName); err != nil {
		return spec, err
	}
	if err := decodeValue(b.priority, "priority", "batch", &prio); err != nil {
		return spec, err
	}
	spec.priority = int64(prio)
	if !in.present {
		return spec, errorf("* batch.input_config: input_config is not specified")
	}
	if err := in.check("batch.input_config"); err != nil {
		return spec, err
	}
	if err := decodeValue(in.fileName, "fileName", "batch.input_config", &spec.fileName); err != nil {
		return spec, err
	}
	if (spec.fileName == "") == !r.present {
		return spec, errorf("* batch.input_config: exactly one of file_name and requests must be set")
	}
	if spec.fileName != "" {
		return spec, nil
	}
	if err := r.check("batch.input_config.requests"); err != nil {
		return spec, err
	}
	if !r.array {
		var none []json.RawMessage
		if err := decodeValue(r.other, "requests", "batch.input_config.requests", &none); err != nil {
			return spec, err
		}
	}
	if r.fault != nil {
		return spec, r.fault
	}
	if len(r.reqs) == 0 {
		return spec, errorf("* batch.input_config.requests.requests: requests is not specified")
	}
	spec.requests = r.reqs
	return spec, nil
}

// readRequest reads the item that comes next in sc, whole. ok is false for an item it cannot
// be sure to read as a decode with encoding/json would (one that is no object, has an unknown
// member, or metadata beyond strings, booleans and nulls): decodeRequest reads those.
func readRequest(sc *jsonscan.Scanner) (req gemini.InlinedRequest, ok bool) {
	var (
		o  object
		md []byte
	)
	for name := range o.members(sc, itemFields) {
		v := sc.Skip()
		if string(name) == "request" {
			req.Request = v[:len(v):len(v)] // an append must not write over the body
		} else {
			md = v
		}
	}
	if o.notObject != nil || o.unknown != nil {
		return req, false
	}
	if md == nil || string(md) == "null" {
		return req, true
	}
	key, ok := metadataKey(md)
	if ok {
		req.Metadata = &gemini.RequestMetadata{Key: key}
	}
	return req, ok
}

// metadataKey reads a request's metadata, a google.protobuf.Struct, as a decode into a
// map[string]any does: the key is its last member named "key", if that is a string. ok is
// false unless the metadata is an object of strings, booleans and nulls: such a decode refuses
// a number beyond a float64's range, wherever it is nested, so anything else goes that way.
func metadataKey(md []byte) (key string, ok bool) {
	if md[0] != '{' {
		return "", false
	}
	sc := jsonscan.New(md)
	sc.Open()
	var last []byte
	for sc.More() {
		name := sc.Key()
		v := sc.Skip()
		switch v[0] {
		case '"', 't', 'f', 'n':
		default:
			return "", false
		}
		if string(name) == "key" || (!plain(name) && unquote(name) == "key") {
			last = v
		}
	}
	if last == nil || last[0] != '"' {
		return "", true
	}
	return unquote(last[1 : len(last)-1]), true
}

// decodeRequest decodes one item of the requests array, at index i, with encoding/json, as
// parseCreate once decoded them all: for the rare item readRequest leaves to it, and so that
// an item's error is worded as it always was.
func decodeRequest(raw []byte, i int) (gemini.InlinedRequest, error) {
	at := fmt.Sprintf("batch.input_config.requests.requests[%d]", i)
	item, err := fields(raw, at, itemFields...)
	if err != nil {
		return gemini.InlinedRequest{}, err
	}
	// metadata is a google.protobuf.Struct: any fields, of which "key" names the request.
	var md map[string]any
	if err := decodeField(item, "metadata", at, &md); err != nil {
		return gemini.InlinedRequest{}, err
	}
	req := gemini.InlinedRequest{Request: item["request"]}
	if md != nil {
		key, _ := md["key"].(string)
		req.Metadata = &gemini.RequestMetadata{Key: key}
	}
	return req, nil
}

// memberName is a member's name, as written between its quotes, decoded as encoding/json
// decodes a map key and put in camelCase. A plain camelCase name, nearly every one, is
// returned as it is, without a copy.
func memberName(key []byte) []byte {
	if bytes.IndexByte(key, '_') < 0 && plain(key) {
		return key
	}
	return []byte(camel(unquote(key)))
}

// plain reports whether a JSON string's contents decode to themselves: no escapes and valid
// UTF-8 (encoding/json turns each invalid byte into U+FFFD).
func plain(s []byte) bool {
	return bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s)
}

// unquote decodes the contents of a JSON string, which the scanner has validated, as
// encoding/json does.
func unquote(s []byte) string {
	if plain(s) {
		return string(s)
	}
	q := make([]byte, 0, len(s)+2)
	q = append(append(append(q, '"'), s...), '"')
	var out string
	_ = json.Unmarshal(q, &out) // valid: a decode that cannot fail
	return out
}

func oneOf(name []byte, names []string) bool {
	for _, n := range names {
		if string(name) == n {
			return true
		}
	}
	return false
}
