package pbjson

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// apiMessages are the message types of the public API.
func apiMessages(t testing.TB) []protoreflect.MessageType {
	var out []protoreflect.MessageType
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if mt.Descriptor().ParentFile().Package() == "yunchi.v1" {
			out = append(out, mt)
		}
		return true
	})
	if len(out) < 50 {
		t.Fatalf("only %d API message types registered", len(out))
	}
	return out
}

// compact removes the spaces protojson adds at random after commas.
func compact(t testing.TB, b []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
	return buf.String()
}

var want = protojson.MarshalOptions{EmitDefaultValues: true}

// same fails unless Marshal writes m as protojson does, or fails as it does.
func same(t testing.TB, m proto.Message) {
	t.Helper()
	w, werr := want.Marshal(m)
	g, gerr := Marshal(m)
	if (werr != nil) != (gerr != nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("%s: error %v, protojson's %v", m.ProtoReflect().Descriptor().FullName(), gerr, werr)
	}
	if werr != nil {
		return
	}
	if bytes.Contains(g, []byte(", ")) && !bytes.Contains(w, []byte(", ")) {
		t.Fatalf("spaces in %s", g)
	}
	if cw, cg := compact(t, w), compact(t, g); cw != cg {
		t.Fatalf("%s:\n got  %s\n want %s", m.ProtoReflect().Descriptor().FullName(), cg, cw)
	}
}

// Every API message, empty and filled at random a hundred times, with the
// awkward values (control characters, invalid UTF-8, NaN, timestamps out
// of range, unknown enum numbers) among them.
func TestSameAsProtojson(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, mt := range apiMessages(t) {
		sameAtRandom(t, r, mt, 100)
	}
}

// sameAtRandom checks an empty mt and n filled at random.
func sameAtRandom(t *testing.T, r *rand.Rand, mt protoreflect.MessageType, n int) {
	t.Helper()
	same(t, mt.New().Interface())
	for range n {
		m := mt.New()
		fill(r, m, 0)
		same(t, m.Interface())
	}
}

