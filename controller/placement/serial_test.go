package placement

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Many callers at once: every function runs exactly once, never two at a
// time, and every do returns; a post runs before anything its caller
// queues after it.
func TestSerial(t *testing.T) {
	var s serial
	var running, ran atomic.Int64
	counts := make([]int, 64) // per caller, touched only inside s
	var wg sync.WaitGroup
	for c := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				fn := func() {
					if running.Add(1) != 1 {
						t.Error("two functions ran at once")
					}
					counts[c]++
					ran.Add(1)
					running.Add(-1)
				}
				if i%2 == 0 {
					s.post(fn)
					continue
				}
				s.do(fn)
				// Everything this caller queued before has run, posts included.
				var seen int
				s.do(func() { seen = counts[c] })
				if seen != i+1 {
					t.Errorf("caller %d: %d of its functions ran before its do returned, want %d", c, seen, i+1)
					return
				}
			}
		}()
	}
	wg.Wait()
	var last int64
	s.do(func() { last = ran.Load() })
	if want := int64(len(counts) * 500); last != want {
		t.Fatalf("%d functions ran, want %d", last, want)
	}
}
