package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/yunchi/yunchi/controller/state"
	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Fuzz targets for the API's input validation (issue 8, input hardening).
// `make fuzz-short` runs each briefly; plain `go test` runs their seeds and
// testdata/fuzz/ corpora.

// checkOneLine fails when a refusal is not one printable line: API errors
// end up in a JSON error body, a CLI line and logs.
func checkOneLine(t *testing.T, what string, err error) {
	t.Helper()
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	if msg == "" || strings.ContainsAny(msg, "\n\r") || !utf8.ValidString(msg) {
		t.Fatalf("%s: error is not one line of text: %q", what, msg)
	}
}

// nameSeeds are good and bad names from the unit and end-to-end tests.
var nameSeeds = []string{
	"web", "web-1", "a", "0", "ok-1", "db-2", "default", strings.Repeat("a", 63), strings.Repeat("a", 64),
	"", "-a", "a-", "Web", "web_1", "web.1", "../x", "a b", "a\nb", "<x>", "\x00", "\xff", "é", "a/b", "ａ",
}

func FuzzCheckName(f *testing.F) {
	for _, s := range nameSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkName("vm name", s)
		if err != nil {
			checkOneLine(t, "checkName", err)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("checkName(%q): code %v", s, status.Code(err))
			}
			return
		}
		// The documented rule: 1-63 lowercase letters, digits and '-',
		// starting and ending with a letter or digit.
		if len(s) < 1 || len(s) > maxNameLen || s[0] == '-' || s[len(s)-1] == '-' {
			t.Fatalf("checkName accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Fatalf("checkName accepted %q (byte %q)", s, c)
			}
		}
		if checkHostID(s) != nil {
			t.Fatalf("valid name %q is not a valid host id", s)
		}
	})
}

func FuzzCheckHostID(f *testing.F) {
	for _, s := range append(nameSeeds, "a1-h01", "host.example.com", "H_1", strings.Repeat("h", 253), strings.Repeat("h", 254), "a..b", ".a", "a_") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := checkHostID(s)
		if err != nil {
			checkOneLine(t, "checkHostID", err)
			return
		}
		if len(s) < 1 || len(s) > 253 || strings.ContainsAny(s[:1]+s[len(s)-1:], "-._") {
			t.Fatalf("checkHostID accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				t.Fatalf("checkHostID accepted %q (byte %q)", s, c)
			}
		}
	})
}

// sizeSeeds are the sizes of the unit and end-to-end tests, good and bad.
var sizeSeeds = []string{
	"4GiB", "512MiB", "1.5TiB", "0", "1", "16MiB", "1GiB", "8GiB", "60GiB", "64TiB", "16TiB", "20G", "4k", "1 GiB", " 2 MiB ",
	"-1GiB", "-1", "4GB", "1.5TB", "512 mb", "kb", "lots", "", " ", "1e9", "0x10", "NaN", "Inf", "1..2GiB", "+-1", "9999999999999999999999TiB",
	"1\x00", "1\xffB", "4PiB",
}

func FuzzParseSize(f *testing.F) {
	for i, s := range sizeSeeds {
		f.Add(s, int64(i)<<(7*(i%6)))
	}
	f.Add("1", int64(math.MaxInt64))
	f.Add("1", int64(math.MinInt64))
	f.Fuzz(func(t *testing.T, s string, n int64) {
		v, err := ParseSize(s)
		if err != nil {
			checkOneLine(t, "ParseSize", err)
		} else if v > math.MaxInt64/2 || v < -math.MaxInt64/2 {
			t.Fatalf("ParseSize(%q) = %d: beyond the documented bound", s, v)
		}
		// The range checks of the API: in range when accepted, one line
		// when not.
		for _, r := range []struct {
			field    string
			min, max int64
		}{{"memory", minMemory, maxMemory}, {"disk", minDisk, maxDisk}, {"reserve memory", 0, maxDisk}} {
			got, err := checkSize(r.field, s, r.min, r.max)
			if err != nil {
				checkOneLine(t, "checkSize", err)
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("checkSize(%q): code %v", s, status.Code(err))
				}
				continue
			}
			if got < r.min || got > r.max || got != v {
				t.Fatalf("checkSize(%s, %q) = %d, ParseSize %d, range [%d, %d]", r.field, s, got, v, r.min, r.max)
			}
		}

		// Round trips: a number of bytes exactly (while a float64 holds it
		// exactly), and FormatBytes' output to within its two decimals. It
		// writes PiB and EiB from 1 PiB, which ParseSize does not read.
		if n > -1<<53 && n < 1<<53 {
			if got, err := ParseSize(strconv.FormatInt(n, 10)); err != nil || got != n {
				t.Fatalf("ParseSize(%d) = %d, %v", n, got, err)
			}
			if got, err := ParseSize(strconv.FormatInt(n, 10) + "B"); err != nil || got != n {
				t.Fatalf("ParseSize(%dB) = %d, %v", n, got, err)
			}
		}
		if n > -1<<50 && n < 1<<50 {
			fs := scheduler.FormatBytes(n)
			got, err := ParseSize(fs)
			if err != nil {
				t.Fatalf("ParseSize(FormatBytes(%d) = %q): %v", n, fs, err)
			}
			// Two decimals of the unit printed: within half a hundredth of it.
			unit := int64(1)
			for a := absInt64(n); unit < 1<<40 && a >= unit<<10; unit <<= 10 {
			}
			if d := absInt64(got - n); float64(d) > float64(unit)*0.005+1 {
				t.Fatalf("ParseSize(FormatBytes(%d) = %q) = %d, off by %d", n, fs, got, d)
			}
		}
	})
}

