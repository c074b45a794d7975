package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/yunchi/yunchi/internal/pbjson"
)

// restCodec is the gateway's marshaler with a stricter, better-spoken
// request decoder: the body must be exactly one JSON object, and what is
// wrong with it is said with where it is ("request body is not valid JSON:
// unexpected end of input at offset 17"), the fields a message accepts, and
// the values an enum field accepts.
type restCodec struct {
	runtime.Marshaler
	// marshal is the options of Marshaler's JSONPb. Messages are written
	// by pbjson when they are the one set of options pbjson writes (the
	// same JSON at a fraction of protojson's cost: a REST create spent
	// more CPU writing its answer than placing the VM), else by protojson
	// with them; either way without JSONPb's copy through a bytes.Buffer.
	marshal   protojson.MarshalOptions
	unmarshal protojson.UnmarshalOptions
}

func (c *restCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		if _, body := m.(*httpbody.HttpBody); !body {
			if c.marshal == (protojson.MarshalOptions{EmitDefaultValues: true}) {
				return pbjson.Marshal(m)
			}
			return c.marshal.Marshal(m)
		}
	}
	return c.Marshaler.Marshal(v)
}

func (c *restCodec) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error { return c.decode(r, v) })
}

func (c *restCodec) decode(r io.Reader, v any) error {
	var b []byte
	if rb, ok := r.(*readBody); ok {
		b = rb.take() // read and bounded by the guard
	} else {
		// The guard has already bounded the body; this bounds any other path.
		var err error
		if b, err = io.ReadAll(io.LimitReader(r, MaxRequestBody+1)); err != nil {
			return fmt.Errorf("reading the request body: %v", err)
		}
	}
	if len(b) > MaxRequestBody {
		return fmt.Errorf("request body is larger than the %d-byte limit", MaxRequestBody)
	}
	raw, err := oneJSONValue(b)
	if err != nil || raw == nil {
		return err // io.EOF for an empty body: the gateway reads that as an empty request
	}
	m, ok := v.(proto.Message)
	if !ok {
		return c.Marshaler.NewDecoder(bytes.NewReader(raw)).Decode(v)
	}
	if raw[0] != '{' {
		return fmt.Errorf("request body must be a JSON object ({...}), not %s", jsonKind(raw[0]))
	}
	if err := c.unmarshal.Unmarshal(raw, m); err != nil {
		// Everything explainFields finds, protojson refuses too, so it is
		// asked only then (it parses the body again), and its words win.
		if msg := explainFields(m.ProtoReflect().Descriptor(), raw, ""); msg != "" {
			return errors.New("request body: " + msg)
		}
		return errors.New("request body: " + protojsonMessage(err))
	}
	return nil
}

// oneJSONValue returns the one JSON value b holds; io.EOF when b is empty
// (or only white space); an error naming the offset when b is not valid
// JSON or holds more than one value.
func oneJSONValue(b []byte) (json.RawMessage, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, io.EOF
	}
	// Valid JSON is one value between JSON white space: that value, without
	// the decoder's buffers and copy. The decoder below words the errors.
	if json.Valid(b) {
		return bytes.Trim(b, " \t\r\n"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var se *json.SyntaxError
		switch {
		case errors.As(err, &se):
			return nil, fmt.Errorf("request body is not valid JSON: %v at offset %d", se, se.Offset)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("request body is not valid JSON: unexpected end of input at offset %d", len(b))
		default:
			return nil, fmt.Errorf("request body is not valid JSON: %v", err)
		}
	}
	end := dec.InputOffset()
	rest := bytes.TrimLeft(b[end:], " \t\r\n")
	if len(rest) > 0 {
		return nil, fmt.Errorf("request body is not valid JSON: unexpected data after the JSON value at offset %d: send exactly one JSON object", len(b)-len(rest))
	}
	return raw, nil
}

func jsonKind(c byte) string {
	switch c {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// explainFields walks a JSON object against md and says what protojson
// would refuse in a way a person can act on: an unknown field (with the
// fields md has) or an enum value md does not have (with the values it
// has). "" when it finds neither; protojson judges the rest.
func explainFields(md protoreflect.MessageDescriptor, raw json.RawMessage, prefix string) string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return ""
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			return fmt.Sprintf("unknown field %q (%s has %s)", prefix+k, md.Name(), strings.Join(jsonFieldNames(md), ", "))
		}
		name := prefix + fd.JSONName()
		v := obj[k]
		switch {
		case fd.IsMap():
			continue
		case fd.Enum() != nil:
			vals := []json.RawMessage{v}
			if fd.IsList() {
				vals = nil
				if json.Unmarshal(v, &vals) != nil {
					continue
				}
			}
			for _, x := range vals {
				var s *string
				if json.Unmarshal(x, &s) != nil || s == nil {
					continue // numbers and nulls: protojson and validation judge them
				}
				if fd.Enum().Values().ByName(protoreflect.Name(*s)) == nil {
					return fmt.Sprintf("%s: %q is not a valid value: use one of %s", name, *s, strings.Join(enumNames(fd.Enum()), ", "))
				}
			}
		case fd.Message() != nil && !fd.IsList() && !strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf."):
			if msg := explainFields(fd.Message(), v, name+"."); msg != "" {
				return msg
			}
		}
	}
	return ""
}

func jsonFieldNames(md protoreflect.MessageDescriptor) []string {
	var out []string
	for i := 0; i < md.Fields().Len(); i++ {
		out = append(out, md.Fields().Get(i).JSONName())
	}
	return out
}

// enumNames are the values an enum field takes, without the zero value
// (UNSPECIFIED: "not set").
func enumNames(ed protoreflect.EnumDescriptor) []string {
	var out []string
	for i := 0; i < ed.Values().Len(); i++ {
		if v := ed.Values().Get(i); v.Number() != 0 {
			out = append(out, string(v.Name()))
		}
	}
	return out
}

// protojson's errors read "proto: (line 1:28): invalid value for ...", with a
// space or a no-break space after "proto:".
var protojsonPos = regexp.MustCompile(`^proto:[\s\x{a0}]*(?:\(line (\d+):(\d+)\):[\s\x{a0}]*)?`)

func protojsonMessage(err error) string {
	s := err.Error()
	m := protojsonPos.FindStringSubmatch(s)
	if m == nil {
		return s
	}
	s = s[len(m[0]):]
	if m[1] != "" {
		s += fmt.Sprintf(" (line %s, column %s)", m[1], m[2])
	}
	return s
}