// The API's messages are written here, not by protojson; what carries a
// type pbjson leaves alone goes to protojson whole.
func TestHandles(t *testing.T) {
	for _, mt := range apiMessages(t) {
		if !Handles(mt.Descriptor()) {
			t.Errorf("%s is left to protojson", mt.Descriptor().FullName())
		}
	}
	for _, m := range []proto.Message{&status.Status{}, &emptypb.Empty{}, &durationpb.Duration{}, &timestamppb.Timestamp{}} {
		if Handles(m.ProtoReflect().Descriptor()) {
			t.Errorf("%s is handled", m.ProtoReflect().Descriptor().FullName())
		}
		same(t, m)
	}
	// A status with details (an Any): protojson's output.
	d, err := anypb.New(&yunchiv1.VM{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	same(t, &status.Status{Code: 3, Message: "bad", Details: []*anypb.Any{d}})
	var vm *yunchiv1.VM // a nil message
	same(t, vm)
}

func TestTimestamps(t *testing.T) {
	for _, ts := range []*timestamppb.Timestamp{
		{}, {Seconds: 1, Nanos: 1}, {Seconds: 1, Nanos: 1000}, {Seconds: 1, Nanos: 1000000}, {Seconds: 1, Nanos: 10000000},
		{Seconds: 1, Nanos: 123456789}, {Seconds: 1, Nanos: 999999999}, {Seconds: 1, Nanos: 1e9}, {Seconds: 1, Nanos: -1},
		{Seconds: -62135596800}, {Seconds: -62135596801}, {Seconds: 253402300799, Nanos: 999999999}, {Seconds: 253402300800},
		{Seconds: -1, Nanos: 500},
	} {
		same(t, &yunchiv1.VM{CreatedAt: ts})
	}
}

func TestNumbersAndStrings(t *testing.T) {
	for _, s := range []string{"", "a\"b\\c", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "中文 ✓", "\u2028\u2029", "<>&", "\xff", "a\xc3"} {
		same(t, &yunchiv1.VM{Name: s})
	}
	for _, n := range []int64{0, 1, -1, math.MaxInt64, math.MinInt64} {
		same(t, &yunchiv1.VM{MemoryBytes: n, Vcpus: int32(n), RebootSeq: uint64(n)})
	}
	same(t, &yunchiv1.VM{Phase: 99}) // an enum number without a name
}

// FuzzSameAsProtojson fills an API message chosen by the input at random.
func FuzzSameAsProtojson(f *testing.F) {
	f.Add(uint64(0), uint64(0))
	f.Add(uint64(1), uint64(7))
	f.Fuzz(func(t *testing.T, which, seed uint64) {
		mts := apiMessages(t)
		m := mts[which%uint64(len(mts))].New()
		fill(rand.New(rand.NewPCG(seed, which)), m, 0)
		same(t, m.Interface())
	})
}

// fill sets about half of m's fields (one member of each oneof) to random
// values, to a depth of 3.
func fill(r *rand.Rand, m protoreflect.Message, depth int) {
	fds := m.Descriptor().Fields()
	for i := 0; i < fds.Len(); i++ {
		fd := fds.Get(i)
		if r.IntN(2) == 0 {
			continue
		}
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range r.IntN(4) {
				if fd.Kind() == protoreflect.MessageKind {
					if depth < 3 {
						e := l.NewElement()
						fill(r, e.Message(), depth+1)
						l.Append(e)
					}
					continue
				}
				l.Append(value(r, fd))
			}
		case fd.IsMap():
			mm := m.Mutable(fd).Map()
			for range r.IntN(5) {
				k := value(r, fd.MapKey()).MapKey()
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					if depth < 3 {
						v := mm.NewValue()
						fill(r, v.Message(), depth+1)
						mm.Set(k, v)
					}
					continue
				}
				mm.Set(k, value(r, fd.MapValue()))
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth < 3 {
				fill(r, m.Mutable(fd).Message(), depth+1)
			}
		default:
			m.Set(fd, value(r, fd))
		}
	}
}

var strs = []string{"", "a", "web-01", "中文", "quote\"back\\slash", "\n\t\x01", "\xff\xfe", "<script>", "\u2028", strings.Repeat("x", 300)}

// value is a random value of fd's kind (Timestamp fields get seconds and
// nanos through fill, out of range now and then).
func value(r *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	ints := []int64{0, 1, -1, 42, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64, 253402300800, -62135596801, 999999999, 1000000000, 1000, 1000000}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(r.IntN(2) == 0)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(strs[r.IntN(len(strs))])
	case protoreflect.BytesKind:
		b := make([]byte, r.IntN(8))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return protoreflect.ValueOfBytes(b)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(ints[r.IntN(len(ints))]))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		if r.IntN(2) == 0 {
			return protoreflect.ValueOfInt64(r.Int64N(1 << 40))
		}
		return protoreflect.ValueOfInt64(ints[r.IntN(len(ints))])
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(ints[r.IntN(len(ints))]))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(ints[r.IntN(len(ints))]))
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		fs := []float64{0, 1, -1.5, 0.1, 1e-7, 1e21, 1e300, 3.4e38, math.NaN(), math.Inf(1), math.Inf(-1), r.Float64() * 1e6, math.SmallestNonzeroFloat64}
		f := fs[r.IntN(len(fs))]
		if fd.Kind() == protoreflect.FloatKind {
			return protoreflect.ValueOfFloat32(float32(f))
		}
		return protoreflect.ValueOfFloat64(f)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		if r.IntN(8) == 0 {
			return protoreflect.ValueOfEnum(protoreflect.EnumNumber(1000 + r.IntN(5)))
		}
		return protoreflect.ValueOfEnum(vs.Get(r.IntN(vs.Len())).Number())
	}
	panic("no random value of kind " + fd.Kind().String())
}

