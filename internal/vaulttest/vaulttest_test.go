package vaulttest

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestFreePortPair(t *testing.T) {
	seen := map[int]bool{}
	for range 5 {
		p, err := FreePortPair()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] || seen[p+1] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p], seen[p+1] = true, true
		for _, q := range []int{p, p + 1} {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
			if err != nil {
				t.Fatalf("port %d from FreePortPair is not free: %v", q, err)
			}
			l.Close()
		}
	}
}

func TestTailFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	var b strings.Builder
	for i := range 10 {
		b.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := tailFile(path, 3), "line 7\nline 8\nline 9"; got != want {
		t.Errorf("tailFile(3) = %q, want %q", got, want)
	}
	if got := tailFile(path, 100); !strings.HasPrefix(got, "line 0\n") {
		t.Errorf("tailFile(100) = %q, want the whole file", got)
	}
}

func TestProcessStop(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	// A shell that ignores SIGTERM, with a child: Stop must kill both.
	p, err := startProcess("sh", log, "/bin/sh", []string{"-c", `trap "" TERM; sleep 300 & echo "sta""rted"; wait`}, os.Environ(), dir)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Log(), "started\n") {
		if time.Now().After(deadline) {
			t.Fatalf("child did not start; log %q", p.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Stop(500 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Stop of a process ignoring SIGTERM = %v, want an error saying it was killed", err)
	}
	if !p.Exited() {
		t.Error("process still running after Stop")
	}
	if !strings.Contains(p.Log(), "==== ") {
		t.Errorf("log lacks the start header: %q", p.Log())
	}
}

func TestModulePathOf(t *testing.T) {
	if got := modulePathOf([]byte("// c\nmodule " + ModulePath + "\n\ngo 1.26\n")); got != ModulePath {
		t.Errorf("modulePathOf = %q", got)
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", PluginName)); err != nil {
		t.Errorf("RepoRoot = %q, which has no cmd/%s: %v", root, PluginName, err)
	}
}
