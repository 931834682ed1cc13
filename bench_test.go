package biot

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// BenchmarkCredsRead is a creds read against a warm cache through the
// backend's HandleRequest: framework routing, the cache and the lease.
func BenchmarkCredsRead(b *testing.B) {
	e := newBenchEnv(b)
	req := &logical.Request{Operation: logical.ReadOperation, Path: "creds", Storage: e.storage}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := e.b.HandleRequest(b.Context(), req)
		if err != nil || resp.IsError() {
			b.Fatal(err, resp)
		}
	}
}

// BenchmarkCredsReadParallel is the same with GOMAXPROCS concurrent readers.
func BenchmarkCredsReadParallel(b *testing.B) {
	e := newBenchEnv(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := &logical.Request{Operation: logical.ReadOperation, Path: "creds", Storage: e.storage}
			if resp, err := e.b.HandleRequest(b.Context(), req); err != nil || resp.IsError() {
				b.Error(err, resp)
				return
			}
		}
	})
}

// BenchmarkCacheLookup is the token cache alone: the aim is well under a
// microsecond with zero allocations, and no lock.
func BenchmarkCacheLookup(b *testing.B) {
	e := newBenchEnv(b)
	s := e.b.sess.Load()
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.get(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCacheLookupParallel(b *testing.B) {
	e := newBenchEnv(b)
	s := e.b.sess.Load()
	ctx := b.Context()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.get(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// newBenchEnv is a backend with a warm cache on the real clock, holding a
// token that stays fresh for the whole benchmark.
func newBenchEnv(b *testing.B) *testEnv {
	e := newTestEnv(b, envOptions{accessTTL: time.Hour, refreshTTL: 2 * time.Hour})
	e.clock.Set(time.Now())
	e.b.now = time.Now
	e.writeConfig(e.userConfig())
	e.creds(e.b)
	return e
}
