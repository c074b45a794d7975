package main

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A quota refusal has its own exit code (8), distinct from no capacity
// (5), and prints the controller's one-line message.
func TestQuotaExitCode(t *testing.T) {
	msg := `quota exceeded: department "eco" vCPU: limit 16, in use 16, asked 2`
	st, err := status.New(codes.ResourceExhausted, msg).WithDetails(&errdetails.QuotaFailure{
		Violations: []*errdetails.QuotaFailure_Violation{{Subject: "department:eco", Description: msg}}})
	if err != nil {
		t.Fatal(err)
	}
	if c := exitCode(st.Err()); c != exitQuota {
		t.Fatalf("quota: exit %d", c)
	}
	if c := exitCode(status.Error(codes.ResourceExhausted, "0/3 hosts fit")); c != exitNoCapacity {
		t.Fatalf("no fit: exit %d", c)
	}
	var b strings.Builder
	report(&b, st.Err())
	if b.String() != "yunchi: "+msg+"\n" {
		t.Fatalf("printed %q", b.String())
	}
}

// Mistakes on the command line are usage errors, found before any call.
func TestQuotaSetUsage(t *testing.T) {
	for _, args := range [][]string{
		{"quota", "set", "--cpu", "4"},
		{"quota", "set", "--dept", "eco"},
		{"quota", "set", "--dept", "eco", "--cpu", "-1"},
		{"quota", "set", "--dept", "eco", "--cpu", "x"},
		{"quota", "set", "--dept", "eco", "--clear", "gpu"},
		{"quota", "set", "--dept", "eco", "--cpu", "4", "--clear", "cpu"},
		{"quota", "show", "--project", "air"},
	} {
		code, _, stderr := yunchi(t, append([]string{"--addr", "127.0.0.1:1"}, args...)...)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "yunchi: quota ") {
			t.Errorf("%v: exit %d, %q", args, code, stderr)
		}
	}
}
