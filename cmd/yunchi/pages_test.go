package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestVMListFollowsPages: `vm list` asks for the largest page and follows
// next_page_token to the end, so a cloud whose VMs do not fit in one answer
// is listed whole (table and -o json), each VM once.
func TestVMListFollowsPages(t *testing.T) {
	f := startFake(t)
	f.pageSize = 2 // 3 VMs: two pages
	code, stdout, stderr := yunchi(t, "--addr", f.addr, "-o", "json", "vm", "list")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Vms []struct{ Name string } `json:"vms"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	var names []string
	for _, v := range got.Vms {
		names = append(names, v.Name)
	}
	if want := []string{"app-3", "db-1", "web-1"}; !slices.Equal(names, want) {
		t.Errorf("listed %v, want %v", names, want)
	}
	if f.callCount("ListVMs") != 2 || !slices.Equal(f.pageSizes, []int32{listPage, listPage}) {
		t.Errorf("%d ListVMs calls asking for pages of %v, want 2 of %d", f.callCount("ListVMs"), f.pageSizes, listPage)
	}
	code, stdout, _ = yunchi(t, "--addr", f.addr, "vm", "list")
	if code != 0 || !strings.Contains(stdout, "app-3") || !strings.Contains(stdout, "web-1") {
		t.Errorf("table: exit %d: %s", code, stdout)
	}
}
