package ds

// WorkerRunsForTest returns how many runs the subscriptions of s have
// handed to a worker goroutine so far.
func WorkerRunsForTest(s *Service) uint64 { return s.fan.workerRuns.Load() }
