// Package pbjson writes a protobuf message as the JSON that
// protojson.MarshalOptions{EmitDefaultValues: true} writes (compact, the
// same fields in the same order, the same spelling of every value), at a
// fraction of its cost: what protojson works out for each message on each
// call (which fields to write, in which order, under which name) is worked
// out here once per message type.
//
// It is the REST API's response encoder. A REST create spent more of the
// leader's CPU in protojson writing the answer than in deciding where the
// VM goes (docs/performance.md); no maintained generator of protojson-
// compatible marshalers could be had (TheThingsIndustries/protoc-gen-go-json
// is not served by the module proxy here), and sonic or encoding/json do
// not speak protojson (lowerCamelCase names, 64-bit integers as strings,
// enum names, RFC 3339 timestamps).
//
// Messages it does not handle are written by protojson itself: any with
// extensions, groups or a well-known type other than Timestamp (Any,
// Struct, Duration, wrappers ...), and any value protojson refuses (invalid
// UTF-8, a timestamp out of range), so that the error is protojson's own.
// TestSameAsProtojson and FuzzSameAsProtojson hold it to protojson's output
// for every message of the API.
package pbjson

import (
	"cmp"
	"encoding/base64"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fallback is what writes the messages pbjson does not.
var fallback = protojson.MarshalOptions{EmitDefaultValues: true}

// Marshal returns m as protojson.MarshalOptions{EmitDefaultValues: true}
// writes it (without the random spaces protojson puts after some commas to
// keep callers from depending on its bytes).
func Marshal(m proto.Message) ([]byte, error) {
	r := m.ProtoReflect()
	if !r.IsValid() { // a nil message: protojson writes {}
		return fallback.Marshal(m)
	}
	p := planOf(r.Descriptor())
	if p == nil {
		return fallback.Marshal(m)
	}
	b, ok := p.append(make([]byte, 0, p.size.Load()), r)
	if !ok {
		return fallback.Marshal(m)
	}
	if n := int64(len(b)); n > p.size.Load() && n <= maxSizeHint {
		p.size.Store(n) // a race may keep the smaller: only a hint
	}
	return b, nil
}

// maxSizeHint bounds the buffer a message type's largest output so far
// has Marshal start with.
const maxSizeHint = 16 << 10

// Handles says whether Marshal writes messages of type d itself (rather
// than through protojson).
func Handles(d protoreflect.MessageDescriptor) bool { return planOf(d) != nil }

// plan is how a message type is written: its fields in protojson's order
// (declaration order; extensions are not handled).
type plan struct {
	fields []field
	// size is the longest output of this type so far (to maxSizeHint),
	// the room Marshal starts with: the answer is one allocation, not a
	// buffer grown four times.
	size atomic.Int64
}

type field struct {
	fd protoreflect.FieldDescriptor
	// name is `"jsonName":`.
	name []byte
	// always: written when unset too (no presence and not in a oneof), as
	// EmitDefaultValues does.
	always bool
	list   bool
	mapKey protoreflect.Kind // the key's kind for a map field, else 0
	value  protoreflect.FieldDescriptor
	sub    *plan // for message values (nil: Timestamp)
	stamp  bool  // message values are google.protobuf.Timestamp
}

// plans holds each message type's plan, or noPlan, by its descriptor
// (not its name: a dynamic type may share a generated type's name).
var plans sync.Map // protoreflect.MessageDescriptor → *plan

// noPlan marks a message type pbjson leaves to protojson.
var noPlan = &plan{}

func planOf(d protoreflect.MessageDescriptor) *plan {
	if p, ok := plans.Load(d); ok {
		if p == noPlan {
			return nil
		}
		return p.(*plan)
	}
	p := build(d, map[protoreflect.FullName]*plan{})
	if p == nil {
		plans.Store(d, noPlan)
		return nil
	}
	plans.Store(d, p)
	return p
}

const timestampName = "google.protobuf.Timestamp"

// build makes d's plan, nil if pbjson cannot write d. building holds the
// plans under construction (a message type may contain itself).
func build(d protoreflect.MessageDescriptor, building map[protoreflect.FullName]*plan) *plan {
	if p, ok := building[d.FullName()]; ok {
		return p
	}
	if d.ExtensionRanges().Len() > 0 || d.IsMapEntry() || d.ParentFile() != nil && d.ParentFile().Package() == "google.protobuf" {
		return nil
	}
	p := &plan{}
	building[d.FullName()] = p
	fds := d.Fields()
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		f := field{fd: fd, always: fd.ContainingOneof() == nil && !fd.HasPresence(), list: fd.IsList(), value: fd}
		if !isPlainName(fd.JSONName()) {
			return nil
		}
		f.name = append(append([]byte{'"'}, fd.JSONName()...), '"', ':')
		if fd.IsMap() {
			f.mapKey = fd.MapKey().Kind()
			f.value = fd.MapValue()
		}
		switch f.value.Kind() {
		case protoreflect.GroupKind:
			return nil
		case protoreflect.MessageKind:
			md := f.value.Message()
			if md.FullName() == timestampName {
				f.stamp = true
			} else if f.sub = build(md, building); f.sub == nil {
				return nil
			}
		case protoreflect.EnumKind:
			if f.value.Enum().FullName() == "google.protobuf.NullValue" {
				return nil
			}
		}
		p.fields = append(p.fields, f)
	}
	return p
}

