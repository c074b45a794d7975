package api

import (
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/internal/pbjson"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func TestRESTCodecDecode(t *testing.T) {
	c := &restCodec{Marshaler: &runtime.JSONPb{}}
	cases := []struct {
		name, body string
		msg        string // "" : decodes
	}{
		{"one object", `{"name":"web-1","vcpus":2}`, ""},
		{"white space around", " \n{\"name\":\"web-1\"}\n\t ", ""},
		{"truncated", `{"name":"ok-1","vcpus":1,`, "request body is not valid JSON: unexpected end of input at offset 25"},
		{"form body", `name=a&vcpus=1`, "request body is not valid JSON: invalid character 'a' in literal null (expecting 'u') at offset 2"},
		{"trailing garbage", `{"name":"a"}garbage`, "request body is not valid JSON: unexpected data after the JSON value at offset 12: send exactly one JSON object"},
		{"two objects", `{"name":"a"} {"name":"b"}`, "unexpected data after the JSON value at offset 13"},
		{"array", `[{"name":"a"}]`, "request body must be a JSON object ({...}), not an array"},
		{"string", `"a"`, "not a string"},
		{"unknown field", `{"name":"a","colour":"red"}`, `request body: unknown field "colour" (CreateVMRequest has name, project, vcpus, memory, disk, center, stopped, constraints, group, strategy, count, dryRun, image, userData, sshAuthorizedKeys)`},
		{"wrong type", `{"name":"a","vcpus":"two"}`, `request body: invalid value for int32 field vcpus: "two" (line 1, column 21)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var req yunchiv1.CreateVMRequest
			err := c.NewDecoder(strings.NewReader(tc.body)).Decode(&req)
			if tc.msg == "" {
				if err != nil || req.Name != "web-1" {
					t.Fatalf("%v, %v", err, &req)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q, want %q", err, tc.msg)
			}
		})
	}
	var empty yunchiv1.CreateVMRequest
	if err := c.NewDecoder(strings.NewReader(" \n")).Decode(&empty); !errors.Is(err, io.EOF) {
		t.Fatalf("empty body: %v, want io.EOF (an empty request)", err)
	}
}

func TestRESTCodecEnums(t *testing.T) {
	c := &restCodec{Marshaler: &runtime.JSONPb{}}
	var g yunchiv1.CreateGroupRequest
	err := c.NewDecoder(strings.NewReader(`{"name":"g","policy":"affinity"}`)).Decode(&g)
	if want := `request body: policy: "affinity" is not a valid value: use one of GROUP_POLICY_AFFINITY, GROUP_POLICY_ANTI_AFFINITY`; err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
	var h yunchiv1.UpdateHostRequest
	err = c.NewDecoder(strings.NewReader(`{"state":"HOST_STATE_BROKEN"}`)).Decode(&h)
	if want := "use one of HOST_STATE_READY, HOST_STATE_DOWN, HOST_STATE_MAINTENANCE, HOST_STATE_DRAINING"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q, want %q", err, want)
	}
	// Names, numbers and null, which protojson takes, still decode.
	if err := c.NewDecoder(strings.NewReader(`{"name":"g","policy":null}`)).Decode(&g); err != nil || g.Policy != 0 {
		t.Fatalf("null policy: %v %v", err, protojson.Format(&g))
	}
	if err := c.NewDecoder(strings.NewReader(`{"name":"g","policy":"GROUP_POLICY_ANTI_AFFINITY","level":2}`)).Decode(&g); err != nil ||
		g.Policy != yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY || g.Level != yunchiv1.GroupLevel_GROUP_LEVEL_RACK {
		t.Fatalf("%v %v", err, protojson.Format(&g))
	}
}

// Answers are written by pbjson with the gateway's options (the same JSON
// as protojson, without its random spaces), by protojson with any others.
func TestRESTCodecMarshal(t *testing.T) {
	vm := &yunchiv1.VM{Id: "vm-1", Name: "web, \"1\"", Vcpus: 1, MemoryBytes: 1 << 30, Phase: yunchiv1.VMPhase_VM_PHASE_RUNNING, Conditions: []string{"a, b"}}
	opts := protojson.MarshalOptions{EmitDefaultValues: true}
	c := &restCodec{Marshaler: &runtime.JSONPb{}, marshal: opts}
	got, err := c.Marshal(vm)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pbjson.Marshal(vm)
	if err != nil || string(got) != string(want) {
		t.Fatalf("%s, %v; want pbjson's %s", got, err, want)
	}
	var a, b map[string]any
	pj, _ := opts.Marshal(vm)
	if json.Unmarshal(got, &a) != nil || json.Unmarshal(pj, &b) != nil || !reflect.DeepEqual(a, b) {
		t.Fatalf("%s, protojson wrote %s", got, pj)
	}
	// Other options: protojson's output.
	c.marshal = protojson.MarshalOptions{UseProtoNames: true}
	if got, err := c.Marshal(vm); err != nil || !strings.Contains(string(got), `"memory_bytes"`) {
		t.Fatalf("with proto names: %s, %v", got, err)
	}
}
