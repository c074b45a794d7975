package sim

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/yunchi/yunchi/scheduler"
)

// Refusals is what the harness saw of its own ledger each time a request was
// refused: which shapes were refused, and what free capacity they were
// refused beside. It answers "why": a cluster out of vCPU everywhere, vCPU
// stranded behind full memory (or the reverse), or free capacity split
// between hosts that each lack one dimension.
type Refusals struct {
	N                  int64 // requests refused
	VCPUs, MemoryBytes int64 // what they asked for, summed
	// Each refusal falls in one class, by the hosts' free capacity:
	//   ShortCPU: no host had the vCPU (some had the memory);
	//   ShortMemory: no host had the memory (some had the vCPU);
	//   ShortBoth: no host had either;
	//   Split: some host had the vCPU and some the memory, none both;
	//   ShortDisk: some host had both, none with the disk too.
	// A refusal some host could have taken is in none of them (the
	// harness counts it as rejected_while_fit).
	ShortCPU, ShortMemory, ShortBoth, Split, ShortDisk int64
	// Sums over refusals, for the means printed.
	freeCPU, freeMem         float64 // free in the whole cluster
	strandedCPU, strandedMem float64 // see note
	shapes                   map[shape]int64
}

// shape is a request's vCPU and memory: what the refused-shapes line counts.
type shape struct{ vcpus, mem int64 }

func (s shape) String() string {
	return strconv.FormatInt(s.vcpus, 10) + "c" + strconv.FormatFloat(float64(s.mem)/float64(GiB), 'f', -1, 64) + "g"
}

// note records that r was refused while led held what it holds, and reports
// whether some host could in fact have taken r (a placer bug: see
// rejected_while_fit). One pass over the hosts.
//
// Stranded vCPU is the free vCPU of hosts that had r's vCPU but not its
// memory: vCPU left idle behind full memory, for this request. Stranded
// memory is the reverse.
func (s *Refusals) note(led *ledger, r scheduler.Resources) (fit bool) {
	s.N++
	s.VCPUs += r.VCPUs
	s.MemoryBytes += r.MemoryBytes
	if s.shapes == nil {
		s.shapes = map[shape]int64{}
	}
	s.shapes[shape{r.VCPUs, r.MemoryBytes}]++
	var anyCPU, anyMem, anyBoth bool
	var freeC, freeM, strC, strM int64
	for i := range led.alloc {
		f := led.cap.Sub(led.alloc[i])
		freeC += f.VCPUs
		freeM += f.MemoryBytes
		c, m := f.VCPUs >= r.VCPUs, f.MemoryBytes >= r.MemoryBytes
		anyCPU, anyMem = anyCPU || c, anyMem || m
		switch {
		case c && m:
			anyBoth = true
			fit = fit || f.DiskBytes >= r.DiskBytes
		case c:
			strC += f.VCPUs
		case m:
			strM += f.MemoryBytes
		}
	}
	s.freeCPU += float64(freeC)
	s.freeMem += float64(freeM) / float64(GiB)
	s.strandedCPU += float64(strC)
	s.strandedMem += float64(strM) / float64(GiB)
	switch {
	case fit:
	case anyBoth:
		s.ShortDisk++
	case !anyCPU && !anyMem:
		s.ShortBoth++
	case !anyCPU:
		s.ShortCPU++
	case !anyMem:
		s.ShortMemory++
	default:
		s.Split++
	}
	return fit
}

// noteAll records a refused batch: each member against the same ledger.
func (s *Refusals) noteAll(led *ledger, reqs []Request) {
	for i := range reqs {
		s.note(led, reqs[i].Resources)
	}
}

// mean is a per-refusal average, 0 without refusals.
func (s *Refusals) mean(sum float64) float64 {
	if s.N == 0 {
		return 0
	}
	return round3(sum / float64(s.N))
}

// Shapes is the refused shapes, most refused first (then by vCPU and
// memory), as "1c1g:37046" items; at most n of them, n <= 0 for all.
func (s *Refusals) Shapes(n int) []string {
	keys := make([]shape, 0, len(s.shapes))
	for k := range s.shapes {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b shape) int {
		return cmp.Or(cmp.Compare(s.shapes[b], s.shapes[a]), cmp.Compare(a.vcpus, b.vcpus), cmp.Compare(a.mem, b.mem))
	})
	if n > 0 && len(keys) > n {
		keys = keys[:n]
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s:%d", k, s.shapes[k])
	}
	return out
}

// figures are the refusal lines; the caller prints rejected itself.
func (s *Refusals) figures() []Figure {
	shapes := strings.Join(s.Shapes(5), " ")
	if shapes == "" {
		shapes = "none"
	}
	return []Figure{
		{"rejected_vcpus", s.VCPUs},
		{"rejected_memory_gib", round3(float64(s.MemoryBytes) / float64(GiB))},
		{"rejected_shapes", shapes},
		{"rejected_short_cpu", s.ShortCPU},
		{"rejected_short_memory", s.ShortMemory},
		{"rejected_short_both", s.ShortBoth},
		{"rejected_split", s.Split},
		{"rejected_short_disk", s.ShortDisk},
		{"free_cpu_at_rejection", s.mean(s.freeCPU)},
		{"free_memory_gib_at_rejection", s.mean(s.freeMem)},
		{"stranded_cpu_at_rejection", s.mean(s.strandedCPU)},
		{"stranded_memory_gib_at_rejection", s.mean(s.strandedMem)},
	}
}