// isPlainName: a name protojson writes as it is (no character it escapes).
func isPlainName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// append appends m's object to b. False: a value protojson would refuse
// (the caller lets protojson say why).
func (p *plan) append(b []byte, m protoreflect.Message) ([]byte, bool) {
	b = append(b, '{')
	first := true
	for i := range p.fields {
		f := &p.fields[i]
		if !f.always && !m.Has(f.fd) {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, f.name...)
		v := m.Get(f.fd)
		var ok bool
		switch {
		case f.list:
			b, ok = f.appendList(b, v.List())
		case f.mapKey != 0:
			b, ok = f.appendMap(b, v.Map())
		default:
			b, ok = f.appendValue(b, v)
		}
		if !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

func (f *field) appendList(b []byte, l protoreflect.List) ([]byte, bool) {
	b = append(b, '[')
	for i := 0; i < l.Len(); i++ {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = f.appendValue(b, l.Get(i)); !ok {
			return b, false
		}
	}
	return append(b, ']'), true
}

func (f *field) appendMap(b []byte, m protoreflect.Map) ([]byte, bool) {
	keys := make([]protoreflect.MapKey, 0, m.Len())
	m.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		keys = append(keys, k)
		return true
	})
	// protojson's order (order.GenericKeyOrder): false before true,
	// numbers ascending, strings by byte.
	switch f.mapKey {
	case protoreflect.BoolKind:
		slices.SortFunc(keys, func(x, y protoreflect.MapKey) int { return boolCmp(x.Bool(), y.Bool()) })
	case protoreflect.StringKind:
		slices.SortFunc(keys, func(x, y protoreflect.MapKey) int { return cmp.Compare(x.String(), y.String()) })
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		slices.SortFunc(keys, func(x, y protoreflect.MapKey) int { return cmp.Compare(x.Uint(), y.Uint()) })
	default:
		slices.SortFunc(keys, func(x, y protoreflect.MapKey) int { return cmp.Compare(x.Int(), y.Int()) })
	}
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = appendString(b, k.String()); !ok {
			return b, false
		}
		b = append(b, ':')
		if b, ok = f.appendValue(b, m.Get(k)); !ok {
			return b, false
		}
	}
	return append(b, '}'), true
}

// appendValue appends one value of f (an element, for lists and maps), as
// protojson's marshalSingular.
func (f *field) appendValue(b []byte, v protoreflect.Value) ([]byte, bool) {
	switch f.value.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(b, v.Bool()), true
	case protoreflect.StringKind:
		return appendString(b, v.String())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return strconv.AppendInt(b, v.Int(), 10), true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(b, v.Uint(), 10), true
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendInt(b, v.Int(), 10), '"'), true
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b = append(b, '"')
		return append(strconv.AppendUint(b, v.Uint(), 10), '"'), true
	case protoreflect.FloatKind:
		return appendFloat(b, v.Float(), 32), true
	case protoreflect.DoubleKind:
		return appendFloat(b, v.Float(), 64), true
	case protoreflect.BytesKind:
		b = append(b, '"')
		return append(base64.StdEncoding.AppendEncode(b, v.Bytes()), '"'), true
	case protoreflect.EnumKind:
		if ev := f.value.Enum().Values().ByNumber(v.Enum()); ev != nil {
			b = append(b, '"')
			return append(append(b, ev.Name()...), '"'), true // enum names are identifiers
		}
		return strconv.AppendInt(b, int64(v.Enum()), 10), true
	case protoreflect.MessageKind:
		if f.stamp {
			return appendTimestamp(b, v.Message())
		}
		return f.sub.append(b, v.Message())
	}
	return b, false
}

// The range protojson accepts for a Timestamp.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
	maxNanos            = 999999999
)

// appendTimestamp: RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(b []byte, m protoreflect.Message) ([]byte, bool) {
	fds := m.Descriptor().Fields()
	secs, nanos := m.Get(fds.ByNumber(1)).Int(), m.Get(fds.ByNumber(2)).Int()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > maxNanos {
		return b, false
	}
	b = append(b, '"')
	b = time.Unix(secs, 0).UTC().AppendFormat(b, "2006-01-02T15:04:05")
	if nanos != 0 {
		digits := 9
		n := nanos
		for range 2 {
			if n%1000 != 0 {
				break
			}
			n /= 1000
			digits -= 3
		}
		b = append(b, '.')
		s := strconv.AppendInt(make([]byte, 0, 9), n, 10)
		for range digits - len(s) {
			b = append(b, '0')
		}
		b = append(b, s...)
	}
	return append(b, 'Z', '"'), true
}

// appendString quotes s as protojson does: only '"', '\\' and control
// characters escaped; false for invalid UTF-8.
func appendString(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return b, false
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\')
		switch c {
		case '"', '\\':
			b = append(b, c)
		case '\b':
			b = append(b, 'b')
		case '\f':
			b = append(b, 'f')
		case '\n':
			b = append(b, 'n')
		case '\r':
			b = append(b, 'r')
		case '\t':
			b = append(b, 't')
		default:
			b = append(b, 'u')
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"'), true
}

// appendFloat is protojson's (encoding/json's) number spelling.
func appendFloat(b []byte, n float64, bitSize int) []byte {
	switch {
	case math.IsNaN(n):
		return append(b, `"NaN"`...)
	case math.IsInf(n, +1):
		return append(b, `"Infinity"`...)
	case math.IsInf(n, -1):
		return append(b, `"-Infinity"`...)
	}
	format := byte('f')
	if abs := math.Abs(n); abs != 0 {
		if bitSize == 64 && (abs < 1e-6 || abs >= 1e21) ||
			bitSize == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, n, format, -1, bitSize)
	if format == 'e' {
		// "1e-07" → "1e-7"
		if l := len(b); l >= 4 && b[l-4] == 'e' && b[l-3] == '-' && b[l-2] == '0' {
			b[l-2] = b[l-1]
			b = b[:l-1]
		}
	}
	return b
}

func boolCmp(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}
