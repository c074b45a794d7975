package api

import "testing"

// Every method a follower forwards has its response type known at start-up.
func TestForwardedMethodsHaveResponseTypes(t *testing.T) {
	for m := range leaderOnly {
		r, err := newResponse(m)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		if r == nil || r.ProtoReflect().Descriptor() == nil {
			t.Fatalf("%s: no response message", m)
		}
	}
	if _, err := newResponse("/yunchi.v1.VMService/NoSuchMethod"); err == nil {
		t.Fatal("an unknown method has a response type")
	}
}
