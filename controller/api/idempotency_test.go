package api

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func TestCheckIdempotencyKey(t *testing.T) {
	for _, k := range []string{"0b7c6a2e-4f1d-4c9e-9a51-3c2f0e8d1b7a", "a", "job:42.retry_1", strings.Repeat("k", maxIdempotencyKey)} {
		if got, err := checkIdempotencyKey([]string{k}); err != nil || got != k {
			t.Errorf("key %q: %q %v", k, got, err)
		}
	}
	for _, c := range []struct {
		vals []string
		want string
	}{
		{[]string{""}, "idempotency key is 0 characters long: give 1 to 128 (a UUID is fine)"},
		{[]string{strings.Repeat("k", 129)}, "idempotency key is 129 characters long: give 1 to 128 (a UUID is fine)"},
		{[]string{"a b"}, `idempotency key "a b" has character ' ': use letters, digits, '-', '_', '.' or ':' (a UUID is fine)`},
		{[]string{"ключ"}, `idempotency key "ключ" has character 'к': use letters, digits, '-', '_', '.' or ':' (a UUID is fine)`},
		{[]string{"a", "b"}, "2 idempotency keys given: send one per request"},
	} {
		_, err := checkIdempotencyKey(c.vals)
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != c.want {
			t.Errorf("%q: %v, want %q", c.vals, err, c.want)
		}
	}
}

func TestRequestHash(t *testing.T) {
	a := &yunchiv1.CreateVMRequest{Name: "web-1", Vcpus: 1, Memory: "1GiB"}
	b := &yunchiv1.CreateVMRequest{Name: "web-2", Vcpus: 1, Memory: "1GiB"}
	ha, _ := requestHash(yunchiv1.VMService_CreateVM_FullMethodName, a)
	ha2, _ := requestHash(yunchiv1.VMService_CreateVM_FullMethodName, &yunchiv1.CreateVMRequest{Name: "web-1", Vcpus: 1, Memory: "1GiB"})
	hb, _ := requestHash(yunchiv1.VMService_CreateVM_FullMethodName, b)
	hm, _ := requestHash(yunchiv1.VMService_CreateVMs_FullMethodName, a)
	if string(ha) != string(ha2) || string(ha) == string(hb) || string(ha) == string(hm) {
		t.Fatal("the hash must be the same for the same request, and differ by request and by method")
	}
}
