package supervisor

import (
	"syscall"
	"time"
)

// SampleInterval is how often baton reads each live worker's resident
// memory, CPU time and signal handling from /proc, off its loop, for the
// status, the metrics, the drain mode and --max-rss and --max-uptime.
const SampleInterval = time.Second

// procState is what baton last read of a worker in /proc.
type procState struct {
	sampled   bool
	at        time.Time // when, by the loop's clock
	startTime uint64    // the process's start time: a pid read again names the same process
	rss       uint64
	cpu       time.Duration
	// cpuPercent is its CPU use between the last two samples, 100 for a
	// whole core.
	cpuPercent float64
	signal     sigDisposition
}

// update takes a sample read at now. A sample of another process that got
// the pid (the worker exited and was reaped meanwhile) is dropped.
func (p *procState) update(r procSample, now time.Time) {
	if p.sampled && r.StartTime != p.startTime {
		return
	}
	if p.sampled && now.After(p.at) && r.CPU >= p.cpu {
		p.cpuPercent = 100 * float64(r.CPU-p.cpu) / float64(now.Sub(p.at))
	}
	p.sampled, p.at, p.startTime = true, now, r.StartTime
	p.rss, p.cpu, p.signal = r.RSS, r.CPU, r.Signal
}

// startSampling samples every live worker each SampleInterval until baton
// has finished. begin calls it.
func (s *Supervisor) startSampling() {
	s.after(SampleInterval, func() {
		if s.finished() {
			return
		}
		s.sample(inOrder(s.workers))
		s.startSampling()
	})
}

// sample reads /proc for each of ws on a goroutine of its own, then
// records what it read on the loop and checks whether a worker is due to
// be recycled (checkRecycle).
func (s *Supervisor) sample(ws []*worker) {
	type read struct {
		w   *worker
		pid int
		sig syscall.Signal
		got procSample
		err error
	}
	var reads []read
	for _, w := range ws {
		if w.state != Exited && !w.reaped {
			reads = append(reads, read{w: w, pid: w.pid, sig: w.gen.cfg.StopSignal})
		}
	}
	if len(reads) == 0 {
		return
	}
	s.sampling++
	go func() {
		for i := range reads {
			reads[i].got, reads[i].err = s.env.readProc(reads[i].pid, reads[i].sig)
		}
		s.post(func() {
			s.sampling--
			now := s.now()
			for _, r := range reads {
				if r.err == nil && r.w.state != Exited && !r.w.reaped {
					r.w.seen.update(r.got, now)
				}
			}
			s.checkRecycle()
		})
	}()
}
