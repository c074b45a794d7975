package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// standard is the shared benchmark's host shape: 64 vCPU, 256 GiB, 4 TiB.
var standard = Resources{64, 256 * GiB, 4 * TiB}

func host(id, center string, allocated Resources) Host {
	return Host{ID: id, Center: center, Capacity: standard, Ratios: Ratios{1, 1, 1}, Allocated: allocated}
}

func small(center string) Request {
	return Request{Resources: Resources{4, 16 * GiB, 40 * GiB}, Center: center}
}

func TestPlacePicksBestFit(t *testing.T) {
	hosts := []Host{
		host("empty", "a1", Resources{}),
		host("half", "a1", Resources{32, 128 * GiB, 2 * TiB}),
		host("nearly-full", "a1", Resources{58, 230 * GiB, 3 * TiB}),
		host("too-full", "a1", Resources{62, 250 * GiB, 3 * TiB}), // 2 vCPU free
		host("other-center", "b1", Resources{60, 240 * GiB, 4*TiB - 40*GiB}),
		{ID: "down", Center: "a1", State: HostDown, Ratios: Ratios{1, 1, 1}, Capacity: standard, Allocated: Resources{59, 236 * GiB, 4*TiB - 40*GiB}},
	}
	p, err := Place(small("a1"), hosts)
	if err != nil {
		t.Fatalf("Place: %v", err)
	}
	if p.HostID != "nearly-full" {
		t.Errorf("HostID = %q, want nearly-full", p.HostID)
	}
	var ids []string
	for _, c := range p.RunnersUp {
		ids = append(ids, c.HostID)
	}
	if want := []string{"half", "empty"}; !slices.Equal(ids, want) {
		t.Errorf("RunnersUp = %v, want %v", ids, want)
	}
	scores := []int64{p.Score}
	for _, c := range p.RunnersUp {
		scores = append(scores, c.Score)
	}
	if !slices.IsSortedFunc(scores, func(a, b int64) int { return int(b - a) }) || scores[0] > MaxScore || scores[len(scores)-1] < 0 {
		t.Errorf("scores %v: want descending within 0..%d", scores, MaxScore)
	}

	// Without a center the tightest host anywhere wins.
	p, err = Place(small(""), hosts)
	if err != nil {
		t.Fatalf("Place: %v", err)
	}
	if p.HostID != "other-center" || p.Score != MaxScore {
		t.Errorf("any center: got %s (score %d), want other-center (score %d)", p.HostID, p.Score, MaxScore)
	}
}