func absInt64(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// fuzzServer is a Server over a state with one host in center a1 and a
// placement group g in the default project: what checkCreate consults. No
// raft: the commands go to the store directly.
func fuzzServer(f *testing.F) (*Server, *fakePlacer) {
	st := state.New()
	for i, cmd := range []*statev1.Command{
		{Cmd: &statev1.Command_RegisterHost{RegisterHost: &statev1.RegisterHost{Host: &statev1.HostRecord{
			Id: "a1-h01", Center: "a1", Capacity: &statev1.Resources{Vcpus: 64, MemoryBytes: 256 << 30, DiskBytes: 4 << 40},
		}}}},
		{Cmd: &statev1.Command_CreatePlacementGroup{CreatePlacementGroup: &statev1.CreatePlacementGroup{Group: &statev1.PlacementGroupRecord{
			Name: "g", Project: state.DefaultProject, Policy: statev1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY,
		}}}},
	} {
		cmd.Version, cmd.UnixNano = state.CommandVersion, int64(i+1)*1000
		if _, err := st.Apply(uint64(i+1), cmd); err != nil {
			f.Fatalf("setting up the state: %v", err)
		}
	}
	p := &fakePlacer{}
	s := newPlacerServer(p)
	s.store = st
	return s, p
}

func FuzzValidateCreateVM(f *testing.F) {
	type seed struct {
		name, project                      string
		vcpus                              int32
		memory, disk, center, group, strat string
		constraints                        string // one per line
		count                              int32
		stopped                            bool
	}
	for _, sd := range []seed{
		{name: "web", vcpus: 2, memory: "1GiB"},
		{name: "db", vcpus: 1, memory: "1GiB", count: 3, strat: "binpack", stopped: true},
		{name: "ok-1", project: "team-a", vcpus: 1, memory: "4GiB", disk: "40GiB", center: "a1", group: "g", constraints: "host=b1-h01\nrack!=r1"},
		{name: "tiny", vcpus: 1, memory: "16MiB", disk: "1GiB", constraints: "host=b1-h01"},
		{name: "ok-1", vcpus: 1, memory: "4GB"},
		{name: "ok-1", vcpus: 1, memory: "1GiB", disk: "1.5TB"},
		{name: "ok-1", vcpus: 1, memory: "0"},
		{name: "ok-1", vcpus: 0, memory: "1GiB"},
		{name: "ok-1", vcpus: 513, memory: "1GiB"},
		{name: "ok-1", vcpus: 1, memory: ""},
		{name: "", vcpus: 1, memory: "1GiB"},
		{name: "Web", vcpus: 1, memory: "1GiB"},
		{name: strings.Repeat("a", 62), vcpus: 1, memory: "1GiB", count: 10},
		{name: "x", vcpus: 1, memory: "1GiB", count: 101},
		{name: "x", vcpus: 1, memory: "1GiB", count: -1},
		{name: "x", vcpus: 1, memory: "1GiB", center: "zz"},
		{name: "x", vcpus: 1, memory: "1GiB", group: "nope"},
		{name: "x", vcpus: 1, memory: "1GiB", strat: "fastest"},
		{name: "x", vcpus: 1, memory: "1GiB", constraints: "host=\n=x\nrack~~1"},
		{name: "x", project: "A/B", vcpus: 1, memory: "1GiB"},
		{name: "x\n", vcpus: 1, memory: "1 \n GiB"},
	} {
		f.Add(sd.name, sd.project, sd.vcpus, sd.memory, sd.disk, sd.center, sd.group, sd.strat, sd.constraints, sd.count, sd.stopped)
	}
	s, p := fuzzServer(f)
	f.Fuzz(func(t *testing.T, name, project string, vcpus int32, memory, disk, center, group, strat, constraints string, count int32, stopped bool) {
		req := &yunchiv1.CreateVMRequest{
			Name: name, Project: project, Vcpus: vcpus, Memory: memory, Disk: disk, Center: center, Group: group,
			Strategy: strat, Count: count, Stopped: stopped,
		}
		if constraints != "" {
			req.Constraints = strings.Split(constraints, "\n")
		}
		sp, err := s.checkCreate(req)
		if err != nil {
			checkOneLine(t, "checkCreate", err)
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.NotFound {
				t.Fatalf("checkCreate: code %v: %v", c, err)
			}
		} else {
			bad := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("accepted %v as %+v: "+format, append([]any{req, sp}, args...)...)
			}
			if checkName("vm name", name) != nil {
				bad("vm name")
			}
			if want := project; want == "" && sp.Project != state.DefaultProject || want != "" && (sp.Project != want || !state.ValidName(want)) {
				bad("project")
			}
			if r := sp.Resources; r.VCPUs < 1 || r.VCPUs > maxVCPUs || r.VCPUs != int64(vcpus) ||
				r.MemoryBytes < minMemory || r.MemoryBytes > maxMemory || r.DiskBytes < minDisk || r.DiskBytes > maxDisk ||
				disk == "" && r.DiskBytes != defaultDisk {
				bad("resources")
			}
			if center != "" && center != "a1" || sp.Center != center {
				bad("center")
			}
			if group != "" && group != "g" || sp.Group != group {
				bad("group")
			}
			if len(sp.Constraints) != len(req.Constraints) || len(sp.Constraints) > 32 ||
				strat == "" && (sp.Strategy != s.DefaultStrategy || sp.StrategyName != "") || strat != "" && sp.StrategyName != sp.Strategy.String() {
				bad("constraints or strategy")
			}
			want := max(1, int(count))
			if count < 0 || count > state.MaxBatch || len(sp.Names) != want {
				bad("count")
			}
			for i, n := range sp.Names {
				if !state.ValidName(n) || want == 1 && n != name || want > 1 && n != name+"-"+strconv.Itoa(i+1) {
					bad("name %q", n)
				}
			}
			if stopped != (sp.Desired == statev1.PowerState_POWER_STATE_STOPPED) {
				bad("desired")
			}
		}

		// The handlers themselves: the same verdict, and no panic.
		p.got = nil
		_, herr := s.CreateVMs(context.Background(), req)
		if (herr == nil) != (err == nil) {
			t.Fatalf("CreateVMs says %v, checkCreate %v", herr, err)
		}
		if herr != nil {
			checkOneLine(t, "CreateVMs", herr)
		}
		if _, err := s.CreateVM(context.Background(), req); err != nil {
			checkOneLine(t, "CreateVM", err)
		}
	})
}

