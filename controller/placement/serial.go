package placement

import "sync"

// serial runs functions one at a time, in the order they were queued, by
// flat combining: a caller queues its function, and whichever caller holds
// the lock runs everything queued, its own and the others', until the
// queue is empty. The decision state (cached clusters, reservations) is
// touched by one goroutine at a time, as under a mutex, but callers do not
// form a convoy. With a plain mutex and 256 concurrent creates on two
// cores, each handoff waited for the next owner to be scheduled: creates
// waited 14 ms on average for a lock held about 15 µs per decision.
type serial struct {
	run   sync.Mutex // held by the goroutine running the queue
	qmu   sync.Mutex
	queue []task
}

type task struct {
	fn   func()
	done chan struct{} // nil: nobody waits
}

// do runs fn after everything queued before it and returns once it has run.
func (s *serial) do(fn func()) {
	done := make(chan struct{})
	s.enqueue(task{fn, done})
	<-done
}

// post queues fn to run after everything queued before it, without
// waiting for it.
func (s *serial) post(fn func()) { s.enqueue(task{fn: fn}) }

func (s *serial) enqueue(t task) {
	s.qmu.Lock()
	s.queue = append(s.queue, t)
	s.qmu.Unlock()
	s.combine()
}

// combine runs the queue if no one else is running it. A caller that finds
// it running leaves its task to the runner: the task was queued before the
// runner let go of the lock, and the runner looks at the queue again after
// letting go, so no task is left behind.
func (s *serial) combine() {
	for s.run.TryLock() {
		for {
			s.qmu.Lock()
			q := s.queue
			s.queue = nil
			s.qmu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, t := range q {
				t.fn()
				if t.done != nil {
					close(t.done)
				}
			}
		}
		s.run.Unlock()
		s.qmu.Lock()
		empty := len(s.queue) == 0
		s.qmu.Unlock()
		if empty {
			return
		}
	}
}