// TestPlaceTieGoesBySeededHash: among equally good hosts the order is a
// hash of the seed and the host ID, not the order the hosts came in.
func TestPlaceTieGoesBySeededHash(t *testing.T) {
	hosts := []Host{host("h3", "a1", Resources{}), host("h1", "a1", Resources{}), host("h2", "a1", Resources{})}
	for seed := range int64(5) {
		p, err := mustCluster(t, hosts, Options{Seed: seed}).Place(small(""))
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{"h1", "h2", "h3"}
		slices.SortFunc(ids, func(a, b string) int {
			ha, hb := tieHash(seed, a), tieHash(seed, b)
			if ha != hb {
				if ha < hb {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		want := Placement{HostID: ids[0], Score: p.Score, RunnersUp: []Candidate{{ids[1], p.Score}, {ids[2], p.Score}}}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("seed %d: Place = %+v, want %+v", seed, p, want)
		}
	}
}

// TestPlaceRanksOnExactScore: two hosts whose scores round alike are still
// ranked by the exact best fit, not by ID.
func TestPlaceRanksOnExactScore(t *testing.T) {
	hosts := []Host{
		host("a", "a1", Resources{}),
		host("b", "a1", Resources{1, 0, 0}), // one vCPU tighter: 0.5 points
	}
	p, err := Place(small(""), hosts)
	if err != nil {
		t.Fatal(err)
	}
	if p.HostID != "b" {
		t.Errorf("HostID = %s, want b", p.HostID)
	}
}

func TestPlaceRunnersUpLimit(t *testing.T) {
	var hosts []Host
	for i := range 10 {
		hosts = append(hosts, host(fmt.Sprintf("h%02d", i), "a1", Resources{VCPUs: int64(i)}))
	}
	p, err := Place(small(""), hosts)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range p.RunnersUp {
		ids = append(ids, c.HostID)
	}
	if p.HostID != "h09" || !slices.Equal(ids, []string{"h08", "h07", "h06"}) {
		t.Errorf("got %s then %v, want h09 then [h08 h07 h06]", p.HostID, ids)
	}

	c := mustCluster(t, hosts, Options{RunnersUp: -1})
	if p, err := c.Place(small("")); err != nil || p.HostID != "h09" || p.RunnersUp != nil {
		t.Errorf("RunnersUp=0: got %+v, %v; want h09 alone", p, err)
	}
}

// cluster is 45 hosts over three centers with varied allocations, some down.
func cluster() []Host {
	r := rand.New(rand.NewPCG(7, 7))
	var hosts []Host
	for i := range 45 {
		h := host(fmt.Sprintf("%s-h%02d", []string{"a1", "b1", "c1"}[i%3], i), []string{"a1", "b1", "c1"}[i%3], Resources{
			VCPUs:       r.Int64N(65),
			MemoryBytes: r.Int64N(257) * GiB,
			DiskBytes:   r.Int64N(4097) * GiB,
		})
		if i%11 == 0 {
			h.State = HostDown
		}
		hosts = append(hosts, h)
	}
	return hosts
}

func TestPlaceDeterministic(t *testing.T) {
	for _, tc := range []struct {
		req  Request
		fits bool
	}{
		{small(""), true},
		{small("b1"), true},
		{Request{Resources: Resources{16, 112 * GiB, 40 * GiB}}, true},
		{Request{Resources: Resources{64, 256 * GiB, 4 * TiB}, Center: "c1"}, false},
	} {
		req := tc.req
		hosts := cluster()
		want, wantErr := Place(req, hosts)
		if (wantErr == nil) != tc.fits {
			t.Fatalf("%+v: err = %v, want fits=%v", req, wantErr, tc.fits)
		}
		again, againErr := Place(req, hosts)
		if !reflect.DeepEqual(want, again) || !reflect.DeepEqual(wantErr, againErr) {
			t.Fatalf("%+v: same input, different answers: %+v, %v then %+v, %v", req, want, wantErr, again, againErr)
		}
		if !reflect.DeepEqual(hosts, cluster()) {
			t.Fatalf("Place modified its input")
		}
		for seed := range uint64(20) {
			shuffled := slices.Clone(hosts)
			rand.New(rand.NewPCG(seed, 0)).Shuffle(len(shuffled), func(i, j int) {
				shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
			})
			got, err := Place(req, shuffled)
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(err, wantErr) {
				t.Fatalf("%+v, shuffle %d: got %+v, %v; want %+v, %v", req, seed, got, err, want, wantErr)
			}
		}
	}
}

func TestPlaceInvalidRequest(t *testing.T) {
	hosts := []Host{host("h1", "a1", Resources{})}
	for _, tc := range []struct {
		name  string
		req   Resources
		field []string
	}{
		{"zero vCPUs", Resources{0, GiB, GiB}, []string{"VCPUs must be positive, got 0"}},
		{"negative memory", Resources{1, -1, GiB}, []string{"MemoryBytes must be positive, got -1"}},
		{"zero disk", Resources{1, GiB, 0}, []string{"DiskBytes must be positive, got 0"}},
		{"all zero", Resources{}, []string{"VCPUs", "MemoryBytes", "DiskBytes"}},
	} {
		_, err := Place(Request{Resources: tc.req}, hosts)
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v, want ErrInvalidRequest", tc.name, err)
			continue
		}
		var nf *NoFitError
		if errors.As(err, &nf) {
			t.Errorf("%s: err is a NoFitError", tc.name)
		}
		for _, f := range tc.field {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: err %q does not mention %q", tc.name, err, f)
			}
		}
	}
	// Validation comes before hosts are looked at: no hosts is still invalid.
	if _, err := Place(Request{}, nil); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("no hosts: err = %v, want ErrInvalidRequest", err)
	}
}
