package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// runner is the testing.TB that internal/vaulttest wants, for a program
// rather than a test: messages go to stderr, Fatal runs the cleanups (which
// stop Vault) and exits with status 1, TempDir makes directories removed at
// cleanup. Only the methods vaulttest calls are implemented; the embedded nil
// interface supplies testing.TB's unexported method and panics on the rest.
type runner struct {
	testing.TB

	name string

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	dirs     int
	base     string
}

func newRunner(name string) *runner { return &runner{name: name} }

func (r *runner) Name() string { return r.name }
func (r *runner) Helper()      {}

func (r *runner) Log(args ...any) { fmt.Fprintln(os.Stderr, append([]any{r.name + ":"}, args...)...) }
func (r *runner) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, r.name+": "+format+"\n", args...)
}

func (r *runner) Error(args ...any) { r.markFailed(); r.Log(args...) }
func (r *runner) Errorf(format string, args ...any) {
	r.markFailed()
	r.Logf(format, args...)
}

func (r *runner) Fatal(args ...any) { r.Error(args...); r.FailNow() }
func (r *runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.FailNow()
}

// atExit runs after a runner's cleanups when FailNow exits (main sets it to
// remove the built plugin).
var atExit = func() {}

// FailNow runs the cleanups and exits: a benchmark that cannot set up has
// nothing to report.
func (r *runner) FailNow() {
	r.markFailed()
	r.Close()
	atExit()
	os.Exit(1)
}

func (r *runner) Fail() { r.markFailed() }

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) markFailed() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	r.cleanups = append(r.cleanups, f)
	r.mu.Unlock()
}

func (r *runner) Context() context.Context { return context.Background() }

func (r *runner) TempDir() string {
	r.mu.Lock()
	if r.base == "" {
		dir, err := os.MkdirTemp("", "biot-bench-")
		if err != nil {
			r.mu.Unlock()
			r.Fatalf("TempDir: %v", err)
		}
		r.base = dir
		r.cleanups = append([]func(){func() { os.RemoveAll(dir) }}, r.cleanups...)
	}
	r.dirs++
	dir := filepath.Join(r.base, fmt.Sprintf("%03d", r.dirs))
	r.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		r.Fatalf("TempDir: %v", err)
	}
	return dir
}

// Close runs the cleanups, last registered first, once.
func (r *runner) Close() {
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		f()
	}
}
