package sockdiag_test

import (
	"fmt"
	"log"
	"os"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// The connections of one port by state, and its listener's accept queue.
func Example_port() {
	c, err := sockdiag.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	socks, err := c.Query(sockdiag.Query{LocalPort: 8080})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range socks {
		if s.State == sockdiag.Listen {
			fmt.Printf("%v: accept queue %d of %d\n", s.Local, s.RecvQ, s.SendQ)
		}
	}
	for state, n := range sockdiag.CountByState(socks) {
		fmt.Println(state, n)
	}
}

// Which process holds which connection: the inodes of the sockets on a
// port, matched with the fds of the given processes.
func Example_owners() {
	c, err := sockdiag.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	socks, err := c.Query(sockdiag.Query{LocalPort: 8080, States: sockdiag.States(sockdiag.CloseWait)})
	if err != nil {
		log.Fatal(err)
	}
	workers := []int{os.Getpid()} // baton passes its workers' pids
	owners, err := sockdiag.Owners(workers...)
	if err != nil {
		log.Fatal(err)
	}
	perPID := make(map[int]int)
	for _, s := range socks {
		for _, o := range owners[s.Inode] {
			perPID[o.PID]++
		}
	}
	fmt.Println("CLOSE-WAIT connections by pid:", perPID)
}

// Open fds against RLIMIT_NOFILE, and the host's listen overflows.
func Example_limits() {
	open, soft, _, err := sockdiag.FDUsage(os.Getpid())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("fds: %d of %d\n", open, soft)
	counters, err := sockdiag.ReadNetstat()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("listen overflows since boot:", counters["TcpExt"]["ListenOverflows"])
}
