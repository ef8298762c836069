package sockdiag

// CountByState counts the sockets in each state. States without sockets
// are absent.
func CountByState(socks []Socket) map[State]int {
	n := make(map[State]int)
	for _, s := range socks {
		n[s.State]++
	}
	return n
}
