package api

import (
	"testing"

	"github.com/yunchi/yunchi/controller/auth"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// Every method a follower forwards has its response type known at start-up.
func TestForwardedMethodsHaveResponseTypes(t *testing.T) {
	n := 0
	for _, m := range auth.Methods() {
		if !auth.Mutating(m) {
			continue
		}
		n++
		r, err := newResponse(m)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if r == nil || r.ProtoReflect().Descriptor() == nil {
			t.Fatalf("%s: no response message", m)
		}
	}
	// The writes are the methods whose access rule says mutating: the VM
	// actions, for one, must reach the leader.
	for _, m := range []string{yunchiv1.VMService_CreateVM_FullMethodName, yunchiv1.VMService_DeleteVM_FullMethodName,
		yunchiv1.AgentService_Heartbeat_FullMethodName, yunchiv1.TokenService_RevokeToken_FullMethodName} {
		if !auth.Mutating(m) {
			t.Errorf("%s is not forwarded to the leader", m)
		}
	}
	if auth.Mutating(yunchiv1.VMService_ListVMs_FullMethodName) || n < 20 {
		t.Errorf("ListVMs forwarded, or only %d writes", n)
	}
	if _, err := newResponse("/yunchi.v1.VMService/NoSuchMethod"); err == nil {
		t.Fatal("an unknown method has a response type")
	}
}
