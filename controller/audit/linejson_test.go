package audit

import (
	"bytes"
	"testing"

	statev1 "github.com/yunchi/yunchi/proto/yunchi/state/v1"
)

// lineCases are records whose strings need every kind of escaping
// encoding/json does, and records with fields left empty.
var lineCases = []*statev1.AuditRecord{
	{},
	{Seq: 1, UnixNano: 1, Kind: "action"},
	{Seq: 7, PrevHash: []byte{0, 1, 0xfe, 0xff}, Hash: bytes.Repeat([]byte{0xab}, 32), UnixNano: 1764547200123456789, Index: 42,
		Kind: "action", EventUnixNano: -5, RequestId: "k-1",
		Context: &statev1.AuditContext{Actor: "sysadmin", Role: "sysadmin", Department: "环保", Source: "127.0.0.1:5000",
			TokenId: "t1", Action: "CreateVM", Target: "project/air/vm/web-1", Params: `{"name":"web-1","user_data":"<script>&\"\\"}`},
		Result: "ok", Code: "OK", Message: "a\tb\nc\rd\be\ff\x00g\x1fh\x7fi"},
	{Seq: 2, Kind: "login_failed", Message: "bad \xff\xfe utf-8 \u2028 and \u2029 end", Context: &statev1.AuditContext{Actor: "bob"}},
	{Seq: 3, Kind: "k", Code: "x", Context: &statev1.AuditContext{Params: "é😀<>&'"}},
}

// TestAppendLineIsJSONMarshal: the hand-written line is the bytes
// encoding/json makes of the same Line.
func TestAppendLineIsJSONMarshal(t *testing.T) {
	for i, rec := range lineCases {
		want := LineOf(rec).Marshal()
		if got := appendLine(nil, rec); !bytes.Equal(got, want) {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want)
		}
	}
}

func FuzzAppendLine(f *testing.F) {
	for _, r := range lineCases {
		f.Add(r.GetMessage(), r.GetContext().GetParams(), r.GetUnixNano(), r.GetEventUnixNano())
	}
	f.Fuzz(func(t *testing.T, msg, params string, unixNano, event int64) {
		rec := &statev1.AuditRecord{Seq: 9, UnixNano: unixNano, EventUnixNano: event, Kind: "action", Message: msg,
			Context: &statev1.AuditContext{Params: params, Actor: msg}}
		if got, want := appendLine(nil, rec), LineOf(rec).Marshal(); !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
	})
}
