package vaulttest

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

var (
	portsMu sync.Mutex
	given   = map[int]bool{} // ports handed out by this process, never reused
)

// FreePortPair returns a loopback port p such that p and p+1 are both free
// (Vault's API and cluster listeners), and that this process has not handed
// out before.
func FreePortPair() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l1.Addr().(*net.TCPAddr).Port
		if given[p] || given[p+1] || p+1 > 65535 {
			l1.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l1.Close()
		if err != nil {
			continue
		}
		l2.Close()
		given[p], given[p+1] = true, true
		return p, nil
	}
	return 0, fmt.Errorf("vaulttest: no two adjacent free loopback ports found")
}
