package sim

import (
	"reflect"
	"testing"

	"github.com/yunchi/yunchi/scheduler"
)

// Refusals.note on a ledger worked out by hand: three 64c256g hosts with
// 4c/156g, 54c/6g and 0c/256g free.
func TestRefusalsNote(t *testing.T) {
	led := newLedger(3, DefaultShape)
	for h, a := range []scheduler.Resources{res(60, 100), res(10, 250), res(64, 0)} {
		if err := led.add(h, a); err != nil {
			t.Fatal(err)
		}
	}
	var s Refusals
	// 8c16g: host 1 has the vCPU (54, stranded behind 6 GiB), hosts 0 and 2
	// the memory (156 + 256 GiB, stranded behind 4 and 0 vCPU): split.
	if s.note(led, res(8, 16)) {
		t.Fatal("8c16g fits nowhere, note says it fits")
	}
	// 64c1g: no host has 64 vCPU; every host has 1 GiB: short of vCPU.
	s.note(led, res(64, 1))
	// 8c16g again, then 2c2g, which host 0 could take (a placer bug).
	s.note(led, res(8, 16))
	if !s.note(led, res(2, 2)) {
		t.Fatal("2c2g fits host 0, note says it does not")
	}
	if s.N != 4 || s.VCPUs != 8+64+8+2 || s.MemoryBytes != (16+1+16+2)*GiB ||
		s.Split != 2 || s.ShortCPU != 1 || s.ShortMemory != 0 || s.ShortBoth != 0 || s.ShortDisk != 0 {
		t.Fatalf("counts %+v", s)
	}
	figs := map[string]any{}
	for _, f := range s.figures() {
		figs[f.Name] = f.Value
	}
	want := map[string]any{
		"rejected_vcpus":      int64(82),
		"rejected_memory_gib": 35.0,
		"rejected_shapes":     "8c16g:2 2c2g:1 64c1g:1",
		"rejected_short_cpu":  int64(1), "rejected_short_memory": int64(0), "rejected_short_both": int64(0), "rejected_split": int64(2), "rejected_short_disk": int64(0),
		"free_cpu_at_rejection":        58.0,  // 4+54+0 each time
		"free_memory_gib_at_rejection": 418.0, // 156+6+256
		// 8c16g: 54 (host 1), twice; 64c1g: none had the vCPU; 2c2g:
		// hosts 0 and 1 have both, host 2 memory only: none. (54+54)/4.
		"stranded_cpu_at_rejection": 27.0,
		// 8c16g: 156+256, twice; 64c1g: all 418; 2c2g: host 2's 256.
		// (412+412+418+256)/4.
		"stranded_memory_gib_at_rejection": 374.5,
	}
	if !reflect.DeepEqual(figs, want) {
		t.Errorf("figures\n got %v\nwant %v", figs, want)
	}
	// The disk class: 1c1g with 4 TiB of disk fits host 0's vCPU and
	// memory, not its disk.
	s = Refusals{}
	s.note(led, scheduler.Resources{VCPUs: 1, MemoryBytes: GiB, DiskBytes: 5000 * GiB})
	if s.ShortDisk != 1 || s.Split+s.ShortCPU+s.ShortMemory+s.ShortBoth != 0 {
		t.Errorf("disk-short refusal classified %+v", s)
	}
	var none Refusals
	if got := none.figures(); got[2].Value != "none" || got[8].Value != 0.0 {
		t.Errorf("no refusals: %v", got)
	}
}

// W2 with too few hosts (issue 13): Yunchi refuses fewer requests than
// either baseline. Pressure (scheduler/pressure.go) is what does it: the
// figures before it were 35,384 at 400 (best fit 35,669, sample 33,756)
// and 2,366 at 600 (2,470, 2,184).
func TestAzureChurnUnderPressure(t *testing.T) {
	tr := loadAzure(t)
	for _, hosts := range []int{400, 600} {
		cfg := Config{Hosts: hosts}
		rejected := map[string]int64{}
		for name, p := range map[string]Placer{
			"yunchi":  newYunchi(t, hosts, DefaultShape, scheduler.Binpack, 1),
			"bestfit": NewBestFit(hosts, DefaultShape),
			"sample":  NewSample(hosts, DefaultShape, 1),
		} {
			r, err := Churn(tr, p, cfg)
			if err != nil {
				t.Fatalf("%s H=%d: %v", name, hosts, err)
			}
			if r.RejectedWhileFit != 0 || r.Refusals.N != r.Rejected {
				t.Fatalf("%s H=%d: rejected_while_fit %d, refusals noted %d of %d", name, hosts, r.RejectedWhileFit, r.Refusals.N, r.Rejected)
			}
			rejected[name] = r.Rejected
		}
		t.Logf("H=%d rejected: %v", hosts, rejected)
		if y := rejected["yunchi"]; y > rejected["bestfit"] || y > rejected["sample"] {
			t.Errorf("H=%d: Yunchi rejected %d, best fit %d, sample %d: want at most either", hosts, y, rejected["bestfit"], rejected["sample"])
		}
	}
}