// kinds is a message type (built here, dynamicpb) with what the API does
// not use today: every scalar kind, maps keyed by each key kind, a oneof,
// proto3 optional fields and a message that contains itself.
func kinds(t testing.TB) protoreflect.MessageType {
	t.Helper()
	type fdp = descriptorpb.FieldDescriptorProto
	opt, rep := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	msg := &descriptorpb.DescriptorProto{Name: proto.String("Kinds"),
		// Real oneofs come before the synthetic ones of optional fields.
		OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("either")}}}
	add := func(name string, ty descriptorpb.FieldDescriptorProto_Type, l *descriptorpb.FieldDescriptorProto_Label, typeName string) *fdp {
		f := &fdp{Name: proto.String(name), Number: proto.Int32(int32(len(msg.Field) + 1)), Type: ty.Enum(), Label: l, JsonName: proto.String(jsonName(name))}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		msg.Field = append(msg.Field, f)
		return f
	}
	for _, name := range []string{"bool", "bytes", "double", "fixed32", "fixed64", "float", "int32", "int64", "sfixed32", "sfixed64", "sint32", "sint64", "string", "uint32", "uint64"} {
		ty := descriptorpb.FieldDescriptorProto_Type(descriptorpb.FieldDescriptorProto_Type_value["TYPE_"+strings.ToUpper(name)])
		add("a_"+name, ty, opt, "")
		add("list_"+name, ty, rep, "")
		o := add("opt_"+name, ty, opt, "")
		o.Proto3Optional = proto.Bool(true)
		o.OneofIndex = proto.Int32(int32(len(msg.OneofDecl)))
		msg.OneofDecl = append(msg.OneofDecl, &descriptorpb.OneofDescriptorProto{Name: proto.String("_opt_" + name)})
		// A map keyed by each kind a key may be.
		if name != "bytes" && name != "double" && name != "float" {
			entry := "Map" + strings.ToUpper(name[:1]) + name[1:] + "Entry"
			msg.NestedType = append(msg.NestedType, &descriptorpb.DescriptorProto{Name: proto.String(entry),
				Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
				Field: []*fdp{
					{Name: proto.String("key"), Number: proto.Int32(1), Type: ty.Enum(), Label: opt, JsonName: proto.String("key")},
					{Name: proto.String("value"), Number: proto.Int32(2), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: opt, JsonName: proto.String("value")},
				}})
			add("map_"+name, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, rep, ".pbjsontest.Kinds."+entry)
		}
	}
	for _, f := range []struct{ name, ty string }{{"self", ".pbjsontest.Kinds"}, {"when", ".google.protobuf.Timestamp"}} {
		add(f.name, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, opt, f.ty)
		add("list_"+f.name, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, rep, f.ty)
	}
	add("color", descriptorpb.FieldDescriptorProto_TYPE_ENUM, opt, ".pbjsontest.Color")
	add("either_string", descriptorpb.FieldDescriptorProto_TYPE_STRING, opt, "").OneofIndex = proto.Int32(0)
	add("either_self", descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, opt, ".pbjsontest.Kinds").OneofIndex = proto.Int32(0)
	file := &descriptorpb.FileDescriptorProto{
		Name: proto.String("pbjsontest/kinds.proto"), Package: proto.String("pbjsontest"), Syntax: proto.String("proto3"),
		Dependency:  []string{"google/protobuf/timestamp.proto"},
		MessageType: []*descriptorpb.DescriptorProto{msg},
		EnumType: []*descriptorpb.EnumDescriptorProto{{Name: proto.String("Color"), Value: []*descriptorpb.EnumValueDescriptorProto{
			{Name: proto.String("COLOR_UNSPECIFIED"), Number: proto.Int32(0)}, {Name: proto.String("RED"), Number: proto.Int32(1)}}}},
	}
	fd, err := protodesc.NewFile(file, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatal(err)
	}
	return dynamicpb.NewMessageType(fd.Messages().Get(0))
}

// jsonName is protoc's lowerCamelCase of a field name.
func jsonName(s string) string {
	var b strings.Builder
	up := false
	for _, c := range s {
		if c == '_' {
			up = true
			continue
		}
		if up && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up = false
		b.WriteRune(c)
	}
	return b.String()
}

func TestEveryKind(t *testing.T) {
	mt := kinds(t)
	if !Handles(mt.Descriptor()) {
		t.Fatal("the kinds message is left to protojson")
	}
	sameAtRandom(t, rand.New(rand.NewPCG(3, 4)), mt, 2000)
}

// A created VM as the REST create answers it, written by protojson and by
// pbjson: go test -run '^$' -bench . -benchmem ./internal/pbjson/
func BenchmarkMarshalVM(b *testing.B) {
	vm := &yunchiv1.VM{Id: "vm-7f3c9a2e4b1d4c6f", Name: "web-0042", Project: "default", Vcpus: 1, MemoryBytes: 256 << 20, DiskBytes: 1 << 30,
		Center: "a1", HostId: "big017", HostCenter: "a1", Desired: yunchiv1.PowerState_POWER_STATE_RUNNING, Phase: yunchiv1.VMPhase_VM_PHASE_PENDING,
		Revision: 123456, CreatedAt: timestamppb.Now(), UpdatedAt: timestamppb.Now(), HomeCenter: "a1"}
	for _, c := range []struct {
		name string
		fn   func(proto.Message) ([]byte, error)
	}{{"protojson", want.Marshal}, {"pbjson", Marshal}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.fn(vm); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