// restBodySeeds are the bodies of the codec and end-to-end tests.
var restBodySeeds = []string{
	`{"name":"web-1","vcpus":2}`, " \n{\"name\":\"web-1\"}\n\t ", `{"name":"ok-1","vcpus":1,`, `name=a&vcpus=1`, `{"name":"a"}garbage`,
	`{"name":"a"} {"name":"b"}`, `[{"name":"a"}]`, `"a"`, `{"name":"a","colour":"red"}`, `{"name":"a","vcpus":"two"}`,
	`{"name":"g","policy":"affinity"}`, `{"state":"HOST_STATE_BROKEN"}`, `{"name":"g","policy":null}`,
	`{"name":"g","policy":"GROUP_POLICY_ANTI_AFFINITY","level":2}`, `{"scope":"center","name":"b1","memory":0.1}`,
	`{"setLabels":{"center":"b1"}}`, `{"reserveMemory":"512 mb"}`, `{"name":"a","name":"b"}`, "{\"name\":\"\xff\"}",
	`{"name":"db-1","vcpus":2,"memory":"8GiB","constraints":["host=b1-h01"]}`, `{"constraints":[1]}`, `{"vcpus":1e99}`, "", " ", "null", "{}",
}

func FuzzRESTBody(f *testing.F) {
	for i, b := range restBodySeeds {
		f.Add([]byte(b), uint8(i), false)
	}
	f.Add([]byte(`{"name":"web-1"}`), uint8(0), true)
	c := &restCodec{Marshaler: &runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{}}, unmarshal: protojson.UnmarshalOptions{}}
	msgs := []func() proto.Message{
		func() proto.Message { return &yunchiv1.CreateVMRequest{} },
		func() proto.Message { return &yunchiv1.CreateGroupRequest{} },
		func() proto.Message { return &yunchiv1.UpdateHostRequest{} },
		func() proto.Message { return &yunchiv1.SetRatiosRequest{} },
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8, oversize bool) {
		if oversize {
			// Pad with white space, which alone would not make it invalid.
			body = append(body, bytes.Repeat([]byte{' '}, MaxRequestBody+1)...)
		}
		m := msgs[int(which)%len(msgs)]()
		err := c.NewDecoder(bytes.NewReader(body)).Decode(m)
		switch {
		case len(body) > MaxRequestBody:
			if err == nil || !strings.Contains(err.Error(), "larger than the") {
				t.Fatalf("a %d-byte body: %v", len(body), err)
			}
		case errors.Is(err, io.EOF):
			if len(bytes.TrimSpace(body)) != 0 {
				t.Fatalf("io.EOF for a body that is not empty: %q", body)
			}
		case err != nil:
			checkOneLine(t, "decode", err)
		default:
			if b := bytes.TrimSpace(body); !json.Valid(b) || b[0] != '{' {
				t.Fatalf("decoded a body that is not one JSON object: %q", body)
			}
		}
	})
}
